// Internal to the CPU backend: its ops as free functions, so that each group lives in a small
// file. `threads` is the resolved OpenMP thread count (> 0). Inputs are checked here, cheaply:
// the callers are meant to have validated them, but an exception naming the shapes beats a
// crash deep inside BLAS.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>

#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace shardlm::cpu {

// Below this many elements an op runs on the calling thread: waking the OpenMP team costs more.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 15;

struct Named {
  const char* name;
  const Tensor* tensor;
};

[[noreturn]] void ThrowShapeError(std::string_view op, std::string_view what,
                                  std::initializer_list<Named> tensors);

// Throws std::invalid_argument("<op>: <what> (x [2, 3], w [4, 5])") unless `ok`.
inline void Require(bool ok, std::string_view op, std::string_view what,
                    std::initializer_list<Named> tensors) {
  if (!ok) [[unlikely]]
    ThrowShapeError(op, what, tensors);
}

// Requires every tensor to be a host f32 tensor.
void RequireHostF32(std::string_view op, std::initializer_list<Named> tensors);

// dst[0, n) = src converted to f32, split across threads when large.
void ConvertToF32Parallel(DType dtype, const void* src, float* dst, int64_t n, int threads);

void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, int threads);
void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y, int threads);
// inv_freq: the rotary_dim / 2 inverse frequencies of the RopeConfig.
void Rope(Tensor& x, std::span<const int32_t> positions, std::span<const float> inv_freq,
          bool interleaved, int threads);
void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y, int threads);
void SiluMul(const Tensor& gate, const Tensor& up, Tensor& y, int threads);
void Add(Tensor& x, const Tensor& y, int threads);
void Argmax(const Tensor& logits, std::span<int32_t> out, int threads);
void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> positions, Tensor& k_cache,
             Tensor& v_cache);
void Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               std::span<const int32_t> positions, const AttentionParams& params, Tensor& out,
               int threads);

}  // namespace shardlm::cpu
