// Kernels over 16-bit (bf16 / f16) weights: conversion to f32 and the decode matrix-vector
// product. Decode at batch 1 streams every weight once per token, so it is bound by memory
// bandwidth; keeping the weights in 16 bits halves the bytes read, as long as the conversion
// happens in registers on the way to the FMA rather than in a separate pass.
//
// The build targets baseline x86-64, so the AVX2 and AVX-512 versions are compiled with target
// attributes and chosen at run time (explicit functions rather than target_clones, so that the
// tests can run each one on a CPU that would pick another).
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/cpu_ops.h"
#include "base/dtype.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define SHARDLM_X86_SIMD 1
#define SHARDLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
// Every AVX-512 CPU has the AVX2 set too; naming it lets the AVX-512 code reuse AVX2 helpers.
#define SHARDLM_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#else
#define SHARDLM_X86_SIMD 0
#endif

namespace shardlm::cpu {
namespace {

// Rows per pass over x: each row is an independent FMA chain (latency hidden) and one load of a
// slice of x feeds all of them. Four 16-bit rows of a 4096-wide layer are 32 KiB of streams,
// which the hardware prefetchers follow easily.
constexpr int64_t kRows = 4;

template <DType D>
inline float HalfToF32(uint16_t h) {
  if constexpr (D == DType::kBF16) {
    return Bf16ToF32(h);
  } else {
    return F16ToF32(h);
  }
}

// The signature shared by every row kernel: y[r] = dot(w row r, x) for r in [0, rows), rows <= 4,
// rows `ld` elements apart.
using RowsKernel = void (*)(const uint16_t* w, int64_t ld, int64_t rows, int64_t in, const float* x,
                            float* y);
using ConvertKernel = void (*)(const uint16_t* src, float* dst, int64_t n);

// ---- Scalar: the reference for the other paths and the fallback for older CPUs. ----

template <DType D>
void ConvertScalar(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToF32<D>(src[i]);
}

template <DType D>
void RowsScalar(const uint16_t* w, int64_t ld, int64_t rows, int64_t in, const float* x, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* row = w + r * ld;
    float acc = 0.0f;
    for (int64_t k = 0; k < in; ++k) acc += HalfToF32<D>(row[k]) * x[k];
    y[r] = acc;
  }
}

#if SHARDLM_X86_SIMD

// ---- AVX2 + FMA + F16C: 8 elements per vector. ----

template <DType D>
SHARDLM_TARGET_AVX2 inline __m256 Load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (D == DType::kBF16) {
    // bf16 is the high half of an f32: widen to 32 bits and shift into place.
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

SHARDLM_TARGET_AVX2 inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <DType D>
SHARDLM_TARGET_AVX2 void ConvertAvx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, Load8<D>(src + i));
  for (; i < n; ++i) dst[i] = HalfToF32<D>(src[i]);
}

template <DType D, int R>
SHARDLM_TARGET_AVX2 void DotAvx2(const uint16_t* w, int64_t ld, int64_t in, const float* x,
                                 float* y) {
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    const __m256 xv = _mm256_loadu_ps(x + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(Load8<D>(w + r * ld + k), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = HorizontalSum(acc[r]);
    for (int64_t t = k; t < in; ++t) s += HalfToF32<D>(w[r * ld + t]) * x[t];
    y[r] = s;
  }
}

template <DType D>
SHARDLM_TARGET_AVX2 void RowsAvx2(const uint16_t* w, int64_t ld, int64_t rows, int64_t in,
                                  const float* x, float* y) {
  if (rows == kRows) return DotAvx2<D, kRows>(w, ld, in, x, y);
  for (int64_t r = 0; r < rows; ++r) DotAvx2<D, 1>(w + r * ld, ld, in, x, y + r);
}

// ---- AVX-512F: 16 elements per vector. ----

// The all-lanes maskz forms compile to the plain instructions; the plain intrinsics start from
// _mm512_undefined_*, which GCC 12 reports as "may be used uninitialized" (GCC PR 105593).
constexpr __mmask16 kAll16 = 0xffff;

template <DType D>
SHARDLM_TARGET_AVX512 inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (D == DType::kBF16) {
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(kAll16, h);
    return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll16, wide, 16));
  } else {
    return _mm512_maskz_cvtph_ps(kAll16, h);
  }
}

