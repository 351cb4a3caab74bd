// Tests of the quantized kernels (kernels/cpu/quant): dequantization of hand-built blocks against
// values worked out here from the block definitions, every SIMD path against the scalar
// reference, the matrix-vector and prefill products against double-precision references over
// the dequantized weights, and quantize / dequantize round trips.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quant/quant.h"
#include "kernels/cpu/quant/quant_internal.h"
#include "base/dtype.h"

namespace shardlm::quant {
namespace {

constexpr DType kTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                            DType::kQ5_1, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
constexpr Isa kIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512};

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> out;
  for (Isa isa : kIsas) {
    if (IsaSupported(isa)) out.push_back(isa);
  }
  return out;
}

void PutHalf(uint8_t* p, float f) {
  const uint16_t h = F32ToF16(f);
  ASSERT_EQ(F16ToF32(h), f) << "test value must be exact in f16";
  std::memcpy(p, &h, 2);
}

std::vector<float> Dequant(DType t, const std::vector<uint8_t>& bytes, Isa isa) {
  const int64_t n = static_cast<int64_t>(bytes.size() / DTypeBlockBytes(t)) * DTypeBlockElements(t);
  std::vector<float> out(static_cast<size_t>(n), -12345.0f);
  DequantizeRow(t, bytes.data(), out.data(), n, isa);
  return out;
}

// Every supported path must give exactly `want` (hand-built blocks use values that are exact in
// f32 under any order of rounding).
void ExpectAllPathsExact(DType t, const std::vector<uint8_t>& bytes,
                         const std::vector<float>& want) {
  ASSERT_EQ(bytes.size(), DTypeBlockBytes(t) * (want.size() / DTypeBlockElements(t)));
  for (Isa isa : SupportedIsas()) {
    const std::vector<float> got = Dequant(t, bytes, isa);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i], want[i]) << DTypeName(t) << " " << IsaName(isa) << " element " << i;
    }
  }
}

TEST(QuantTest, IsaDetectionAndForcedPaths) {
  EXPECT_TRUE(IsaSupported(Isa::kScalar));
  EXPECT_TRUE(IsaSupported(BestIsa()));
  EXPECT_EQ(&internal::KernelsFor(Isa::kScalar), internal::ScalarKernels());
  // A forced ISA must really run its own table, not fall back silently.
  if (IsaSupported(Isa::kAvx2)) {
    EXPECT_EQ(&internal::KernelsFor(Isa::kAvx2), internal::Avx2Kernels());
  }
  if (IsaSupported(Isa::kAvx512)) {
    EXPECT_EQ(&internal::KernelsFor(Isa::kAvx512), internal::Avx512Kernels());
  }
  std::string paths;
  for (Isa isa : SupportedIsas()) paths += std::string(IsaName(isa)) + " ";
  RecordProperty("isas", paths);
  std::printf("[ INFO     ] testing ISA paths: %s\n", paths.c_str());
  for (DType t : kTypes) EXPECT_TRUE(IsQuantType(t)) << DTypeName(t);
  EXPECT_FALSE(IsQuantType(DType::kF32));
  EXPECT_FALSE(IsQuantType(DType::kBF16));
}

TEST(QuantTest, BlockSizesMatchDType) {
  EXPECT_EQ(DTypeBlockBytes(DType::kQ8_0), 34u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ4_0), 18u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ4_1), 20u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ5_0), 22u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ5_1), 24u);
  EXPECT_EQ(DTypeBlockElements(DType::kQ5_0), 32);
  EXPECT_EQ(DTypeBlockElements(DType::kQ5_1), 32);
  EXPECT_STREQ(DTypeName(DType::kQ5_0), "Q5_0");
  EXPECT_STREQ(DTypeName(DType::kQ5_1), "Q5_1");
  EXPECT_EQ(DTypeBlockBytes(DType::kQ4_K), 144u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ5_K), 176u);
  EXPECT_EQ(DTypeBlockBytes(DType::kQ6_K), 210u);
}

TEST(QuantTest, RejectsBadArguments) {
  std::vector<uint8_t> w(1024);
  std::vector<float> f(1024);
  EXPECT_THROW(DequantizeRow(DType::kQ4_0, w.data(), f.data(), 33), std::invalid_argument);
  EXPECT_THROW(DequantizeRow(DType::kQ4_K, w.data(), f.data(), 32), std::invalid_argument);
  EXPECT_THROW(DequantizeRow(DType::kF32, w.data(), f.data(), 32), std::invalid_argument);
  EXPECT_THROW(QuantizeRow(DType::kQ6_K, f.data(), w.data(), 128), std::invalid_argument);
  EXPECT_THROW(QuantGemv(DType::kBF16, w.data(), 2, 32, f.data(), f.data()), std::invalid_argument);
  EXPECT_THROW(QuantMatmul(DType::kQ8_0, w.data(), 4, 32, f.data(), 2, f.data(), 3),
               std::invalid_argument);  // ldy < rows
}

