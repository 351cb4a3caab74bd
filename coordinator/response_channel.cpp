#include "coordinator/response_channel.h"

#include <utility>

namespace shardlm::coordinator {

void ResponseChannel::Push(v1::GenerateResponse message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (final_) return;
    queue_.push_back(std::move(message));
  }
  cv_.notify_all();
}

void ResponseChannel::Close(absl::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (final_) return;
    final_ = std::move(status);
  }
  cv_.notify_all();
}

bool ResponseChannel::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return final_.has_value();
}

void ResponseChannel::Wait(std::chrono::steady_clock::time_point deadline,
                           std::vector<v1::GenerateResponse>* messages,
                           std::optional<absl::Status>* final) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_until(lock, deadline, [&] { return !queue_.empty() || final_.has_value(); });
  while (!queue_.empty()) {
    messages->push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  if (final_) *final = *final_;
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
