#include "coordinator/worker_link.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

absl::StatusOr<worker::v1::StepResult> WorkerLink::RunStep(const worker::v1::StepPlan& plan,
                                                           std::chrono::milliseconds timeout) {
  const absl::Time until = absl::Now() + absl::FromChrono(timeout);
  absl::MutexLock lock(&mu_);
  auto gone = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    if (down_) return absl::UnavailableError(down_->message());
    if (abort_) return absl::UnavailableError(*abort_);
    return absl::UnavailableError("the coordinator is shutting down");
  };
  if (down_ || closed_ || abort_) return gone();
  outgoing_.emplace();
  *outgoing_->mutable_step() = plan;
  awaited_step_ = plan.step_id();
  result_.reset();
  cv_.SignalAll();
  while (!StepOver()) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  const bool ended = StepOver();
  awaited_step_ = 0;
  if (result_) return *std::exchange(result_, std::nullopt);
  if (!ended) {
    outgoing_.reset();  // not written yet (a stuck handler): never send it late
    return absl::DeadlineExceededError(
        absl::StrCat("no result for step ", plan.step_id(), " within ", timeout.count(), " ms"));
  }
  return gone();
}

void WorkerLink::Abort(std::string reason) {
  absl::MutexLock lock(&mu_);
  if (!abort_) abort_ = std::move(reason);
  cv_.SignalAll();
}

std::optional<worker::v1::CoordinatorMessage> WorkerLink::NextOutgoing() {
  absl::MutexLock lock(&mu_);
  while (!outgoing_.has_value() && !down_.has_value() && !closed_ && !abort_.has_value()) {
    cv_.Wait(&mu_);
  }
  if (down_) return std::nullopt;
  if (abort_) {
    if (abort_sent_) return std::nullopt;
    abort_sent_ = true;
    worker::v1::CoordinatorMessage message;
    message.mutable_abort()->set_reason(*abort_);
    return message;
  }
  if (closed_) return std::nullopt;
  return std::exchange(outgoing_, std::nullopt);
}

void WorkerLink::OnMessage(const worker::v1::WorkerMessage& message) {
  absl::MutexLock lock(&mu_);
  if (!message.has_result()) {
    spdlog::warn("worker job {}: unexpected message (kind {}) after loading: ignored", peer_,
                 static_cast<int>(message.kind_case()));
    return;
  }
  if (awaited_step_ == 0 || message.result().step_id() != awaited_step_) {
    spdlog::warn("worker job {}: result for step {} while waiting for step {}: ignored", peer_,
                 message.result().step_id(), awaited_step_);
    return;
  }
  result_ = message.result();
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
