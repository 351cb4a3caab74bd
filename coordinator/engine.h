// The serving core: owns the scheduler and the KV block manager, runs the step loop on its own
// thread, routes sampled tokens to each request's output processor and response channel, and
// tracks the single attached worker job.
//
// Threads and locking. One absl::Mutex guards all of the engine's state (ABSL_GUARDED_BY; clang's
// -Wthread-safety checks it). Generate streams call Submit/Cancel, Abort and the worker Attach
// handler call in briefly under it. The engine thread plans steps under the lock and sends up to
// `steps_in_flight` of them (WorkerLink::Send), releases the lock while the workers compute
// (WorkerLink::Await waits on the link's condition variable for the oldest one's result, never on
// the stream), and applies each result under the lock: detokenizing, stop checks and pushing
// messages into the requests' channels; then it tops the steps in flight up again. So the next
// step is planned while the job runs the previous one, and a decode planned before its input
// came back runs the workers' own sample (Scheduler::Schedule). A request that is cancelled or
// finishes while a step of it is in flight has its blocks freed at once: a later step may hand
// them to another sequence, which is safe because every pipeline stage runs the steps in order
// (the earlier step's writes come first); the results of its steps in flight are dropped.
//
// Worker loss. When the link goes down (the stream broke, the job ended it, or a step missed
// its deadline and the job was told to abort), no accepted request is lost: every live one,
// running or queued, goes back to the scheduler's queue (Scheduler::RequeueAll: recomputed from
// its prompt plus the tokens already streamed, in its order, with its output processor, so the
// client's stream goes on without a gap or a repeat), health goes NOT_SERVING, and the requests
// wait for the next job to attach and load, at most `requeue_timeout`; then they end UNAVAILABLE.
// A step in flight at the loss is simply recomputed. New requests get UNAVAILABLE "no workers
// attached" while no job serves. Step deadlines come from measured step times (step_deadline.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/kv_block_manager.h"
#include "coordinator/model_context.h"
#include "coordinator/output_processor.h"
#include "coordinator/response_channel.h"
#include "coordinator/scheduler.h"
#include "coordinator/step_budget.h"
#include "coordinator/step_deadline.h"
#include "coordinator/validation.h"
#include "coordinator/worker_link.h"

namespace shardlm::coordinator {

class Metrics;

struct EngineOptions {
  SchedulerOptions scheduler;
  int32_t kv_block_size = 16;
  bool prefix_caching = true;    // automatic prefix caching (KvBlockManager)
  int32_t workers_expected = 1;  // tp x pp
  // Steps sent to the job at once (pp + 1 by default, coordinator/options.cpp): the engine plans
  // the next step while the job runs the ones before it; with pipeline stages each stage works
  // on a different micro-batch (SchedulerOptions::micro_batches). 1: one step at a time.
  int32_t steps_in_flight = 2;
  StepDeadlineOptions step_deadline;
  StepBudgetOptions step_budget;  // prefill tokens a step with decodes may take
  // How long requests of a lost job wait for another to attach and load; 0: they fail at once.
  std::chrono::milliseconds requeue_timeout{60000};
  Metrics* metrics = nullptr;  // not owned, must outlive the engine; null: no metrics
};

// What a Generate handler holds: its request's id and channel.
struct RequestHandle {
  uint64_t key = 0;
  std::string request_id;
  ResponseChannel channel;
};

struct EngineStats {
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_free = 0;    // free blocks and cached ones no request holds (evictable)
  int64_t kv_blocks_cached = 0;  // in the prefix cache, held or evictable
  // Since the engine started, in tokens: looked up in the prefix cache at admission, and found.
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  int32_t workers_attached = 0;
  int32_t requests_running = 0;
  int32_t requests_waiting = 0;
};

class Engine {
 public:
  using Clock = std::chrono::steady_clock;

