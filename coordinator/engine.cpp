#include "coordinator/engine.h"

#include <algorithm>
#include <deque>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "coordinator/metrics.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {
double MsBetween(Engine::Clock::time_point from, Engine::Clock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}
}  // namespace

struct Engine::Request {
  Request(const ModelContext& model, const PreparedRequest& prepared)
      : output(model, prepared), prompt_tokens(static_cast<int32_t>(prepared.prompt.size())) {}

  std::shared_ptr<RequestHandle> handle;
  OutputProcessor output;
  int32_t prompt_tokens;
  Clock::time_point arrival;
  std::optional<Clock::time_point> first_scheduled;
  std::optional<Clock::time_point> first_token;
  std::optional<Clock::time_point> last_token;
};

Engine::Engine(const ModelContext& model, EngineOptions options,
               std::function<void(bool)> on_serving)
    : model_(model),
      options_(options),
      on_serving_(std::move(on_serving)),
      blocks_(options.kv_block_size, options.prefix_caching),
      scheduler_(options.scheduler, &blocks_),
      deadlines_(options.step_deadline),
      step_budget_(options.step_budget) {}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  absl::MutexLock lock(&mu_);
  if (!thread_.joinable() && !stopping_) thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      stopping_ = true;
      FailAll(absl::UnavailableError("the coordinator is shutting down"));
      if (link_ != nullptr) {
        link_->Close();  // its Attach handler sends Shutdown to the workers
      } else if (attach_cancel_) {
        attach_cancel_();  // a job still loading
      }
      SetServing(false);
      cv_.SignalAll();
    }
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Engine::SetServing(bool serving) {
  if (on_serving_) on_serving_(serving && !draining_);
}

void Engine::BeginDrain() {
  absl::MutexLock lock(&mu_);
  if (draining_ || stopping_) return;
  draining_ = true;
  spdlog::info("draining: new requests are refused; {} live request(s) may finish",
               requests_.size());
  SetServing(false);
}

bool Engine::WaitDrained(Clock::time_point deadline) {
  const absl::Time until = absl::Now() + absl::FromChrono(deadline - Clock::now());
  absl::MutexLock lock(&mu_);
  while (!requests_.empty() && !drain_cut_ && !stopping_) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  return requests_.empty();
}

void Engine::CutDrain() {
  absl::MutexLock lock(&mu_);
  drain_cut_ = true;
  cv_.SignalAll();
}

namespace {

// "req-" and 128 random bits in hex, from std::random_device (libstdc++ on Linux reads the
// kernel's CSPRNG), so that no client can guess another's assigned id (Abort takes an id).
std::string RandomRequestId() {
  std::random_device device;
  std::string id = "req-";
  for (int i = 0; i < 4; ++i) absl::StrAppend(&id, absl::Hex(device(), absl::kZeroPad8));
  return id;
}

}  // namespace

Engine::Request* Engine::Find(uint64_t key) {
  auto it = requests_.find(key);
  return it == requests_.end() ? nullptr : it->second.get();
}

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(PreparedRequest request,
                                                              Clock::time_point arrival) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the coordinator is shutting down");
  if (draining_) {
    return absl::UnavailableError("the coordinator is draining (shutting down): retry elsewhere");
  }
  if (link_ == nullptr) return absl::UnavailableError("no workers attached");
  std::string id = request.request_id;
  if (id.empty()) {
    do {
      id = RandomRequestId();
    } while (ids_.count(id) > 0);
  } else if (ids_.count(id) > 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("request_id: '", id, "' is already in use by a live request"));
  }
  const uint64_t key = next_key_++;
  auto r = std::make_unique<Request>(model_, request);
  r->arrival = arrival;
  r->handle = std::make_shared<RequestHandle>();
  r->handle->key = key;
  r->handle->request_id = id;
  absl::Status added =
      scheduler_.Add(key, std::move(request.prompt), request.sampling, request.logprobs,
                     request.max_new_tokens);
  if (!added.ok()) return added;
  std::shared_ptr<RequestHandle> handle = r->handle;
  ids_[id] = key;
  requests_[key] = std::move(r);
  cv_.SignalAll();
  return handle;
}

