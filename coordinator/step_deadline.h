// How long the coordinator waits for a step's result before it declares the worker job hung.
// Pure bookkeeping (no clock, no threads): the engine feeds it the measured time of each step
// that came back and asks it for the deadline of the next one.
//
// A step's cost is taken as linear in its tokens and in the KV positions they attend to (prefill
// chunks at long context and decodes of long sequences are slower). For each token-count bucket
// (powers of two) the slowest step seen is kept; a new step's estimate is that step's time scaled
// up by whichever grew more, its tokens or its attended positions (never scaled down). Under a
// linear cost with a fixed overhead this bounds the step from above, and the multiplier adds room
// for noise (a loaded machine, other tenants). The floor covers steps with nothing measured yet,
// such as the very first one, and is the least any step gets: a healthy step of tens of seconds
// on a CPU must never be declared hung.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "shardlm/v1/worker.pb.h"

namespace shardlm::coordinator {

struct StepDeadlineOptions {
  // Fixed deadline for every step (--step-timeout); 0: derived from measured step times.
  std::chrono::milliseconds fixed{0};
  std::chrono::milliseconds floor{60000};
  double multiplier = 10.0;
};

// What a step computes: the tokens it runs and the KV positions they attend to.
struct StepSize {
  int64_t seqs = 0;
  int64_t tokens = 0;
  // Sum over its tokens of the positions each attends to (a chunk of n at start s attends
  // n * s + n * (n + 1) / 2 positions; a decode at position s, s + 1).
  int64_t attended = 0;

  static StepSize Of(const worker::v1::StepPlan& plan);
  std::string ToString() const;  // "3 seqs, 17 tokens, 250 attended positions"
};

class StepDeadline {
 public:
  explicit StepDeadline(StepDeadlineOptions options = {}) : options_(options) {}

  struct Deadline {
    std::chrono::milliseconds timeout;
    std::string derivation;  // how it was derived, for the log line of a missed deadline
  };
  Deadline For(const StepSize& size) const;

  // A step of `size` took `ms` (it came back, with or without errors).
  void Observe(const StepSize& size, double ms);

  // Measurements belong to one worker job (another may run on other hardware or settings).
  void Reset() { slowest_.fill(std::nullopt); }

 private:
  struct Sample {
    StepSize size;
    double ms = 0;
  };
  static constexpr int kBuckets = 40;  // 2^39 tokens: beyond any step
  static int Bucket(int64_t tokens);

  StepDeadlineOptions options_;
  // The slowest step seen per bucket: bucket b holds steps of [2^b, 2^(b+1)) tokens.
  std::array<std::optional<Sample>, kBuckets> slowest_;
};

}  // namespace shardlm::coordinator