  // `model` must outlive the engine. `on_serving` is called (under the engine's lock) with true
  // when a worker job has loaded and false when it is gone.
  Engine(const ModelContext& model, EngineOptions options,
         std::function<void(bool)> on_serving = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void Start();
  // Ends every live request with UNAVAILABLE, tells the attached workers to shut down (their
  // Attach handler sends Shutdown), cuts off a job still loading and joins the engine thread.
  // Idempotent.
  void Stop();

  // Graceful drain (SIGTERM): from now on Submit refuses with UNAVAILABLE "draining" and health
  // stays NOT_SERVING (on_serving(false) now, and a job that attaches later does not turn it
  // back); live requests, running or queued, go on. Idempotent.
  void BeginDrain();
  // After BeginDrain: waits until no request is live (true), `deadline` passes or CutDrain is
  // called (false). Stop then ends whatever is left.
  bool WaitDrained(Clock::time_point deadline);
  // Ends a WaitDrained now (a second signal).
  void CutDrain();

  // Queues a validated request. UNAVAILABLE without workers, while draining or stopping,
  // ALREADY_EXISTS for a live request_id, RESOURCE_EXHAUSTED when the queue is full or the prompt
  // can never fit in the KV cache. An empty request_id gets one assigned ("req-<n>").
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(PreparedRequest request,
                                                        Clock::time_point arrival);
  // The client went away or its deadline passed: the request finishes CANCELLED (the channel
  // ends with CANCELLED) and leaves the batch.
  void Cancel(uint64_t key);
  // Abort RPC: the request finishes CANCELLED with a last message and an OK status. False when
  // no live request has this id.
  bool Abort(const std::string& request_id);

  // --- The worker job (WorkerService::Attach).
  // Claims the single worker slot for a job that said hello. FAILED_PRECONDITION while another
  // job holds it, UNAVAILABLE while stopping. `cancel` cuts the attach stream off (used if the
  // coordinator stops while the job loads); it is dropped at EndAttach. Returns a token.
  absl::StatusOr<uint64_t> BeginAttach(const std::string& peer, std::function<void()> cancel);
  // The job loaded with room for `kv_blocks` blocks: requests are accepted from now on.
  absl::Status Activate(uint64_t attach, std::shared_ptr<WorkerLink> link, int64_t kv_blocks);
  // The attach stream ends (any reason; call it before the handler returns). If its link was
  // serving, every live request is held for the next job (see "Worker loss" above).
  void EndAttach(uint64_t attach, const absl::Status& reason);
  // Waits up to `timeout` for the worker slot to be free (after Stop: for the Attach handler to
  // have said Shutdown and seen the workers go). True when it is.
  bool WaitAttachEnded(std::chrono::milliseconds timeout);

  EngineStats Stats() const;

 private:
  struct Request;

  void Loop();
  void LoopLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The engine thread has something to do.
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyResult(const worker::v1::StepPlan& plan, const worker::v1::StepResult& result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Request* Find(uint64_t key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends a request: a last message (`last` plus finish reason, usage and, for errors, the error
  // text), the channel's final status, and its removal from the scheduler and the maps.
  void Finish(Request* r, v1::FinishReason reason, const absl::Status& status,
              v1::GenerateResponse last = {}) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailAll(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The serving link is gone: requeue everything for the next job (or fail it when
  // requeue_timeout is 0), empty the KV cache, NOT_SERVING, free the slot.
  void Detach(const absl::Status& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The requeue timeout passed with no job serving: the held requests end UNAVAILABLE.
  void FailHeld() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls on_serving (never true while draining).
  void SetServing(bool serving) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModelContext& model_;
  const EngineOptions options_;
  const std::function<void(bool)> on_serving_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // work arrived, workers attached or gone, stop
  KvBlockManager blocks_ ABSL_GUARDED_BY(mu_);
  Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::unique_ptr<Request>> requests_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, uint64_t> ids_ ABSL_GUARDED_BY(mu_);  // live request_id -> key
  uint64_t next_key_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t prefix_cache_queries_ ABSL_GUARDED_BY(mu_) = 0;  // tokens (EngineStats)
  int64_t prefix_cache_hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t attach_ ABSL_GUARDED_BY(mu_) = 0;  // token of the job holding the worker slot; 0: free
  uint64_t next_attach_ ABSL_GUARDED_BY(mu_) = 1;
  std::function<void()> attach_cancel_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WorkerLink> link_ ABSL_GUARDED_BY(mu_);  // set while a loaded job serves
  StepDeadline deadlines_ ABSL_GUARDED_BY(mu_);            // step times of the serving job
  StepBudget step_budget_ ABSL_GUARDED_BY(mu_);            // the same, for prefill budgets
  // While requests of a lost job are held: when they give up, and why the job was lost.
  std::optional<Clock::time_point> held_until_ ABSL_GUARDED_BY(mu_);
  std::string lost_reason_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool drain_cut_ ABSL_GUARDED_BY(mu_) = false;
  // Started by Start and joined by Stop (the owner's calls), never touched by the engine thread.
  std::thread thread_;
};

}  // namespace shardlm::coordinator
