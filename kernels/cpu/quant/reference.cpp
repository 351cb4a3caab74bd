// The scalar kernels: the matrix-vector and small-batch fallbacks built on the reference block
// decoders of kernels/quant/codec.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/quant/quant.h"
#include "kernels/quant/codec.h"
#include "kernels/cpu/quant/quant_internal.h"
#include "base/dtype.h"

namespace shardlm::quant::internal {
namespace {

using BlockFn = void (*)(const uint8_t*, float*);
template <BlockFn F, int kBytes, int kElems>
void DequantBlocks(const uint8_t* src, float* dst, int64_t blocks) {
  for (int64_t i = 0; i < blocks; ++i) F(src + i * kBytes, dst + i * kElems);
}

// The scalar matrix-vector fallback: each block dequantized into a small buffer, then a dot.
template <BlockFn F, int kBytes, int kElems>
void RowsScalar(const uint8_t* w, size_t ld, int rows, int64_t blocks, const float* x,
                const XSums& /*xs*/, float* y) {
  float buf[kElems];
  for (int r = 0; r < rows; ++r) {
    const uint8_t* row = w + static_cast<size_t>(r) * ld;
    float acc = 0.0f;
    for (int64_t i = 0; i < blocks; ++i) {
      F(row + i * kBytes, buf);
      const float* xb = x + i * kElems;
      float part = 0.0f;
      for (int e = 0; e < kElems; ++e) part += buf[e] * xb[e];
      acc += part;
    }
    y[r] = acc;
  }
}

// The small-batch product, block by block: each block dequantized once, then dotted with the
// matching elements of every activation row (a per-block partial sum, as RowsScalar).
template <BlockFn F, int kBytes, int kElems>
void BatchScalar(const uint8_t* w, size_t ld, int64_t rows, int64_t blocks, const float* x,
                 int64_t ldx, int n, float* y, int64_t ldy) {
  float buf[kElems];
  float acc[kMaxSmallBatch];
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w + static_cast<size_t>(r) * ld;
    std::fill(acc, acc + n, 0.0f);
    for (int64_t i = 0; i < blocks; ++i) {
      F(row + i * kBytes, buf);
      for (int j = 0; j < n; ++j) {
        const float* xb = x + j * ldx + i * kElems;
        float part = 0.0f;
        for (int e = 0; e < kElems; ++e) part += buf[e] * xb[e];
        acc[j] += part;
      }
    }
    for (int j = 0; j < n; ++j) y[j * ldy + r] = acc[j];
  }
}

constexpr Kernels kScalar = {
    {RowsScalar<DequantQ8_0, kQ8_0Bytes, 32>, RowsScalar<DequantQ4_0, kQ4_0Bytes, 32>,
     RowsScalar<DequantQ4_1, kQ4_1Bytes, 32>, RowsScalar<DequantQ5_0, kQ5_0Bytes, 32>,
     RowsScalar<DequantQ5_1, kQ5_1Bytes, 32>, RowsScalar<DequantQ4_K, kQ4_KBytes, 256>,
     RowsScalar<DequantQ5_K, kQ5_KBytes, 256>, RowsScalar<DequantQ6_K, kQ6_KBytes, 256>},
    {DequantBlocks<DequantQ8_0, kQ8_0Bytes, 32>, DequantBlocks<DequantQ4_0, kQ4_0Bytes, 32>,
     DequantBlocks<DequantQ4_1, kQ4_1Bytes, 32>, DequantBlocks<DequantQ5_0, kQ5_0Bytes, 32>,
     DequantBlocks<DequantQ5_1, kQ5_1Bytes, 32>, DequantBlocks<DequantQ4_K, kQ4_KBytes, 256>,
     DequantBlocks<DequantQ5_K, kQ5_KBytes, 256>, DequantBlocks<DequantQ6_K, kQ6_KBytes, 256>},
    {BatchScalar<DequantQ8_0, kQ8_0Bytes, 32>, BatchScalar<DequantQ4_0, kQ4_0Bytes, 32>,
     BatchScalar<DequantQ4_1, kQ4_1Bytes, 32>, BatchScalar<DequantQ5_0, kQ5_0Bytes, 32>,
     BatchScalar<DequantQ5_1, kQ5_1Bytes, 32>, BatchScalar<DequantQ4_K, kQ4_KBytes, 256>,
     BatchScalar<DequantQ5_K, kQ5_KBytes, 256>, BatchScalar<DequantQ6_K, kQ6_KBytes, 256>},
    1,
};

}  // namespace

const Kernels* ScalarKernels() { return &kScalar; }

const float* HalfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t h = 0; h < 65536; ++h) t[h] = F16ToF32(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

}  // namespace shardlm::quant::internal