// ---- Hand-built blocks. ----

TEST(QuantTest, Q8_0KnownBlock) {
  std::vector<uint8_t> b(34);
  PutHalf(b.data(), 0.25f);
  std::vector<float> want(32);
  for (int i = 0; i < 32; ++i) {
    const int q = 8 * i - 128;  // -128 .. 120: the full signed range
    b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    want[i] = 0.25f * static_cast<float>(q);
  }
  ExpectAllPathsExact(DType::kQ8_0, b, want);
}

TEST(QuantTest, Q4_0KnownBlock) {
  std::vector<uint8_t> b(18);
  PutHalf(b.data(), -2.0f);
  std::vector<float> want(32);
  for (int i = 0; i < 16; ++i) {
    b[2 + i] = static_cast<uint8_t>(i | ((15 - i) << 4));
    want[i] = -2.0f * static_cast<float>(i - 8);              // low nibbles: elements 0..15
    want[16 + i] = -2.0f * static_cast<float>((15 - i) - 8);  // high nibbles: 16..31
  }
  ExpectAllPathsExact(DType::kQ4_0, b, want);
}

TEST(QuantTest, Q4_1KnownBlock) {
  std::vector<uint8_t> b(20);
  PutHalf(b.data(), 0.5f);
  PutHalf(b.data() + 2, -1.0f);
  for (int i = 0; i < 16; ++i) b[4 + i] = static_cast<uint8_t>(i | ((15 - i) << 4));
  const std::vector<float> want = {
      -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f,  // nibbles 0..15
      4.5f, 5.0f, 5.5f, 6.0f, 6.5f,
      6.5f, 6.0f, 5.5f, 5.0f, 4.5f, 4.0f, 3.5f, 3.0f, 2.5f, 2.0f, 1.5f,  // nibbles 15..0
      1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
  ExpectAllPathsExact(DType::kQ4_1, b, want);
}

// Q5_0 / Q5_1: qh = 0x8000A001 sets the fifth bit of elements 0, 13, 15 and 31 (bit e of the
// little-endian u32, elements 16..31 in its upper half); the nibbles are those of the Q4 blocks.
constexpr uint8_t kQh[4] = {0x01, 0xA0, 0x00, 0x80};
int Q5Of(int e) {
  const int nibble = e < 16 ? e : 15 - (e - 16);
  return nibble + ((0x8000A001u >> e) & 1u) * 16;
}

TEST(QuantTest, Q5_0KnownBlock) {
  std::vector<uint8_t> b(22);
  PutHalf(b.data(), -2.0f);
  std::memcpy(b.data() + 2, kQh, 4);
  for (int i = 0; i < 16; ++i) b[6 + i] = static_cast<uint8_t>(i | ((15 - i) << 4));
  std::vector<float> want(32);
  for (int e = 0; e < 32; ++e) want[e] = -2.0f * static_cast<float>(Q5Of(e) - 16);
  // Element 15 is q 31 (nibble 15 plus the fifth bit), 16 is q 15 (nibble 15 alone), 0 and 31
  // are q 16 (nibble 0 plus the fifth bit).
  EXPECT_EQ(want[15], -30.0f);
  EXPECT_EQ(want[16], 2.0f);
  EXPECT_EQ(want[0], 0.0f);
  EXPECT_EQ(want[31], 0.0f);
  ExpectAllPathsExact(DType::kQ5_0, b, want);
}

TEST(QuantTest, Q5_1KnownBlock) {
  std::vector<uint8_t> b(24);
  PutHalf(b.data(), 0.5f);
  PutHalf(b.data() + 2, -1.0f);
  std::memcpy(b.data() + 4, kQh, 4);
  for (int i = 0; i < 16; ++i) b[8 + i] = static_cast<uint8_t>(i | ((15 - i) << 4));
  std::vector<float> want(32);
  for (int e = 0; e < 32; ++e) want[e] = 0.5f * static_cast<float>(Q5Of(e)) - 1.0f;
  EXPECT_EQ(want[13], 0.5f * 29 - 1.0f);  // nibble 13 + 16
  EXPECT_EQ(want[31], 0.5f * 16 - 1.0f);  // nibble 0 + 16
  EXPECT_EQ(want[30], 0.5f * 1 - 1.0f);   // nibble 1, no fifth bit
  ExpectAllPathsExact(DType::kQ5_1, b, want);
}

// Every single fifth bit on its own lands on its element only, on every path.
TEST(QuantTest, Q5EachHighBitSelectsOneElement) {
  for (DType t : {DType::kQ5_0, DType::kQ5_1}) {
    const int qh_at = t == DType::kQ5_0 ? 2 : 4;
    for (int bit = 0; bit < 32; ++bit) {
      std::vector<uint8_t> b(DTypeBlockBytes(t), 0);
      PutHalf(b.data(), 1.0f);
      if (t == DType::kQ5_1) PutHalf(b.data() + 2, 0.0f);
      const uint32_t qh = 1u << bit;
      std::memcpy(b.data() + qh_at, &qh, 4);
      std::vector<float> want(32, t == DType::kQ5_0 ? -16.0f : 0.0f);
      want[bit] += 16.0f;
      ExpectAllPathsExact(t, b, want);
    }
  }
}

// Scales and mins of the K blocks below: those of sub-blocks 4..7 use their top two bits, which
// differ between scales and mins so that swapping them shows.
constexpr int kSc[8] = {1, 2, 3, 63, 17, 33, 48, 5};
constexpr int kMn[8] = {0, 7, 63, 1, 40, 20, 9, 60};
// Their packing, worked out by hand:
//   bytes 0..3:  sc[j] | (sc[j+4] >> 4) << 6  = 0x41 0x82 0xC3 0x3F
//   bytes 4..7:  mn[j] | (mn[j+4] >> 4) << 6  = 0x80 0x47 0x3F 0xC1
//   bytes 8..11: (sc[j+4] & 15) | (mn[j+4] & 15) << 4 = 0x81 0x41 0x90 0xC5
constexpr uint8_t kPackedScales[12] = {0x41, 0x82, 0xC3, 0x3F, 0x80, 0x47,
                                       0x3F, 0xC1, 0x81, 0x41, 0x90, 0xC5};

TEST(QuantTest, KScalePackingRoundTrips) {
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    internal::KScaleMin(kPackedScales, j, sc, mn);
    EXPECT_EQ(sc, kSc[j]) << j;
    EXPECT_EQ(mn, kMn[j]) << j;
  }
  uint8_t packed[12];
  internal::KPackScaleMin(kSc, kMn, packed);
  EXPECT_EQ(std::vector<uint8_t>(packed, packed + 12),
            std::vector<uint8_t>(kPackedScales, kPackedScales + 12));
  std::mt19937 rng(5);
  for (int trial = 0; trial < 100; ++trial) {
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = static_cast<int>(rng() % 64);
      mn[j] = static_cast<int>(rng() % 64);
    }
    internal::KPackScaleMin(sc, mn, packed);
    for (int j = 0; j < 8; ++j) {
      int s, m;
      internal::KScaleMin(packed, j, s, m);
      ASSERT_EQ(s, sc[j]);
      ASSERT_EQ(m, mn[j]);
    }
  }
}

