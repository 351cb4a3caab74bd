#include "coordinator/worker_link.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

absl::Status WorkerLink::Send(const worker::v1::StepPlan& plan) {
  absl::MutexLock lock(&mu_);
  if (down_) return absl::UnavailableError(down_->message());
  if (abort_) return absl::UnavailableError(*abort_);
  if (closed_) return absl::UnavailableError("the coordinator is shutting down");
  outgoing_.emplace_back();
  *outgoing_.back().mutable_step() = plan;
  pending_[plan.step_id()];
  cv_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<worker::v1::StepResult> WorkerLink::Await(uint64_t step_id,
                                                         std::chrono::milliseconds timeout) {
  const absl::Time until = absl::Now() + absl::FromChrono(timeout);
  absl::MutexLock lock(&mu_);
  auto it = pending_.find(step_id);
  if (it == pending_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("step ", step_id, " was not sent"));
  }
  while (!it->second.has_value() && !Gone()) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  if (it->second.has_value()) {
    worker::v1::StepResult result = std::move(*it->second);
    pending_.erase(it);
    return result;
  }
  if (down_) return absl::UnavailableError(down_->message());
  if (abort_) return absl::UnavailableError(*abort_);
  if (closed_) return absl::UnavailableError("the coordinator is shutting down");
  // Plans not written yet (a stuck handler) are never sent late.
  outgoing_.clear();
  return absl::DeadlineExceededError(
      absl::StrCat("no result for step ", step_id, " within ", timeout.count(), " ms"));
}

absl::StatusOr<worker::v1::StepResult> WorkerLink::RunStep(const worker::v1::StepPlan& plan,
                                                           std::chrono::milliseconds timeout) {
  if (absl::Status sent = Send(plan); !sent.ok()) return sent;
  return Await(plan.step_id(), timeout);
}

void WorkerLink::Abort(std::string reason) {
  absl::MutexLock lock(&mu_);
  if (!abort_) abort_ = std::move(reason);
  cv_.SignalAll();
}

std::optional<worker::v1::CoordinatorMessage> WorkerLink::NextOutgoing() {
  absl::MutexLock lock(&mu_);
  while (outgoing_.empty() && !Gone()) cv_.Wait(&mu_);
  if (down_) return std::nullopt;
  if (abort_) {
    if (abort_sent_) return std::nullopt;
    abort_sent_ = true;
    worker::v1::CoordinatorMessage message;
    message.mutable_abort()->set_reason(*abort_);
    return message;
  }
  if (closed_) return std::nullopt;
  worker::v1::CoordinatorMessage message = std::move(outgoing_.front());
  outgoing_.pop_front();
  return message;
}

void WorkerLink::OnMessage(const worker::v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  if (!message.has_result()) {
    spdlog::warn("worker job {}: unexpected message (kind {}) after loading: ignored", peer_,
                 static_cast<int>(message.kind_case()));
    return;
  }
  auto it = pending_.find(message.result().step_id());
  if (it == pending_.end() || it->second.has_value()) {
    spdlog::warn("worker job {}: result for step {}, which is not awaited: ignored", peer_,
                 message.result().step_id());
    return;
  }
  it->second = message.result();
  cv_.SignalAll();
}

void WorkerLink::MarkDown(absl::Status reason) {
  absl::MutexLock lock(&mu_);
  if (!down_) down_ = std::move(reason);
  cv_.SignalAll();
}

void WorkerLink::Close() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  cv_.SignalAll();
}

bool WorkerLink::WaitDown(std::chrono::milliseconds timeout) {
  const absl::Time until = absl::Now() + absl::FromChrono(timeout);
  absl::MutexLock lock(&mu_);
  while (!down_.has_value()) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  return down_.has_value();
}

bool WorkerLink::down() const {
  absl::MutexLock lock(&mu_);
  return down_.has_value();
}

bool WorkerLink::aborted() const {
  absl::MutexLock lock(&mu_);
  return abort_.has_value();
}

bool WorkerLink::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

absl::Status WorkerLink::down_reason() const {
  absl::MutexLock lock(&mu_);
  return down_.value_or(absl::OkStatus());
}

}  // namespace shardlm::coordinator
