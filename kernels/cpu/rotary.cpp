// Rotary position embedding: in place (Rope), and fused with the KV cache write from the output
// of a fused QKV projection (RopeWriteKv). Both rotate through RotateHeads.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

namespace shardlm::cpu {
namespace {

// cos / sin of position `position` times each inverse frequency, times `scale` (the attention
// factor). float position times float frequency, as HF does: its products round the same way.
void Angles(int32_t position, std::span<const float> inv_freq, float scale, float* cos_k,
            float* sin_k) {
  const float pos = static_cast<float>(position);
  for (size_t k = 0; k < inv_freq.size(); ++k) {
    const float angle = pos * inv_freq[k];
    cos_k[k] = std::cos(angle) * scale;
    sin_k[k] = std::sin(angle) * scale;
  }
}

// dst = src rotated, for `heads` heads of head_dim features (src == dst: in place); features past
// 2 * half are copied unchanged.
void RotateHeads(const float* src, float* dst, int64_t heads, int64_t head_dim, int64_t half,
                 const float* cos_k, const float* sin_k, bool interleaved) {
  for (int64_t h = 0; h < heads; ++h) {
    const float* s = src + h * head_dim;
    float* d = dst + h * head_dim;
    if (interleaved) {  // GPT-J: pair k is (v[2k], v[2k + 1])
      for (int64_t k = 0; k < half; ++k) {
        const float x0 = s[2 * k];
        const float x1 = s[2 * k + 1];
        d[2 * k] = x0 * cos_k[k] - x1 * sin_k[k];
        d[2 * k + 1] = x1 * cos_k[k] + x0 * sin_k[k];
      }
    } else {  // HF rotate_half / NeoX: pair k is (v[k], v[k + half])
      const float* sw = s + half;
      float* dw = d + half;
#pragma omp simd
      for (int64_t k = 0; k < half; ++k) {
        const float x0 = s[k];
        const float x1 = sw[k];
        d[k] = x0 * cos_k[k] - x1 * sin_k[k];
        dw[k] = x1 * cos_k[k] + x0 * sin_k[k];
      }
    }
    if (s != d && 2 * half < head_dim) {
      std::memcpy(d + 2 * half, s + 2 * half, (head_dim - 2 * half) * sizeof(float));
    }
  }
}

}  // namespace

void Rope(Tensor& x, std::span<const int32_t> positions, std::span<const float> inv_freq,
          bool interleaved, float attention_factor, int threads) {
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
      Angles(positions[i], inv_freq, attention_factor, cos_k.data(), sin_k.data());
      float* row = xp + i * heads * head_dim;
      RotateHeads(row, row, heads, head_dim, half, cos_k.data(), sin_k.data(), interleaved);
    }
  }
}

void RopeWriteKv(const Tensor& qkv, std::span<const int32_t> positions,
                 std::span<const float> inv_freq, bool interleaved, float attention_factor,
                 std::span<const int32_t> rows, Tensor& k_cache, Tensor& v_cache, Tensor& q,
                 int threads) {
  RequireHostF32("RopeWriteKv",
                 {{"qkv", &qkv}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"q", &q}});
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  Require(RopeWriteKvShapesAgree(qkv, n, k_cache, v_cache, q) &&
              static_cast<int64_t>(rows.size()) == n && half > 0 && 2 * half <= q.dim(2),
          "RopeWriteKv", std::string(kRopeWriteKvShapes) + ", and 0 < rotary_dim <= head_dim",
          {{"qkv", &qkv}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"q", &q}});
  const int64_t max_seq = k_cache.dim(0);
  CheckCacheRows("RopeWriteKv", rows, max_seq);
  const int64_t heads = q.dim(1), head_dim = q.dim(2);
  const int64_t kv_width = k_cache.numel() / max_seq, kv_heads = kv_width / head_dim;
  const int64_t q_width = heads * head_dim, width = q_width + 2 * kv_width;
  const float* src = qkv.data<float>();
  float* qp = q.data<float>();
  float* kc = k_cache.data<float>();
  float* vc = v_cache.data<float>();
#pragma omp parallel num_threads(threads) if (n > 1 && n * width >= kMinParallelWork)
  {
    std::vector<float> cos_k(half);
    std::vector<float> sin_k(half);
#pragma omp for
    for (int64_t i = 0; i < n; ++i) {
      Angles(positions[i], inv_freq, attention_factor, cos_k.data(), sin_k.data());
      const float* row = src + i * width;
      const int64_t at = static_cast<int64_t>(rows[i]) * kv_width;
      RotateHeads(row, qp + i * q_width, heads, head_dim, half, cos_k.data(), sin_k.data(),
                  interleaved);
      RotateHeads(row + q_width, kc + at, kv_heads, head_dim, half, cos_k.data(), sin_k.data(),
                  interleaved);
      std::memcpy(vc + at, row + q_width + kv_width, kv_width * sizeof(float));
    }
  }
}

}  // namespace shardlm::cpu
