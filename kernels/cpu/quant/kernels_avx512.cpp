// The AVX-512F kernels: 16 floats per vector. See kernels_simd.inc.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant/quant_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

#pragma GCC push_options
// Every AVX-512 CPU has the AVX2 set too; the 8-lane scale vectors of the K formats use it.
#pragma GCC target("avx512f,avx2,fma,f16c")

namespace shardlm::quant::internal {
namespace {

// The all-lanes maskz forms compile to the plain instructions; the plain intrinsics start from
// _mm512_undefined_*, which GCC 12 reports as "may be used uninitialized" (GCC PR 105593).
constexpr __mmask16 kAll = 0xffff;

struct S {
  using V = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  static V Zero() { return _mm512_setzero_ps(); }
  static V Set1(float f) { return _mm512_set1_ps(f); }
  static V Load(const float* p) { return _mm512_loadu_ps(p); }
  static void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
  static V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // Lanes 8..15 of the cast are undefined and are left out by the mask.
  static V AddLow8(__m256 v8, V acc) {
    return _mm512_mask_add_ps(acc, 0x00ff, acc, _mm512_castps256_ps512(v8));
  }
  static float Sum(V v) {
    // Through memory: the 512 -> 256 bit extracts hit the warning above; this runs once per row.
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, v);
    const __m256 h = _mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // out[i] = the sum of the lanes of v[i], for i < 16: a transposing tree of adds.
  static void Sums(const V* v, float* out) {
    V u[8];
    for (int i = 0; i < 8; ++i) {
      // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] of a = v[2i], b = v[2i + 1].
      u[i] = _mm512_add_ps(_mm512_maskz_unpacklo_ps(kAll, v[2 * i], v[2 * i + 1]),
                           _mm512_maskz_unpackhi_ps(kAll, v[2 * i], v[2 * i + 1]));
    }
    V w[4];
    for (int i = 0; i < 4; ++i) {
      // Per 128-bit lane: the lane's sums of v[4i .. 4i + 3].
      w[i] = _mm512_add_ps(_mm512_maskz_shuffle_ps(kAll, u[2 * i], u[2 * i + 1], 0x44),
                           _mm512_maskz_shuffle_ps(kAll, u[2 * i], u[2 * i + 1], 0xee));
    }
    // Lanes [w0.0 + w0.1, w0.2 + w0.3, w1.0 + w1.1, w1.2 + w1.3] (128-bit lanes), and for w2, w3.
    V x[2];
    for (int i = 0; i < 2; ++i) {
      x[i] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, w[2 * i], w[2 * i + 1], 0x88),
                           _mm512_maskz_shuffle_f32x4(kAll, w[2 * i], w[2 * i + 1], 0xdd));
    }
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_maskz_shuffle_f32x4(kAll, x[0], x[1], 0x88),
                                        _mm512_maskz_shuffle_f32x4(kAll, x[0], x[1], 0xdd)));
  }
  static I U8(const uint8_t* p) {
    return _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static I I8(const uint8_t* p) {
    return _mm512_maskz_cvtepi8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static I LoadI(const int32_t* p) { return _mm512_maskz_loadu_epi32(kAll, p); }
  static I And(I a, I b) { return _mm512_and_si512(a, b); }
  static I Or(I a, I b) { return _mm512_or_si512(a, b); }
  static I Set1I(int v) { return _mm512_set1_epi32(v); }
  template <int N>
  static I Shl(I v) { return _mm512_maskz_slli_epi32(kAll, v, N); }
  template <int N>
  static I Shr(I v) { return _mm512_maskz_srli_epi32(kAll, v, N); }
  static I Srlv(I v, I n) { return _mm512_maskz_srlv_epi32(kAll, v, n); }
  static V Cvt(I v) { return _mm512_maskz_cvtepi32_ps(kAll, v); }
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
