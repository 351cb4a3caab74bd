// Turning one row of logits into the next token on the worker: repetition / presence /
// frequency penalties, temperature, top-k, top-p, min-p, and a seeded draw that depends only on
// (seed, position), never on the batch: a seeded request yields the same tokens alone or among
// others, and after a preemption that recomputes it.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace shardlm {

struct SamplerParams {
  float temperature = 1.0f;         // 0: greedy
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // HF: over prompt and generated ids
  float presence_penalty = 0.0f;    // OpenAI: over generated ids
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  int logprobs = 0;                 // top-n to report

  bool greedy() const { return temperature == 0.0f || top_k == 1; }
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
  // Whether the plain distributed argmax over the vocabulary shards gives the answer, so that
  // the full row never needs gathering.
  bool argmax_only() const { return greedy() && !has_penalties() && logprobs == 0; }
};

// The ids a sequence has seen, for the penalties.
struct TokenHistory {
  std::unordered_set<int32_t> seen;                  // prompt and generated
  std::unordered_map<int32_t, int32_t> generated;    // generated id -> count
};

struct Sampled {
  int32_t token = 0;
  float logprob = 0.0f;                            // of `token`, after penalties
  std::vector<std::pair<int32_t, float>> top;      // the top `logprobs` (id, logprob)
};

// A uniform double in [0, 1) from (seed, position) alone (SplitMix64).
double UniformAt(uint64_t seed, uint64_t position);

// Samples from `logits` (the full vocabulary row; modified in place by the penalties) the token
// that goes at `position`. Logprobs are log-softmax of the penalized logits, before temperature,
// at least kLogprobFloor (base/logprob.h). Finite logits and the parameter ranges that
// coordinator/validation.h enforces give finite logprobs; a NaN logit gives NaN ones (the worker
// fails such a row before sampling it).
Sampled Sample(std::span<float> logits, const SamplerParams& params, const TokenHistory& history,
               uint64_t position);

}  // namespace shardlm
