// The hand-off between the engine thread and the Attach handler that owns an attached worker
// job's stream. The engine never touches the stream: RunStep queues a plan and waits on a
// condition variable for its result, for the link to go down (the stream broke) or for it to
// close (shutdown), so a dead worker cannot block the scheduler. The handler thread writes what
// NextOutgoing gives; a reader thread it starts feeds OnMessage and calls MarkDown when the
// stream ends. A step that misses its deadline makes the engine Abort the link: the handler
// writes the job an Abort message (rank 0 ends the whole job with MPI_Abort) and then cuts the
// stream. Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
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

  // Engine side: sends `plan` and waits up to `timeout` for the StepResult with its step_id.
  // UNAVAILABLE when the link goes down, is closed or aborted first; DEADLINE_EXCEEDED when the
  // time runs out (the link stays up: the caller decides, see Abort). One step at a time.
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
  // True when a waiting RunStep has its answer (a result, or the link is gone).
  bool StepOver() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return result_.has_value() || down_.has_value() || closed_ || abort_.has_value();
  }

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::optional<worker::v1::CoordinatorMessage> outgoing_ ABSL_GUARDED_BY(mu_);
  uint64_t awaited_step_ ABSL_GUARDED_BY(mu_) = 0;  // step_id RunStep waits for; 0: none
  std::optional<worker::v1::StepResult> result_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> down_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::string> abort_ ABSL_GUARDED_BY(mu_);  // set by Abort
  bool abort_sent_ ABSL_GUARDED_BY(mu_) = false;  // NextOutgoing gave out the Abort message
};

}  // namespace shardlm::coordinator