// The nibble of qs byte 32c + l used below: low and high nibbles differ per chunk.
uint8_t KQsByte(int c, int l) { return static_cast<uint8_t>((l % 16) | (((l + 5 * c) % 16) << 4)); }

TEST(QuantTest, Q4_KKnownBlock) {
  std::vector<uint8_t> b(144);
  PutHalf(b.data(), 0.5f);
  PutHalf(b.data() + 2, 0.25f);
  std::memcpy(b.data() + 4, kPackedScales, 12);
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) b[16 + 32 * c + l] = KQsByte(c, l);
  }
  // Chunk c of 64 elements: first the 32 low nibbles (sub-block 2c), then the 32 high nibbles
  // (sub-block 2c + 1) of qs[32c .. 32c + 31].
  std::vector<float> want;
  for (int c = 0; c < 4; ++c) {
    for (int half = 0; half < 2; ++half) {
      const int j = 2 * c + half;
      for (int l = 0; l < 32; ++l) {
        const int q = half == 0 ? KQsByte(c, l) & 15 : KQsByte(c, l) >> 4;
        want.push_back(0.5f * kSc[j] * q - 0.25f * kMn[j]);
      }
    }
  }
  ExpectAllPathsExact(DType::kQ4_K, b, want);
}

TEST(QuantTest, Q5_KKnownBlock) {
  std::vector<uint8_t> b(176);
  PutHalf(b.data(), -0.5f);  // a negative super-scale is representable too
  PutHalf(b.data() + 2, 0.125f);
  std::memcpy(b.data() + 4, kPackedScales, 12);
  for (int l = 0; l < 32; ++l) b[16 + l] = static_cast<uint8_t>(l * 37 + 11);  // qh
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) b[48 + 32 * c + l] = KQsByte(c, l);
  }
  // As Q4_K, plus 16 where bit j (the sub-block) of qh[l] is set.
  std::vector<float> want;
  for (int c = 0; c < 4; ++c) {
    for (int half = 0; half < 2; ++half) {
      const int j = 2 * c + half;
      for (int l = 0; l < 32; ++l) {
        int q = half == 0 ? KQsByte(c, l) & 15 : KQsByte(c, l) >> 4;
        if ((static_cast<uint8_t>(l * 37 + 11) >> j) & 1) q += 16;
        want.push_back(-0.5f * kSc[j] * q - 0.125f * kMn[j]);
      }
    }
  }
  ExpectAllPathsExact(DType::kQ5_K, b, want);
}

