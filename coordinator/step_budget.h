// How many prefill tokens a step that carries decodes may take, so that the step, and with it
// every decoding sequence's inter-token latency, stays bounded. Pure bookkeeping (no clock, no
// threads): the engine feeds it the measured time of each step that came back (the same
// StepSize and time it gives StepDeadline) and asks it, before planning a step, for the prefill
// budget given the sequences in decode and in flight. The scheduler serves decodes first and
// fills the rest with prefill chunks up to that budget (Scheduler::Schedule); a step with no
// decode is not limited (prefill fills --max-batch-tokens).
//
// Cost model: a step's time is linear in its tokens, t(n) = overhead + per_token * n, fitted by
// least squares through one point per token-count bucket (powers of two: a moving average of
// the tokens and the times of the steps seen there). One point per bucket, rather than one per
// step, keeps the many decode-only steps from drowning the few large ones that fix the slope,
// and the moving average follows a machine whose speed changes (other tenants). A step of d
// decodes and p prefill tokens is then held to t(d + p) <= ratio * t(b) and, when set, to
// t(d + p) <= max_step_ms, where b >= d is the batch in flight (running and queued sequences,
// up to --max-running): the reference is the decode-only step of the full batch, not of the
// decodes of the moment. Were it the latter, few decodes would allow little prefill, so few
// sequences would reach decode, and the batch would stay small. Until enough steps were
// measured, the budget is a fixed small chunk. It is never below 1 token, so that prefills
// always progress.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <optional>

#include "coordinator/step_deadline.h"

namespace shardlm::coordinator {

struct StepBudgetOptions {
  // A step that carries decodes may take about `ratio` times a decode-only step of the whole
  // batch in flight (--step-time-ratio); 0: no such bound.
  double ratio = 2.0;
  // And at most this many milliseconds (--max-step-time-ms); 0: no such bound. Under both 0,
  // prefill fills --max-batch-tokens whatever decodes (no budget).
  double max_step_ms = 0;
  // The budget before the cost model is fitted: small, so that the first mixed steps cannot
  // stall the decodes for long.
  int64_t cold_chunk = 32;
  // Steps measured before the model is used.
  int64_t min_steps = 4;
};

class StepBudget {
 public:
  static constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

  explicit StepBudget(StepBudgetOptions options = {}) : options_(options) {}

  // A step of `size` took `ms` (it came back, with or without errors).
  void Observe(const StepSize& size, double ms);

  // The prefill tokens a step with `decodes` decoding sequences may add, `batch` sequences
  // being in flight (taken as at least `decodes`): kUnlimited when `decodes` is 0 or no bound
  // is set; else at least 1.
  int64_t PrefillBudget(int64_t decodes, int64_t batch) const;

  // The fitted cost model, once enough steps of different sizes were measured and the slope is
  // positive; nullopt before.
  struct Fit {
    double overhead_ms = 0;   // clamped at >= 0
    double per_token_ms = 0;  // > 0
  };
  std::optional<Fit> CostModel() const;

  // Measurements belong to one worker job (another may run on other hardware or settings).
  void Reset();

 private:
  struct Point {
    int64_t steps = 0;
    double tokens = 0;  // moving averages over the bucket's steps
    double ms = 0;
  };
  static constexpr int kBuckets = 40;    // 2^39 tokens: beyond any step
  static constexpr double kAlpha = 0.2;  // weight of a new step in its bucket's averages

  StepBudgetOptions options_;
  std::array<Point, kBuckets> points_;
  int64_t steps_ = 0;
};

}  // namespace shardlm::coordinator
