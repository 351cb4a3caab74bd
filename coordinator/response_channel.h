// One request's queue from the engine thread (producer) to its consumer: the Generate reactor
// (woken through a listener when something arrives, then taking without blocking) or a thread
// that blocks in Wait (the HTTP server). Streamed messages, then one final status. Thread-safe.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
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
  // Wait without waiting: what is there now.
  void Take(std::vector<v1::GenerateResponse>* messages, std::optional<absl::Status>* final);

  // `listener` is called after every Push and Close that queued something or ended the stream,
  // on the pushing thread, outside this channel's lock. That thread is the engine's and may hold
  // the engine's lock: a listener must neither block nor call into the engine. Replaces the
  // previous listener; nullptr removes it (a call already under way may still finish).
  void SetListener(std::function<void()> listener);

  bool closed() const;

 private:
  void TakeLocked(std::vector<v1::GenerateResponse>* messages, std::optional<absl::Status>* final)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
  // Shared so that Notify copies a pointer, not the function, out of the lock.
  std::shared_ptr<const std::function<void()>> listener_ ABSL_GUARDED_BY(mu_);
};

// Several queued messages as one (ids, text and logprobs concatenated; the finish reason, usage
// and error of the last that has them): a slow client gets fewer, larger messages.
v1::GenerateResponse MergeResponses(std::vector<v1::GenerateResponse> messages);

}  // namespace shardlm::coordinator