TEST(QuantTest, Q6_KKnownBlock) {
  const int8_t scales[16] = {-128, -1, 1, 127, -64, 5, 0, -7, 9, -3, 100, -100, 2, 33, -33, 64};
  std::vector<uint8_t> b(210);
  for (int i = 0; i < 128; ++i) b[i] = static_cast<uint8_t>(i * 29 + 3);       // ql
  for (int i = 0; i < 64; ++i) b[128 + i] = static_cast<uint8_t>(i * 53 + 7);  // qh
  std::memcpy(b.data() + 192, scales, 16);
  PutHalf(b.data() + 208, 0.125f);
  std::vector<float> want(256);
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b.data() + 64 * h;
    const uint8_t* qh = b.data() + 128 + 32 * h;
    for (int l = 0; l < 32; ++l) {
      const int q[4] = {
          ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32,
          ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32,
          ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32,
          ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32,
      };
      for (int k = 0; k < 4; ++k) {
        const int e = 128 * h + 32 * k + l;
        want[e] = 0.125f * scales[e / 16] * q[k];
      }
    }
  }
  // The pattern reaches both ends of the 6-bit range.
  EXPECT_EQ(*std::min_element(want.begin(), want.end()), 0.125f * -128 * 31);
  ExpectAllPathsExact(DType::kQ6_K, b, want);
}

// ---- Random blocks: every SIMD path against the scalar reference. ----

// `blocks` blocks of random bytes with finite random f16 scales.
std::vector<uint8_t> RandomBlocks(DType t, int64_t blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> scale(-2.0f, 2.0f);
  const size_t bytes = DTypeBlockBytes(t);
  std::vector<uint8_t> out(bytes * static_cast<size_t>(blocks));
  for (uint8_t& v : out) v = static_cast<uint8_t>(rng());
  auto put = [&](uint8_t* p) {
    const uint16_t h = F32ToF16(scale(rng));
    std::memcpy(p, &h, 2);
  };
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* b = out.data() + i * bytes;
    switch (t) {
      case DType::kQ8_0:
      case DType::kQ4_0: put(b); break;
      case DType::kQ5_0: put(b); break;
      case DType::kQ4_1:
      case DType::kQ5_1:
      case DType::kQ4_K:
      case DType::kQ5_K:
        put(b);
        put(b + 2);
        break;
      case DType::kQ6_K: put(b + 208); break;
      default: break;
    }
  }
  return out;
}

TEST(QuantTest, SimdDequantMatchesScalarOnRandomBlocks) {
  for (DType t : kTypes) {
    const int64_t blocks = DTypeBlockElements(t) == 32 ? 96 : 12;
    const std::vector<uint8_t> w = RandomBlocks(t, blocks, 17 + static_cast<uint32_t>(t));
    const std::vector<float> ref = Dequant(t, w, Isa::kScalar);
    float amax = 0.0f;
    for (float v : ref) amax = std::max(amax, std::fabs(v));
    for (Isa isa : SupportedIsas()) {
      const std::vector<float> got = Dequant(t, w, isa);
      for (size_t i = 0; i < ref.size(); ++i) {
        // Fused multiply-adds round once where the reference rounds twice.
        ASSERT_NEAR(got[i], ref[i], 1e-5 * std::fabs(ref[i]) + 1e-7 * amax)
            << DTypeName(t) << " " << IsaName(isa) << " element " << i;
      }
    }
  }
}

