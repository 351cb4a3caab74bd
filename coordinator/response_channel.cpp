#include "coordinator/response_channel.h"

#include <utility>

#include "absl/time/time.h"

namespace shardlm::coordinator {

void ResponseChannel::Push(v1::GenerateResponse message) {
  std::shared_ptr<const std::function<void()>> listener;  // called outside the lock
  {
    absl::MutexLock lock(&mu_);
    if (final_) return;
    queue_.push_back(std::move(message));
    listener = listener_;
  }
  cv_.SignalAll();
  if (listener) (*listener)();
}

void ResponseChannel::Close(absl::Status status) {
  std::shared_ptr<const std::function<void()>> listener;
  {
    absl::MutexLock lock(&mu_);
    if (final_) return;
    final_ = std::move(status);
    listener = listener_;
  }
  cv_.SignalAll();
  if (listener) (*listener)();
}

void ResponseChannel::SetListener(std::function<void()> listener) {
  absl::MutexLock lock(&mu_);
  listener_ =
      listener ? std::make_shared<const std::function<void()>>(std::move(listener)) : nullptr;
}

bool ResponseChannel::closed() const {
  absl::MutexLock lock(&mu_);
  return final_.has_value();
}

void ResponseChannel::TakeLocked(std::vector<v1::GenerateResponse>* messages,
                                 std::optional<absl::Status>* final) {
  while (!queue_.empty()) {
    messages->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  if (final_) *final = *final_;
}

void ResponseChannel::Wait(std::chrono::steady_clock::time_point deadline,
                           std::vector<v1::GenerateResponse>* messages,
                           std::optional<absl::Status>* final) {
  const absl::Time until =
      absl::Now() + absl::FromChrono(deadline - std::chrono::steady_clock::now());
  absl::MutexLock lock(&mu_);
  while (queue_.empty() && !final_.has_value()) {
    if (cv_.WaitWithDeadline(&mu_, until)) break;  // timed out
  }
  TakeLocked(messages, final);
}

void ResponseChannel::Take(std::vector<v1::GenerateResponse>* messages,
                           std::optional<absl::Status>* final) {
  absl::MutexLock lock(&mu_);
  TakeLocked(messages, final);
}

v1::GenerateResponse MergeResponses(std::vector<v1::GenerateResponse> messages) {
  if (messages.empty()) return {};
  v1::GenerateResponse merged = std::move(messages.front());
  for (size_t i = 1; i < messages.size(); ++i) {
    v1::GenerateResponse& m = messages[i];
    merged.mutable_token_ids()->MergeFrom(m.token_ids());
    merged.mutable_text()->append(m.text());
    for (v1::Logprobs& lp : *m.mutable_logprobs()) *merged.add_logprobs() = std::move(lp);
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) merged.set_finish_reason(m.finish_reason());
    if (m.has_usage()) *merged.mutable_usage() = m.usage();
    if (!m.error().empty()) merged.set_error(m.error());
  }
  return merged;
}

}  // namespace shardlm::coordinator
