// What an attached worker job reports is range-checked against what the coordinator asked for
// and can hold before anything acts on it: a job that sends numbers out of range is broken (or
// not ours), and no number it sends may size an allocation here. A violation is an error
// naming the field with expected vs got; the Attach handler then takes the link down.
#pragma once

#include <cstdint>
#include <mutex>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/status.h"
#include "shardlm/v1/worker.pb.h"

namespace shardlm::coordinator {

// The most KV blocks a job may report (Loaded.kv_blocks). The block manager's bookkeeping grows
// with the blocks in use (a few bytes each); 2^24 blocks hold 268M tokens at block size 16.
inline constexpr int64_t kMaxKvBlocks = int64_t{1} << 24;
// Worker-sent text (error messages) longer than this is cut when logged or passed on.
inline constexpr size_t kMaxWorkerTextBytes = 1024;

// `text` as sent when short, else its first kMaxWorkerTextBytes quoted with the full size.
std::string WorkerText(std::string_view text);

// A successful Loaded: kv_blocks in [1, kMaxKvBlocks]. RESOURCE_EXHAUSTED for no block (the
// KV budget is too small), INVALID_ARGUMENT above the bound.
absl::Status CheckLoaded(const worker::v1::Loaded& loaded);

// What one StepPlan allows its StepResult to hold.
class StepExpectation {
 public:
  // `logprobs_of`: the logprobs each live sequence asked for on its first SeqStep (continuing
  // SeqSteps of a delta plan do not repeat them).
  StepExpectation(const worker::v1::StepPlan& plan, int64_t vocab_size,
                  const std::unordered_map<uint64_t, int32_t>& logprobs_of = {});

  uint64_t step_id() const { return step_id_; }
  // Results only for planned sequences that asked for one, at most one each; a sampled token and
  // logprob ids in [0, vocab); at most the asked number of top logprobs (their values are the
  // output processor's to check, per request); logits only when asked and exactly rows x vocab;
  // compute_ms finite and >= 0. INVALID_ARGUMENT naming the field otherwise.
  absl::Status Check(const worker::v1::StepResult& result) const;

 private:
  struct Seq {
    bool sample = false;
    int32_t logprobs = 0;
    int64_t logits_rows = 0;
  };
  uint64_t step_id_;
  int64_t vocab_size_;
  std::unordered_map<uint64_t, Seq> seqs_;
};

// The Attach handler's guard between its writer (plans going out) and its reader (results
// coming in): the steps in flight are answered once each, in the order they were sent, and every
// answer is checked. Thread-safe.
class StepResultGuard {
 public:
  explicit StepResultGuard(int64_t vocab_size) : vocab_size_(vocab_size) {}

  // Writer: `plan` is about to be sent.
  void Sent(const worker::v1::StepPlan& plan);
  // Reader: a message after loading. OK for a valid result of the oldest step in flight (its
  // error strings are cut to kMaxWorkerTextBytes in place); INVALID_ARGUMENT otherwise: another
  // kind of message, a result when no step is in flight or for another step, or a result that
  // fails StepExpectation::Check.
  absl::Status Received(worker::v1::WorkerMessage* message);

 private:
  const int64_t vocab_size_;
  std::mutex mu_;
  std::deque<StepExpectation> awaited_;  // oldest first
  std::unordered_map<uint64_t, int32_t> logprobs_of_;  // live seq_id -> logprobs (first SeqStep)
};

}  // namespace shardlm::coordinator
