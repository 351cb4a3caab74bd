#include "runtime/sampler.h"

#include "base/logprob.h"
#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace shardlm {

double UniformAt(uint64_t seed, uint64_t position) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (position + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

namespace {

// A penalized logit, kept finite: a huge finite logit times a penalty would overflow to +-inf,
// and an infinite logit turns every logprob into NaN (inf - inf).
float Finite(float l) {
  return std::clamp(l, -std::numeric_limits<float>::max(), std::numeric_limits<float>::max());
}

void ApplyPenalties(std::span<float> logits, const SamplerParams& p, const TokenHistory& h) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (p.repetition_penalty != 1.0f) {
    for (int32_t id : h.seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[id];
      if (std::isfinite(l)) l = Finite(l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty);
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (const auto& [id, count] : h.generated) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[id];
      if (std::isfinite(l)) {
        l = Finite(l - (p.presence_penalty + p.frequency_penalty * static_cast<float>(count)));
      }
    }
  }
}

// log(sum(exp(logits))) in double, max subtracted.
double LogSumExp(std::span<const float> logits) {
  float m = -std::numeric_limits<float>::infinity();
  for (float l : logits) m = std::max(m, l);
  double s = 0;
  for (float l : logits) s += std::exp(static_cast<double>(l) - m);
  return m + std::log(s);
}

}  // namespace

Sampled Sample(std::span<float> logits, const SamplerParams& p, const TokenHistory& history,
               uint64_t position) {
  ApplyPenalties(logits, p, history);
  Sampled out;
  SampleRowParams row;
  row.temperature = p.greedy() ? 0.0f : p.temperature;
  row.top_k = p.top_k;
  row.top_p = p.top_p;
  row.min_p = p.min_p;
  row.uniform = p.greedy() ? 0.0 : UniformAt(p.seed, position);
  out.token = SampleRow(logits, row);
  const double lse = LogSumExp(logits);
  // Floored: a token far below the others (or a -inf logit) must not report -inf.
  out.logprob = FlooredLogprob(logits[out.token] - lse);
  if (p.logprobs > 0) {
    std::vector<int32_t> ids(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
    const size_t n = std::min(ids.size(), static_cast<size_t>(p.logprobs));
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < n; ++i) {
      out.top.emplace_back(ids[i], FlooredLogprob(logits[ids[i]] - lse));
    }
  }
  return out;
}

}  // namespace shardlm