// ---- Products against double references over the reference-dequantized weights. ----

struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> dequant;  // by the scalar reference
};

Matrix RandomMatrix(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> f(static_cast<size_t>(rows * cols));
  for (float& v : f) v = dist(rng);
  Matrix m;
  m.bytes.resize(DTypeBytes(t, rows * cols));
  QuantizeRow(t, f.data(), m.bytes.data(), rows * cols);
  m.dequant.resize(f.size());
  DequantizeRow(t, m.bytes.data(), m.dequant.data(), rows * cols, Isa::kScalar);
  return m;
}

std::vector<float> RandomVector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// The double-precision products of rows of w with x, and the sums |w_i x_i| that bound the f32
// accumulation error.
struct Reference {
  std::vector<double> dot, mag;
};
Reference RowDots(const std::vector<float>& w, int64_t rows, int64_t cols, const float* x) {
  Reference ref;
  ref.dot.resize(static_cast<size_t>(rows));
  ref.mag.resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0.0, mag = 0.0;
    for (int64_t i = 0; i < cols; ++i) {
      const double p = static_cast<double>(w[static_cast<size_t>(r * cols + i)]) * x[i];
      dot += p;
      mag += std::fabs(p);
    }
    ref.dot[static_cast<size_t>(r)] = dot;
    ref.mag[static_cast<size_t>(r)] = mag;
  }
  return ref;
}

// |got - dot| <= rtol * sum |w_i x_i|.
::testing::AssertionResult DotClose(float got, const Reference& ref, int64_t r, double rtol) {
  const double dot = ref.dot[static_cast<size_t>(r)], mag = ref.mag[static_cast<size_t>(r)];
  if (std::fabs(got - dot) <= rtol * mag + 1e-30) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << ", want " << dot << " (sum |w x| "
                                       << mag << ")";
}

std::vector<int64_t> ColsFor(DType t) {
  if (DTypeBlockElements(t) == 256) return {256, 1536};
  return {32, 256, 576, 1536};
}

constexpr int64_t kOddRows = 9 * 64 + 3;

TEST(QuantTest, GemvMatchesDoubleReference) {
  for (DType t : kTypes) {
    for (int64_t cols : ColsFor(t)) {
      const Matrix m = RandomMatrix(t, kOddRows, cols, 100 + static_cast<uint32_t>(cols));
      const std::vector<float> x = RandomVector(static_cast<size_t>(cols), 7);
      const Reference ref = RowDots(m.dequant, kOddRows, cols, x.data());
      for (Isa isa : SupportedIsas()) {
        for (int threads : {1, 2}) {
          std::vector<float> y(kOddRows + 1, -777.0f);
          QuantGemv(t, m.bytes.data(), kOddRows, cols, x.data(), y.data(), threads, isa);
          for (int64_t r = 0; r < kOddRows; ++r) {
            ASSERT_TRUE(DotClose(y[r], ref, r, 2e-5))
                << DTypeName(t) << " " << IsaName(isa) << " threads " << threads << " cols "
                << cols << " row " << r;
          }
          EXPECT_EQ(y[kOddRows], -777.0f) << "wrote past the end";
        }
      }
    }
  }
}

TEST(QuantTest, GemvSmallShapes) {
  // Fewer rows than one group of the multi-row kernel, and a single block per row.
  for (DType t : kTypes) {
    const int64_t cols = DTypeBlockElements(t);
    for (int64_t rows : {1, 2, 3, 4, 5}) {
      const Matrix m = RandomMatrix(t, rows, cols, 3);
      const std::vector<float> x = RandomVector(static_cast<size_t>(cols), 4);
      const Reference ref = RowDots(m.dequant, rows, cols, x.data());
      for (Isa isa : SupportedIsas()) {
        std::vector<float> y(static_cast<size_t>(rows));
        QuantGemv(t, m.bytes.data(), rows, cols, x.data(), y.data(), 2, isa);
        for (int64_t r = 0; r < rows; ++r) {
          ASSERT_TRUE(DotClose(y[r], ref, r, 2e-5))
              << DTypeName(t) << " " << IsaName(isa) << " rows " << rows << " row " << r;
        }
      }
    }
  }
}

