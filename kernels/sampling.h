// The sampling rule every backend implements (worker/sampler.h adds the penalties and logprobs
// around it): candidates by descending logit (ties: lower id), cut by top-k, softmax with the
// temperature (in double), cut by top-p then min-p, and one inverse-CDF draw at `uniform`.
// Greedy (temperature <= 0 or top_k == 1): the first index of the maximum.
#pragma once

#include <cstdint>
#include <span>

namespace shardlm {

struct SampleRowParams {
  float temperature = 1.0f;
  int32_t top_k = 0;   // 0: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  double uniform = 0;  // the draw, in [0, 1)
};

int32_t SampleRow(std::span<const float> logits, const SampleRowParams& params);

}  // namespace shardlm
