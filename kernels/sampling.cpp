#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace shardlm {

int32_t SampleRow(std::span<const float> logits, const SampleRowParams& p) {
  if (logits.empty()) return 0;
  if (!(p.temperature > 0.0f) || p.top_k == 1) {
    int32_t best = 0;
    for (size_t i = 1; i < logits.size(); ++i) {
      if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
    }
    return best;
  }
  int32_t token = 0;

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
  const double target = p.uniform * kept;
  double cum = 0;
  token = ids[cut - 1];
  for (size_t i = 0; i < cut; ++i) {
    cum += prob[i];
    if (target < cum) {
      token = ids[i];
      break;
    }
  }
  return token;
}

}  // namespace shardlm
