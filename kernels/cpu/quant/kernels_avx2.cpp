// The AVX2 + FMA + F16C kernels: 8 floats per vector. See kernels_simd.inc.
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
  static I U8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static I I8(const uint8_t* p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static I And(I a, I b) { return _mm256_and_si256(a, b); }
  static I Or(I a, I b) { return _mm256_or_si256(a, b); }
  static I Set1I(int v) { return _mm256_set1_epi32(v); }
  template <int N>
  static I Shl(I v) { return _mm256_slli_epi32(v, N); }
  template <int N>
  static I Shr(I v) { return _mm256_srli_epi32(v, N); }
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
