#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace shardlm::cpu {

void Rope(Tensor& x, std::span<const int32_t> positions, std::span<const float> inv_freq,
          bool interleaved, int threads) {
  RequireHostF32("Rope", {{"x", &x}});
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  Require(x.rank() == 3 && x.dim(0) == static_cast<int64_t>(positions.size()) && half > 0 &&
              2 * half <= x.dim(2),
          "Rope",
          "expects x [n, heads, head_dim] with n == positions.size() and "
          "0 < rotary_dim <= head_dim",
          {{"x", &x}});
  const int64_t n = x.dim(0);
  const int64_t heads = x.dim(1);
  const int64_t head_dim = x.dim(2);
  float* xp = x.data<float>();
#pragma omp parallel num_threads(threads) if (n > 1 && n * heads * half >= kMinParallelWork)
  {
    std::vector<float> cos_k(half);
    std::vector<float> sin_k(half);
#pragma omp for
    for (int64_t i = 0; i < n; ++i) {
      // float position times float frequency, as HF does: its products round the same way.
      const float pos = static_cast<float>(positions[i]);
      for (int64_t k = 0; k < half; ++k) {
        const float angle = pos * inv_freq[k];
        cos_k[k] = std::cos(angle);
        sin_k[k] = std::sin(angle);
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* v = xp + (i * heads + h) * head_dim;
        if (interleaved) {  // GPT-J: pair k is (v[2k], v[2k + 1])
          for (int64_t k = 0; k < half; ++k) {
            const float x0 = v[2 * k];
            const float x1 = v[2 * k + 1];
            v[2 * k] = x0 * cos_k[k] - x1 * sin_k[k];
            v[2 * k + 1] = x1 * cos_k[k] + x0 * sin_k[k];
          }
        } else {  // HF rotate_half / NeoX: pair k is (v[k], v[k + half])
          float* w = v + half;
#pragma omp simd
          for (int64_t k = 0; k < half; ++k) {
            const float x0 = v[k];
            const float x1 = w[k];
            v[k] = x0 * cos_k[k] - x1 * sin_k[k];
            w[k] = x1 * cos_k[k] + x0 * sin_k[k];
          }
        }
      }
    }
  }
}

}  // namespace shardlm::cpu