TEST(QuantTest, MatmulMatchesDoubleReference) {
  for (DType t : kTypes) {
    for (int64_t cols : ColsFor(t)) {
      if (cols == 256 && DTypeBlockElements(t) == 32) continue;  // covered by the K types
      const Matrix m = RandomMatrix(t, kOddRows, cols, 200 + static_cast<uint32_t>(cols));
      // 32 and 33: both sides of the small-batch limit on the SIMD paths.
      for (int64_t n : {1, 2, 7, 32, 33, 64}) {
        const std::vector<float> x = RandomVector(static_cast<size_t>(n * cols), 9);
        const int64_t ldy = kOddRows + 5;
        std::vector<Reference> refs;
        for (int64_t i = 0; i < n; ++i) {
          refs.push_back(RowDots(m.dequant, kOddRows, cols, x.data() + i * cols));
        }
        for (Isa isa : {Isa::kScalar, BestIsa()}) {
          for (int threads : {1, 2}) {
            if (isa == BestIsa() && isa != Isa::kScalar && threads == 1 && n != 7) continue;
            std::vector<float> y(static_cast<size_t>(n * ldy), -777.0f);
            QuantMatmul(t, m.bytes.data(), kOddRows, cols, x.data(), n, y.data(), ldy, threads,
                        isa);
            for (int64_t i = 0; i < n; ++i) {
              for (int64_t r = 0; r < kOddRows; ++r) {
                ASSERT_TRUE(DotClose(y[i * ldy + r], refs[static_cast<size_t>(i)], r, 2e-5))
                    << DTypeName(t) << " " << IsaName(isa) << " threads " << threads << " cols "
                    << cols << " n " << n << " at [" << i << ", " << r << "]";
              }
              if (n > 1) {  // n == 1 writes one row of y only
                for (int64_t r = kOddRows; r < ldy; ++r) {
                  ASSERT_EQ(y[i * ldy + r], -777.0f) << "padding of y written";
                }
              }
            }
          }
        }
      }
    }
  }
}