void Engine::Finish(Request* r, v1::FinishReason reason, const absl::Status& status,
                    v1::GenerateResponse last) {
  const Clock::time_point now = Clock::now();
  last.set_request_id(r->handle->request_id);
  last.set_finish_reason(reason);
  v1::Usage* usage = last.mutable_usage();
  usage->set_prompt_tokens(r->prompt_tokens);
  usage->set_completion_tokens(r->output.completion_tokens());
  usage->set_queue_ms(MsBetween(r->arrival, r->first_scheduled.value_or(now)));
  usage->set_ttft_ms(r->first_token ? MsBetween(r->arrival, *r->first_token) : 0.0);
  usage->set_total_ms(MsBetween(r->arrival, now));
  if (reason == v1::FINISH_REASON_ERROR) last.set_error(std::string(status.message()));
  if (options_.metrics != nullptr) {
    options_.metrics->Finished(reason, r->prompt_tokens, usage->completion_tokens(), r->arrival,
                               now);
  }
  r->handle->channel.Push(std::move(last));
  r->handle->channel.Close(status);
  const uint64_t key = r->handle->key;
  scheduler_.Remove(key);  // frees its blocks; the workers hear of it in the next plan
  ids_.erase(r->handle->request_id);
  requests_.erase(key);  // deletes *r
  if (draining_ && requests_.empty()) cv_.SignalAll();  // WaitDrained
}

void Engine::FailAll(const absl::Status& status) {
  std::vector<uint64_t> keys;
  keys.reserve(requests_.size());
  for (const auto& [key, r] : requests_) keys.push_back(key);
  for (uint64_t key : keys) Finish(Find(key), v1::FINISH_REASON_ERROR, status);
}

void Engine::Cancel(uint64_t key) {
  absl::MutexLock lock(&mu_);
  if (Request* r = Find(key)) {
    spdlog::info("request {}: cancelled (client gone or deadline)", r->handle->request_id);
    Finish(r, v1::FINISH_REASON_CANCELLED,
           absl::CancelledError("cancelled: the client went away or its deadline passed"));
  }
}

bool Engine::Abort(const std::string& request_id) {
  absl::MutexLock lock(&mu_);
  auto it = ids_.find(request_id);
  if (it == ids_.end()) return false;
  spdlog::info("request {}: aborted", request_id);
  Finish(Find(it->second), v1::FINISH_REASON_CANCELLED, absl::OkStatus());
  return true;
}

absl::StatusOr<uint64_t> Engine::BeginAttach(const std::string& peer,
                                             std::function<void()> cancel) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the coordinator is shutting down");
  if (attach_ != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a worker job is already attached; only one at a time (refused ", peer, ")"));
  }
  attach_ = next_attach_++;
  attach_cancel_ = std::move(cancel);
  return attach_;
}

absl::Status Engine::Activate(uint64_t attach, std::shared_ptr<WorkerLink> link,
                              int64_t kv_blocks) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the coordinator is shutting down");
  if (attach != attach_) return absl::FailedPreconditionError("this attach no longer holds the slot");
  // The scheduler keeps what a lost job left (queued, none running, no blocks).
  blocks_.Reset(kv_blocks);
  deadlines_.Reset();
  step_budget_.Reset();
  link_ = std::move(link);
  attach_cancel_ = nullptr;  // from now on shutdown goes through the link (Shutdown message)
  if (held_until_) {
    spdlog::info("worker job {} resumes {} held request(s)", link_->peer(), requests_.size());
    held_until_.reset();
  }
  SetServing(true);
  cv_.SignalAll();
  return absl::OkStatus();
}

