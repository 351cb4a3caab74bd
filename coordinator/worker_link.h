// The hand-off between the engine thread and the Attach handler that owns an attached worker
// job's stream. The engine never touches the stream: Send queues a plan (several may be in
// flight: the job runs them in order) and Await waits on a condition variable for a result, for the link to go down (the stream broke) or for it to
// close (shutdown), so a dead worker cannot block the scheduler. The handler thread writes what
// NextOutgoing gives; a reader thread it starts feeds OnMessage and calls MarkDown when the
// stream ends. A step that misses its deadline makes the engine Abort the link: the handler
// writes the job an Abort message (rank 0 ends the whole job with MPI_Abort) and then cuts the
// stream. Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shardlm/v1/worker.pb.h"

namespace shardlm::coordinator {

class WorkerLink {
 public:
  // `peer` describes the job in logs and messages ("host pid 123, 4 ranks").
  explicit WorkerLink(std::string peer) : peer_(std::move(peer)) {}

  const std::string& peer() const { return peer_; }

  // Engine side: queues `plan` for the job (in order after the plans queued before it).
  // UNAVAILABLE when the link is down, closed or aborted.
  absl::Status Send(const worker::v1::StepPlan& plan);
  // Engine side: waits up to `timeout` for the StepResult of the sent step `step_id`.
  // UNAVAILABLE when the link goes down, is closed or aborted first; DEADLINE_EXCEEDED when the
  // time runs out (the link stays up: the caller decides, see Abort).
  absl::StatusOr<worker::v1::StepResult> Await(uint64_t step_id,
                                               std::chrono::milliseconds timeout);
  // Send, then Await.
  absl::StatusOr<worker::v1::StepResult> RunStep(const worker::v1::StepPlan& plan,
                                                 std::chrono::milliseconds timeout);
  // Engine side: the job is declared hung. Waits return; the handler's next NextOutgoing is an
  // Abort carrying `reason`, after which it cuts the stream. Only the first call counts.
  void Abort(std::string reason);

  // Handler side: the next message to write; nullopt once the link is down or closed, and once
  // the Abort message was given out.
  std::optional<worker::v1::CoordinatorMessage> NextOutgoing();
  // Reader side: a message from the workers.
  void OnMessage(const worker::v1::WorkerMessage& message);
  // The stream broke or ended: every wait returns. The first reason is kept.
  void MarkDown(absl::Status reason);
  // The coordinator is shutting down: waits return; the handler sends Shutdown.
  void Close();
  // Handler side: waits up to `timeout` for the link to go down (the workers ending the stream
  // after Shutdown); true when it did.
  bool WaitDown(std::chrono::milliseconds timeout);

  bool down() const;
  bool closed() const;
  bool aborted() const;
  absl::Status down_reason() const;

 private:
  const std::string peer_;
  bool Gone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return down_.has_value() || closed_ || abort_.has_value();
  }

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<worker::v1::CoordinatorMessage> outgoing_ ABSL_GUARDED_BY(mu_);
  // Steps sent whose result has not been taken by Await: step_id -> its result once it came.
  std::map<uint64_t, std::optional<worker::v1::StepResult>> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> down_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::string> abort_ ABSL_GUARDED_BY(mu_);  // set by Abort
  bool abort_sent_ ABSL_GUARDED_BY(mu_) = false;  // NextOutgoing gave out the Abort message
};

}  // namespace shardlm::coordinator