// The small-batch kernels (QuantMatmul for 1 < n <= internal::SmallBatchLimit) on every ISA,
// called directly so that the scalar ones (which QuantMatmul never picks: sgemm beats them) and
// every n up to kMaxSmallBatch are covered whatever the limit. Odd row counts leave a partial
// group of rows at the end of a thread's range. Rows are walked in equal chunks of at most 512
// elements: one block is a single short chunk, 544 (17 blocks of 32) and 1280 (5 of 256) end
// in a shorter chunk, 1536 is three full ones. ldy > rows checks that the padding is left alone.
TEST(QuantTest, SmallBatchMatchesDoubleReference) {
  constexpr int64_t kBatches[] = {2, 3, 8, 17, 32};
  for (DType t : kTypes) {
    const std::vector<int64_t> cols_list = DTypeBlockElements(t) == 32
                                               ? std::vector<int64_t>{32, 544, 1536}
                                               : std::vector<int64_t>{256, 1280, 1536};
    for (int64_t cols : cols_list) {
      for (int64_t rows : {kOddRows, int64_t{13}, int64_t{5}}) {
        const Matrix m = RandomMatrix(t, rows, cols, 300 + static_cast<uint32_t>(cols + rows));
        const std::vector<float> x = RandomVector(static_cast<size_t>(32 * cols), 21);
        std::vector<Reference> refs;
        for (int64_t i = 0; i < 32; ++i) {
          refs.push_back(RowDots(m.dequant, rows, cols, x.data() + i * cols));
        }
        const int64_t ldy = rows + 3;
        for (int64_t n : kBatches) {
          for (Isa isa : SupportedIsas()) {
            for (int threads : {1, 2}) {
              if (rows != kOddRows && threads == 1) continue;
              std::vector<float> y(static_cast<size_t>(n * ldy), -777.0f);
              internal::QuantMatmulSmall(t, m.bytes.data(), rows, cols, x.data(), n, y.data(),
                                         ldy, threads, isa);
              for (int64_t i = 0; i < n; ++i) {
                for (int64_t r = 0; r < rows; ++r) {
                  ASSERT_TRUE(DotClose(y[i * ldy + r], refs[static_cast<size_t>(i)], r, 2e-5))
                      << DTypeName(t) << " " << IsaName(isa) << " threads " << threads
                      << " rows " << rows << " cols " << cols << " n " << n << " at [" << i
                      << ", " << r << "]";
                }
                for (int64_t r = rows; r < ldy; ++r) {
                  ASSERT_EQ(y[i * ldy + r], -777.0f)
                      << "padding of y written: " << DTypeName(t) << " " << IsaName(isa) << " n "
                      << n << " row " << i;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(QuantTest, SmallBatchLimitAndArguments) {
  for (DType t : kTypes) {
    for (Isa isa : SupportedIsas()) {
      const int64_t limit = internal::SmallBatchLimit(t, isa);
      EXPECT_GE(limit, 1) << DTypeName(t) << " " << IsaName(isa);
      EXPECT_LE(limit, internal::kMaxSmallBatch) << DTypeName(t) << " " << IsaName(isa);
    }
  }
  std::vector<uint8_t> w(DTypeBytes(DType::kQ8_0, 4 * 32));
  std::vector<float> f(64 * 32);
  EXPECT_THROW(internal::QuantMatmulSmall(DType::kQ8_0, w.data(), 4, 32, f.data(),
                                          internal::kMaxSmallBatch + 1, f.data(), 4, 1,
                                          BestIsa()),
               std::invalid_argument);
  EXPECT_THROW(internal::QuantMatmulSmall(DType::kQ8_0, w.data(), 4, 32, f.data(), 2, f.data(),
                                          3, 1, BestIsa()),
               std::invalid_argument);  // ldy < rows
  EXPECT_THROW(internal::QuantMatmulSmall(DType::kQ4_K, w.data(), 4, 32, f.data(), 2, f.data(),
                                          4, 1, BestIsa()),
               std::invalid_argument);  // not whole blocks
}

// ---- Quantize / dequantize round trips. ----

// The largest error the reference quantizer may make on element i of x (see quant.h): half a
// quantization step where the range is covered, plus the slack that 6-bit / 8-bit scales and f16
// rounding leave (documented per type).
std::vector<double> ErrorBounds(DType t, const std::vector<float>& x) {
  const int64_t elems = DTypeBlockElements(t);
  std::vector<double> bound(x.size());
  auto amax_of = [&](size_t begin, size_t n) {
    double a = 0.0;
    for (size_t i = begin; i < begin + n; ++i) {
      a = std::max(a, std::fabs(static_cast<double>(x[i])));
    }
    return a;
  };
  constexpr double kF16 = 1.0 / 512;  // generous slack for f16-rounded scales
  for (size_t b = 0; b < x.size(); b += static_cast<size_t>(elems)) {
    const double a = amax_of(b, static_cast<size_t>(elems));
    const auto [lo_it, hi_it] = std::minmax_element(x.begin() + b, x.begin() + b + elems);
    const double lo = *lo_it, hi = *hi_it;
    for (size_t i = b; i < b + static_cast<size_t>(elems); ++i) {
      switch (t) {
        case DType::kQ8_0: bound[i] = 0.5 * a / 127 + kF16 * a; break;
        case DType::kQ4_0: bound[i] = a / 8 + kF16 * a; break;  // d / 2, or d at the clamped end
        case DType::kQ4_1: bound[i] = 0.5 * (hi - lo) / 15 + kF16 * a; break;
        case DType::kQ5_0: bound[i] = a / 16 + kF16 * a; break;  // d, as Q4_0's
        case DType::kQ5_1: bound[i] = 0.5 * (hi - lo) / 31 + kF16 * a; break;
        default: break;
      }
    }
    if (t == DType::kQ4_K || t == DType::kQ5_K) {
      const double levels = t == DType::kQ4_K ? 15 : 31;
      double max_step = 0.0, max_neg = 0.0;
      double step[8];
      for (int j = 0; j < 8; ++j) {
        const auto sub = x.begin() + static_cast<std::ptrdiff_t>(b + 32 * j);
        const auto [l, h] = std::minmax_element(sub, sub + 32);
        const double low = std::min(0.0, static_cast<double>(*l));
        step[j] = (*h - low) / levels;
        max_step = std::max(max_step, step[j]);
        max_neg = std::max(max_neg, -low);
      }
      // Half a step, widened by one unit of the 6-bit scale grid (d = max_step / 63, scales
      // round up) and half a unit of the min grid (dmin = max_neg / 63, mins round to nearest).
      for (int j = 0; j < 8; ++j) {
        for (size_t i = b + 32 * j; i < b + 32 * j + 32; ++i) {
          bound[i] = 0.5 * step[j] + 0.5 * max_step / 63 + 0.5 * max_neg / 63 + kF16 * a;
        }
      }
    }
    if (t == DType::kQ6_K) {
      // One step of the group (the far end clamps at +31 when the extreme maps to -32), whose
      // 8-bit multiple of d = max step / 127 rounds away from zero.
      for (int g = 0; g < 16; ++g) {
        const double ag = amax_of(b + 16 * g, 16);
        for (size_t i = b + 16 * g; i < b + 16 * g + 16; ++i) {
          bound[i] = ag / 32 + a / 32 / 127 + kF16 * a;
        }
      }
    }
  }
  return bound;
}

// Relative RMS error that each type stays under on normally distributed data.
double RmsLimit(DType t) {
  switch (t) {
    case DType::kQ8_0: return 0.01;
    case DType::kQ4_0: return 0.15;
    case DType::kQ4_1: return 0.12;
    case DType::kQ5_0: return 0.08;
    case DType::kQ5_1: return 0.06;
    case DType::kQ4_K: return 0.12;
    case DType::kQ5_K: return 0.06;
    case DType::kQ6_K: return 0.04;
    default: return 0.0;
  }
}

void ExpectRoundTrip(DType t, const std::vector<float>& x, const std::string& what,
                     bool check_rms) {
  std::vector<uint8_t> q(DTypeBytes(t, static_cast<int64_t>(x.size())));
  QuantizeRow(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
  const std::vector<float> back = Dequant(t, q, Isa::kScalar);
  const std::vector<double> bound = ErrorBounds(t, x);
  double err2 = 0.0, sig2 = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = std::fabs(static_cast<double>(back[i]) - x[i]);
    ASSERT_LE(e, bound[i]) << DTypeName(t) << " " << what << " element " << i << ": " << x[i]
                           << " -> " << back[i];
    err2 += e * e;
    sig2 += static_cast<double>(x[i]) * x[i];
  }
  if (check_rms) {
    const double rel = std::sqrt(err2 / sig2);
    EXPECT_LT(rel, RmsLimit(t)) << DTypeName(t) << " " << what;
    std::printf("[ INFO     ] %s %s: relative RMS error %.4f\n", DTypeName(t), what.c_str(), rel);
  }
}

TEST(QuantTest, QuantizeRoundTrips) {
  for (DType t : kTypes) {
    const int64_t elems = DTypeBlockElements(t);
    const size_t n = static_cast<size_t>(elems * (elems == 32 ? 256 : 32));
    std::mt19937 rng(42 + static_cast<uint32_t>(t));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(n);
    for (float& v : x) v = normal(rng);
    ExpectRoundTrip(t, x, "normal", true);

    // Heavy tails: one large outlier per 64 elements.
    for (size_t i = 0; i < n; i += 64) x[i + (i / 64) % 64] *= 40.0f;
    ExpectRoundTrip(t, x, "outliers", false);

    // All positive, all negative, a narrow range far from zero.
    std::uniform_real_distribution<float> pos(0.5f, 3.0f);
    for (float& v : x) v = pos(rng);
    ExpectRoundTrip(t, x, "positive", false);
    for (float& v : x) v = -pos(rng);
    ExpectRoundTrip(t, x, "negative", false);
    std::uniform_real_distribution<float> narrow(10.0f, 10.5f);
    for (float& v : x) v = narrow(rng);
    ExpectRoundTrip(t, x, "narrow", false);

    // Zeros and constants come back exactly (a constant exactly representable in the scales).
    std::fill(x.begin(), x.end(), 0.0f);
    std::vector<uint8_t> q(DTypeBytes(t, static_cast<int64_t>(n)));
    QuantizeRow(t, x.data(), q.data(), static_cast<int64_t>(n));
    for (float v : Dequant(t, q, Isa::kScalar)) ASSERT_EQ(v, 0.0f) << DTypeName(t);
    std::fill(x.begin(), x.end(), -1.5f);
    ExpectRoundTrip(t, x, "constant", false);

    // Mixed magnitudes across blocks / sub-blocks: some sub-blocks tiny, some zero.
    for (size_t i = 0; i < n; ++i) {
      const size_t sub = i / 32;
      x[i] = sub % 3 == 0 ? 0.0f : normal(rng) * (sub % 3 == 1 ? 1e-3f : 5.0f);
    }
    ExpectRoundTrip(t, x, "mixed", false);
  }
}

TEST(QuantTest, QuantizedBytesDecodeTheSameOnEveryPath) {
  // The quantizer's output through the fast paths, with realistic (not random-byte) scales.
  for (DType t : kTypes) {
    const Matrix m = RandomMatrix(t, 8, 512, 11);
    for (Isa isa : SupportedIsas()) {
      const std::vector<float> got = Dequant(t, m.bytes, isa);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], m.dequant[i], 1e-5 * std::fabs(m.dequant[i]) + 1e-6)
            << DTypeName(t) << " " << IsaName(isa) << " element " << i;
      }
    }
  }
}

}  // namespace
}  // namespace shardlm::quant
