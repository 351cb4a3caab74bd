// One request's queue from the engine thread (producer) to its Generate handler thread
// (consumer): streamed messages, then one final status. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "shardlm/v1/generation.pb.h"

namespace shardlm::coordinator {

class ResponseChannel {
 public:
  // Ignored after Close.
  void Push(v1::GenerateResponse message);
  // The end of the stream: OK after a last message with a finish reason, or the error the RPC
  // ends with. Only the first call counts.
  void Close(absl::Status status);

  // Waits until a message or the end is there, or `deadline` passes. Moves the queued messages
  // into *messages and, once the end was reached and everything before it taken, sets *final.
  void Wait(std::chrono::steady_clock::time_point deadline,
            std::vector<v1::GenerateResponse>* messages, std::optional<absl::Status>* final);

  bool closed() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::GenerateResponse> queue_;
  std::optional<absl::Status> final_;
};

// Several queued messages as one (ids, text and logprobs concatenated; the finish reason, usage
// and error of the last that has them): a slow client gets fewer, larger messages.
v1::GenerateResponse MergeResponses(std::vector<v1::GenerateResponse> messages);

}  // namespace shardlm::coordinator