SHARDLM_TARGET_AVX512 inline float HorizontalSum(__m512 v) {
  // Through memory: the 512 -> 256 bit casts, extracts and shuffles all hit the same warning,
  // and this runs once per row.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  return HorizontalSum(_mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8)));
}

template <DType D>
SHARDLM_TARGET_AVX512 void ConvertAvx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, Load16<D>(src + i));
  for (; i < n; ++i) dst[i] = HalfToF32<D>(src[i]);
}

template <DType D, int R>
SHARDLM_TARGET_AVX512 void DotAvx512(const uint16_t* w, int64_t ld, int64_t in, const float* x,
                                     float* y) {
  __m512 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= in; k += 16) {
    const __m512 xv = _mm512_loadu_ps(x + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(Load16<D>(w + r * ld + k), xv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    float s = HorizontalSum(acc[r]);
    for (int64_t t = k; t < in; ++t) s += HalfToF32<D>(w[r * ld + t]) * x[t];
    y[r] = s;
  }
}

template <DType D>
SHARDLM_TARGET_AVX512 void RowsAvx512(const uint16_t* w, int64_t ld, int64_t rows, int64_t in,
                                      const float* x, float* y) {
  if (rows == kRows) return DotAvx512<D, kRows>(w, ld, in, x, y);
  for (int64_t r = 0; r < rows; ++r) DotAvx512<D, 1>(w + r * ld, ld, in, x, y + r);
}

#endif  // SHARDLM_X86_SIMD

// Picks the instantiation for (dtype, simd); an unsupported simd falls back to scalar, so a
// caller can never run an instruction the CPU lacks.
template <template <DType> class Table>
auto Select(DType dtype, Simd simd) {
  if (!SimdSupported(simd)) simd = Simd::kScalar;
  return dtype == DType::kBF16 ? Table<DType::kBF16>::Get(simd) : Table<DType::kF16>::Get(simd);
}

template <DType D>
struct RowsTable {
  static RowsKernel Get(Simd simd) {
#if SHARDLM_X86_SIMD
    if (simd == Simd::kAvx512) return RowsAvx512<D>;
    if (simd == Simd::kAvx2) return RowsAvx2<D>;
#endif
    return RowsScalar<D>;
  }
};

template <DType D>
struct ConvertTable {
  static ConvertKernel Get(Simd simd) {
#if SHARDLM_X86_SIMD
    if (simd == Simd::kAvx512) return ConvertAvx512<D>;
    if (simd == Simd::kAvx2) return ConvertAvx2<D>;
#endif
    return ConvertScalar<D>;
  }
};

Simd DetectSimd() {
#if SHARDLM_X86_SIMD
  __builtin_cpu_init();
  // libgcc's checks include the OS enabling the wider register state (XGETBV).
  // F16C straight from CPUID: clang's __builtin_cpu_supports does not know the name. It needs no
  // OS support beyond the AVX state that the avx2 check covers.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  if (avx2 && __builtin_cpu_supports("avx512f")) return Simd::kAvx512;
  if (avx2) return Simd::kAvx2;
#endif
  return Simd::kScalar;
}

}  // namespace

const char* SimdName(Simd simd) {
  switch (simd) {
    case Simd::kScalar: return "scalar";
    case Simd::kAvx2: return "avx2";
    case Simd::kAvx512: return "avx512";
  }
  return "?";
}

bool SimdSupported(Simd simd) { return static_cast<int>(simd) <= static_cast<int>(BestSimd()); }

Simd BestSimd() {
  static const Simd best = DetectSimd();
  return best;
}

void ConvertHalf(DType dtype, const uint16_t* src, float* dst, int64_t n, Simd simd) {
  Select<ConvertTable>(dtype, simd)(src, dst, n);
}

void GemvHalf(DType dtype, const uint16_t* w, int64_t out, int64_t in, const float* x, float* y,
              int threads, Simd simd) {
  const RowsKernel kernel = Select<RowsTable>(dtype, simd);
  const int64_t groups = (out + kRows - 1) / kRows;
  // Static contiguous ranges: each thread streams one long run of w.
#pragma omp parallel for num_threads(threads) schedule(static) \
    if (threads > 1 && groups > 1 && out * in >= kMinParallelWork)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r = g * kRows;
    kernel(w + r * in, in, std::min(kRows, out - r), in, x, y + r);
  }
}

}  // namespace shardlm::cpu