void Engine::Detach(const absl::Status& reason) {
  const int32_t running = scheduler_.RequeueAll();
  blocks_.Reset(0);
  const std::string peer = link_->peer();
  link_.reset();
  attach_ = 0;  // a relaunched job may attach while the old handler winds down
  attach_cancel_ = nullptr;
  SetServing(false);
  const double hold_s = options_.requeue_timeout.count() / 1000.0;
  if (requests_.empty()) {
    spdlog::error("worker job {} lost: {}; no request was live", peer,
                  std::string(reason.message()));
  } else if (options_.requeue_timeout.count() <= 0) {
    spdlog::error("worker job {} lost: {}; failing {} live request(s) (--requeue-timeout 0)", peer,
                  std::string(reason.message()), requests_.size());
    FailAll(absl::UnavailableError(absl::StrCat("worker job lost: ", reason.message())));
  } else {
    spdlog::error(
        "worker job {} lost: {}; holding {} request(s) ({} were running: recomputed on "
        "the next job) for up to {} s until a job attaches and loads",
        peer, std::string(reason.message()), requests_.size(), running, hold_s);
    held_until_ = Clock::now() + options_.requeue_timeout;
    lost_reason_ = std::string(reason.message());
  }
  cv_.SignalAll();
}

void Engine::FailHeld() {
  held_until_.reset();
  if (requests_.empty()) return;
  const double hold_s = options_.requeue_timeout.count() / 1000.0;
  spdlog::error(
      "no worker job re-attached within --requeue-timeout {} s: failing {} held "
      "request(s)",
      hold_s, requests_.size());
  FailAll(absl::UnavailableError(absl::StrCat("the worker job was lost (", lost_reason_,
                                              ") and none re-attached within --requeue-timeout ",
                                              hold_s, " s")));
}

void Engine::EndAttach(uint64_t attach, const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  if (attach != attach_) return;  // already detached (and maybe superseded)
  if (link_ != nullptr && !stopping_) {
    Detach(reason.ok() ? absl::UnavailableError("the attach stream ended") : reason);
  } else {  // never served, or the coordinator stops (Stop already ended every request)
    link_.reset();
    attach_ = 0;
    attach_cancel_ = nullptr;
  }
  cv_.SignalAll();
}

bool Engine::WaitAttachEnded(std::chrono::milliseconds timeout) {
  const absl::Time until = absl::Now() + absl::FromChrono(timeout);
  absl::MutexLock lock(&mu_);
  while (attach_ != 0) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  return attach_ == 0;
}

EngineStats Engine::Stats() const {
  absl::MutexLock lock(&mu_);
  EngineStats stats;
  stats.kv_blocks_total = blocks_.total();
  stats.kv_blocks_free = blocks_.free();
  stats.kv_blocks_cached = blocks_.cached();
  stats.prefix_cache_queries = prefix_cache_queries_;
  stats.prefix_cache_hits = prefix_cache_hits_;
  stats.workers_attached = link_ != nullptr ? options_.workers_expected : 0;
  stats.requests_running = scheduler_.running();
  stats.requests_waiting = scheduler_.waiting();
  return stats;
}

bool Engine::Ready() const {
  return stopping_ || (link_ != nullptr && scheduler_.HasWork()) ||
         (held_until_ && Clock::now() >= *held_until_);
}

void Engine::Loop() {
  absl::MutexLock lock(&mu_);
  LoopLocked();
}

