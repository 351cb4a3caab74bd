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
#include "base/tensor.h"

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

// The instruction sets that the kernels over 16-bit (bf16 / f16) weights have code for. The build
// targets baseline x86-64, so the wide ones are chosen at run time; every op picks BestSimd(), and
// the tests pass each supported one explicitly to compare it with kScalar.
enum class Simd : uint8_t {
  kScalar,
  kAvx2,    // AVX2 + FMA + F16C
  kAvx512,  // AVX-512F (+ the AVX2 set)
};
const char* SimdName(Simd simd);
bool SimdSupported(Simd simd);  // by this CPU and OS
Simd BestSimd();                // the widest supported, detected once

// dst[0, n) = src[0, n) converted to f32; `dtype` is kBF16 or kF16. Exact, as ConvertToF32.
void ConvertHalf(DType dtype, const uint16_t* src, float* dst, int64_t n, Simd simd);
// y[o] = dot(w row o, x) for the rows of w [out, in] (bf16 or f16, row-major), converting w on
// the fly: the decode matrix-vector product. Rows are split across `threads`.
void GemvHalf(DType dtype, const uint16_t* w, int64_t out, int64_t in, const float* x, float* y,
              int threads, Simd simd);

// w and table may be f32 or 2-D bf16 / f16, as PrepareWeight keeps them; `simd` is for tests.
void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, int threads,
            Simd simd = BestSimd());
void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y, int threads);
// inv_freq: the rotary_dim / 2 inverse frequencies of the RopeConfig; cos and sin are scaled
// by `attention_factor` (RopeConfig::attention_factor).
void Rope(Tensor& x, std::span<const int32_t> positions, std::span<const float> inv_freq,
          bool interleaved, float attention_factor, int threads);
// q = Q of qkv rotated; K rotated and V into the caches at `rows` (Backend::RopeWriteKv).
void RopeWriteKv(const Tensor& qkv, std::span<const int32_t> positions,
                 std::span<const float> inv_freq, bool interleaved, float attention_factor,
                 std::span<const int32_t> rows,
                 Tensor& k_cache, Tensor& v_cache, Tensor& q, int threads);
void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y, int threads,
               Simd simd = BestSimd());
void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y, int threads);
void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y, int threads);
void Add(Tensor& x, const Tensor& y, int threads);
void Scale(Tensor& x, float s, int threads);
void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w, const Tensor& k_w,
                 float eps, int threads);
void Argmax(const Tensor& logits, std::span<int32_t> out, std::span<float> values, int threads);
// std::out_of_range naming `op` unless every row is in [0, max_seq).
void CheckCacheRows(std::string_view op, std::span<const int32_t> rows, int64_t max_seq);
void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> positions, Tensor& k_cache,
             Tensor& v_cache);
void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                    const PagedKvLayout& layout, const AttentionParams& params, Tensor& out,
                    int threads);

}  // namespace shardlm::cpu
