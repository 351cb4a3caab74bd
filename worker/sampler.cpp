#include "worker/sampler.h"

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

void ApplyPenalties(std::span<float> logits, const SamplerParams& p, const TokenHistory& h) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (p.repetition_penalty != 1.0f) {
    for (int32_t id : h.seen) {
      if (id < 0 || id >= vocab) continue;
      float& l = logits[id];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    for (const auto& [id, count] : h.generated) {
      if (id < 0 || id >= vocab) continue;
      logits[id] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count);
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

int32_t Argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

}  // namespace

Sampled Sample(std::span<float> logits, const SamplerParams& p, const TokenHistory& history,
               uint64_t position) {
  ApplyPenalties(logits, p, history);
  Sampled out;
  if (p.greedy()) {
    out.token = Argmax(logits);
  } else {
    // Candidates by descending logit (ties: lower id), cut by top-k, then softmax with the
    // temperature, cut by top-p and min-p, and one draw by inverse CDF in that order.
    std::vector<int32_t> ids(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    };
    size_t keep = ids.size();
    if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) {
      keep = static_cast<size_t>(p.top_k);
      std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), by_logit);
      ids.resize(keep);
    } else {
      std::sort(ids.begin(), ids.end(), by_logit);
    }
    const double inv_t = 1.0 / p.temperature;
    const double top = logits[ids[0]] * inv_t;
    std::vector<double> prob(keep);
    double total = 0;
    for (size_t i = 0; i < keep; ++i) {
      prob[i] = std::exp(logits[ids[i]] * inv_t - top);
      total += prob[i];
    }
    size_t cut = keep;
    if (p.top_p < 1.0f) {
      double cum = 0;
      for (size_t i = 0; i < keep; ++i) {
        cum += prob[i] / total;
        if (cum >= p.top_p) {
          cut = i + 1;
          break;
        }
      }
    }
    if (p.min_p > 0.0f) {
      const double floor = p.min_p * prob[0];  // prob[0] is the largest
      size_t i = 1;
      while (i < cut && prob[i] >= floor) ++i;
      cut = i;
    }
    double kept = 0;
    for (size_t i = 0; i < cut; ++i) kept += prob[i];
    const double target = UniformAt(p.seed, position) * kept;
    double cum = 0;
    out.token = ids[cut - 1];
    for (size_t i = 0; i < cut; ++i) {
      cum += prob[i];
      if (target < cum) {
        out.token = ids[i];
        break;
      }
    }
  }
  const double lse = LogSumExp(logits);
  out.logprob = static_cast<float>(logits[out.token] - lse);
  if (p.logprobs > 0) {
    std::vector<int32_t> ids(logits.size());
    std::iota(ids.begin(), ids.end(), 0);
    const size_t n = std::min(ids.size(), static_cast<size_t>(p.logprobs));
    std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (size_t i = 0; i < n; ++i) {
      out.top.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - lse));
    }
  }
  return out;
}

}  // namespace shardlm