void Engine::LoopLocked() {
  // Steps sent to the job and not yet answered, oldest first (results come in this order).
  struct InFlight {
    worker::v1::StepPlan plan;
    StepSize size;
  };
  std::deque<InFlight> in_flight;
  std::shared_ptr<WorkerLink> link;  // the link the steps in flight went to
  const size_t depth = static_cast<size_t>(std::max(options_.steps_in_flight, 1));
  Clock::time_point last_result = Clock::now();
  while (true) {
    if (in_flight.empty()) {
      while (!Ready()) {
        if (held_until_) {
          cv_.WaitWithDeadline(&mu_, absl::Now() + absl::FromChrono(*held_until_ - Clock::now()));
        } else {
          cv_.Wait(&mu_);
        }
      }
    }
    if (stopping_) return;
    if (link_ == nullptr || link_ != link) {
      // Detached (the steps in flight are recomputed on the next job), or a new job.
      in_flight.clear();
      link = link_;
    }
    if (link == nullptr) {  // requests held for a job that is not there (yet)
      if (held_until_ && Clock::now() >= *held_until_) FailHeld();
      continue;
    }
    // Keep up to `depth` steps in flight: the next is planned while the job runs the ones sent.
    while (in_flight.size() < depth && scheduler_.HasWork()) {
      // Decodes first; prefill rides on them only up to a budget that bounds the step's time
      // against a decode-only step of the whole batch in flight (step_budget.h); with
      // micro-batches, a step runs one of them.
      const int64_t groups = std::max(options_.scheduler.micro_batches, 1);
      const int64_t batch = std::min<int64_t>(options_.scheduler.max_running,
                                              scheduler_.running() + scheduler_.waiting());
      const int64_t prefill_budget = step_budget_.PrefillBudget(
          (scheduler_.decoding() + groups - 1) / groups, (batch + groups - 1) / groups);
      Scheduler::Step step = scheduler_.Schedule(prefill_budget);
      const Clock::time_point now = Clock::now();
      for (auto& [key, status] : step.failed) {
        if (Request* r = Find(key)) Finish(r, v1::FINISH_REASON_ERROR, status);
      }
      prefix_cache_queries_ += step.prefix_query_tokens;
      prefix_cache_hits_ += step.prefix_hit_tokens;
      if (options_.metrics != nullptr && step.prefix_query_tokens > 0) {
        options_.metrics->PrefixCache(step.prefix_query_tokens, step.prefix_hit_tokens);
      }
      for (uint64_t key : step.admitted) {
        if (Request* r = Find(key); r != nullptr && !r->first_scheduled) {
          r->first_scheduled = now;
          if (options_.metrics != nullptr) options_.metrics->Scheduled(r->arrival, now);
        }
      }
      if (!step.preempted.empty()) {
        spdlog::info("step {}: KV blocks ran out: {} sequence(s) preempted for recomputation",
                     step.plan.step_id(), step.preempted.size());
      }
      if (step.plan.seqs_size() == 0) break;  // everything runnable waits for the steps in flight
      if (in_flight.empty()) last_result = now;  // the job was idle: this step's time starts now
      if (absl::Status sent = link->Send(step.plan); !sent.ok()) {
        scheduler_.Dropped(step.plan);
        break;  // the link is going down: the Attach handler detaches it
      }
      in_flight.push_back({std::move(step.plan), StepSize{}});
      in_flight.back().size = StepSize::Of(in_flight.back().plan);
    }
    if (in_flight.empty()) {
      // Work left and nothing sent: the link is going down (the handler detaches it), or, not
      // expected, the scheduler had nothing to plan. Back off rather than spin.
      if (scheduler_.HasWork()) {
        if (!link->down()) {
          spdlog::error("scheduler produced an empty step with work pending and none in flight");
        }
        cv_.WaitWithTimeout(&mu_, absl::Milliseconds(10));
      }
      continue;
    }
    const InFlight& front = in_flight.front();
    const StepDeadline::Deadline deadline = deadlines_.For(front.size);
    const uint64_t step_id = front.plan.step_id();
    mu_.Unlock();
    absl::StatusOr<worker::v1::StepResult> result = link->Await(step_id, deadline.timeout);
    const Clock::time_point done = Clock::now();
    mu_.Lock();
    // The step's own time: from the previous result (the job ran the steps before it until then)
    // or from when it was sent to an idle job.
    const double step_ms = MsBetween(last_result, done);
    last_result = done;
    if (stopping_) return;
    // Detached meanwhile: its requests are already held for the next job (the steps in flight
    // are recomputed there).
    if (link_ != link) continue;
    if (absl::IsDeadlineExceeded(result.status())) {
      const std::string hung = absl::StrCat(
          "step ", step_id, " (", front.size.ToString(), ") got no result within its ",
          "deadline of ", absl::StrFormat("%.3g s", deadline.timeout.count() / 1000.0), " (",
          deadline.derivation, "): the job is declared hung and told to abort");
      link->Abort(hung);
      Detach(absl::DeadlineExceededError(hung));
      continue;
    }
    if (!result.ok()) {
      Detach(result.status());
      continue;
    }
    deadlines_.Observe(front.size, step_ms);
    step_budget_.Observe(front.size, step_ms);
    spdlog::debug("step {}: {}, {:.1f} ms", step_id, front.size.ToString(), step_ms);
    if (options_.metrics != nullptr) {
      options_.metrics->Step(front.size.seqs, front.size.tokens, step_ms / 1000.0);
    }
    const worker::v1::StepPlan plan = std::move(in_flight.front().plan);
    in_flight.pop_front();
    ApplyResult(plan, *result);
  }
}

