// The AVX2 + FMA + F16C kernels: 8 floats per vector. See kernels_simd.inc.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant/quant_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace shardlm::quant::internal {
namespace {

struct S {
  using V = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  static V Zero() { return _mm256_setzero_ps(); }
  static V Set1(float f) { return _mm256_set1_ps(f); }
  static V Load(const float* p) { return _mm256_loadu_ps(p); }
  static void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V AddLow8(__m256 v8, V acc) { return _mm256_add_ps(v8, acc); }
  static float Sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // out[i] = the sum of the lanes of v[i], for i < 8: a transposing tree of adds.
  static void Sums(const V* v, float* out) {
    V u[4];
    for (int i = 0; i < 4; ++i) {
      // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] of a = v[2i], b = v[2i + 1].
      u[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                           _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    V w[2];
    for (int i = 0; i < 2; ++i) {
      // Per 128-bit lane: the lane's sums of v[4i .. 4i + 3].
      w[i] = _mm256_add_ps(_mm256_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                           _mm256_shuffle_ps(u[2 * i], u[2 * i + 1], 0xee));
    }
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(w[0], w[1], 0x20),
                                        _mm256_permute2f128_ps(w[0], w[1], 0x31)));
  }
  static I U8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static I I8(const uint8_t* p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static I LoadI(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static I And(I a, I b) { return _mm256_and_si256(a, b); }
  static I Or(I a, I b) { return _mm256_or_si256(a, b); }
  static I Set1I(int v) { return _mm256_set1_epi32(v); }
  template <int N>
  static I Shl(I v) { return _mm256_slli_epi32(v, N); }
  template <int N>
  static I Shr(I v) { return _mm256_srli_epi32(v, N); }
  static I Srlv(I v, I n) { return _mm256_srlv_epi32(v, n); }
  static V Cvt(I v) { return _mm256_cvtepi32_ps(v); }
};

}  // namespace

#include "kernels/cpu/quant/kernels_simd.inc"

}  // namespace shardlm::quant::internal

#pragma GCC pop_options

namespace shardlm::quant::internal {
const Kernels* Avx2Kernels() { return &kSimdKernels; }
}  // namespace shardlm::quant::internal

#else

namespace shardlm::quant::internal {
const Kernels* Avx2Kernels() { return nullptr; }
}  // namespace shardlm::quant::internal

#endif
