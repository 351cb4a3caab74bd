// The AVX-512F kernels: 16 floats per vector. See kernels_simd.inc.
#include <cstdint>

#include "kernels/cpu/quant/quant_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
// Every AVX-512 CPU has the AVX2 set too; the byte shuffling stays in 128-bit registers.
#pragma GCC target("avx512f,avx2,fma,f16c")

namespace shardlm::quant::internal {
namespace {

// The all-lanes maskz forms compile to the plain instructions; the plain intrinsics start from
// _mm512_undefined_*, which GCC 12 reports as "may be used uninitialized" (GCC PR 105593).
constexpr __mmask16 kAll = 0xffff;

struct S {
  using V = __m512;
  static constexpr int W = 16;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float f) { return _mm512_set1_ps(f); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float Sum(V v) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, v);
    __m256 h = _mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static __m128i Bytes(const uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  static V U8(__m128i b) {
    return _mm512_maskz_cvtepi32_ps(kAll, _mm512_maskz_cvtepu8_epi32(kAll, b));
  }
  static V I8(__m128i b) {
    return _mm512_maskz_cvtepi32_ps(kAll, _mm512_maskz_cvtepi8_epi32(kAll, b));
  }
  static float Half(const uint8_t* p) { return _cvtsh_ss(LoadU16(p)); }
};

}  // namespace

#include "kernels/cpu/quant/kernels_simd.inc"

}  // namespace shardlm::quant::internal

#pragma GCC pop_options

namespace shardlm::quant::internal {
const Kernels* Avx512Kernels() { return &kSimdKernels; }
}  // namespace shardlm::quant::internal

#else

namespace shardlm::quant::internal {
const Kernels* Avx512Kernels() { return nullptr; }
}  // namespace shardlm::quant::internal

#endif