void Engine::ApplyResult(const worker::v1::StepPlan& plan, const worker::v1::StepResult& result) {
  if (!result.error().empty()) {
    spdlog::error("step {} failed on the workers: {}", plan.step_id(), result.error());
    const absl::Status failed = absl::InternalError(
        absl::StrCat("step ", plan.step_id(), " failed on the workers: ", result.error()));
    scheduler_.Dropped(plan);
    for (uint64_t key : scheduler_.RequestsIn(plan)) {
      if (Request* r = Find(key)) Finish(r, v1::FINISH_REASON_ERROR, failed);
    }
    return;
  }
  spdlog::debug("step {}: {} seqs, {:.2f} ms on the workers", plan.step_id(), plan.seqs_size(),
                result.compute_ms());
  Scheduler::Outcome outcome = scheduler_.Complete(plan, result);
  const Clock::time_point now = Clock::now();
  for (const Scheduler::Sampled& s : outcome.sampled) {
    Request* r = Find(s.key);
    if (r == nullptr) continue;
    if (s.token < 0 || s.token >= model_.config.vocab_size) {
      Finish(r, v1::FINISH_REASON_ERROR,
             absl::InternalError(absl::StrCat("the workers sampled id ", s.token,
                                              ", outside the vocabulary [0, ",
                                              model_.config.vocab_size, ")")));
      continue;
    }
    if (!r->first_token) r->first_token = now;
    v1::GenerateResponse message;
    message.set_request_id(r->handle->request_id);
    const v1::FinishReason reason = r->output.Add(s.token, s.logprobs, &message);
    // Add appends the token unless it fails the request (a NaN logprob).
    if (options_.metrics != nullptr && reason != v1::FINISH_REASON_ERROR) {
      options_.metrics->Token(r->prompt_tokens, r->arrival, r->last_token, now);
    }
    r->last_token = now;
    if (reason != v1::FINISH_REASON_UNSPECIFIED) {
      Finish(r, reason, r->output.error(), std::move(message));  // error: a NaN logprob
    } else {
      r->handle->channel.Push(std::move(message));
    }
  }
  for (const auto& [key, error] : outcome.failed) {
    if (Request* r = Find(key)) {
      spdlog::error("step {}: request {} failed on the workers: {}", plan.step_id(),
                    r->handle->request_id, error);
      Finish(r, v1::FINISH_REASON_ERROR,
             absl::InternalError(absl::StrCat("step ", plan.step_id(),
                                              " failed on the workers for this request: ", error)));
    }
  }
  for (uint64_t key : outcome.missing) {
    if (Request* r = Find(key)) {
      Finish(r, v1::FINISH_REASON_ERROR,
             absl::InternalError(absl::StrCat("step ", plan.step_id(),
                                              ": the workers returned no token for request ",
                                              r->handle->request_id)));
    }
  }
}

}  // namespace shardlm::coordinator
