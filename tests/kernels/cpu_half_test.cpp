// The CPU backend over bf16 / f16 weights: PrepareWeight keeping matrices in 16 bits, the
// converting kernels on every instruction set this CPU supports (each against the scalar path,
// which the backend would never pick on a CPU with AVX2 or AVX-512), and Linear / Embedding
// against double-precision references computed from the converted weights.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_ops.h"
#include "base/dtype.h"
#include "tests/kernels/test_util.h"

// From OpenBLAS (linked through the backend); declared here rather than including cblas.h,
// whose include directory the backend keeps private.
extern "C" int openblas_get_num_threads(void);

namespace shardlm {
namespace {

using cpu::Simd;
using testutil::AllClose;
using testutil::RandomTensor;
using testutil::RandomVector;
using testutil::ToVector;

constexpr DType kHalfTypes[] = {DType::kBF16, DType::kF16};

std::vector<Simd> SupportedSimds() {
  std::vector<Simd> out;
  for (Simd s : {Simd::kScalar, Simd::kAvx2, Simd::kAvx512}) {
    if (cpu::SimdSupported(s)) out.push_back(s);
  }
  return out;
}

std::string Label(DType dtype, Simd simd) {
  return std::string(DTypeName(dtype)) + " " + cpu::SimdName(simd);
}

uint16_t ToHalf(DType dtype, float f) { return dtype == DType::kBF16 ? F32ToBf16(f) : F32ToF16(f); }

float FromHalf(DType dtype, uint16_t h) {
  return dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
}

// A 16-bit host tensor of random values in [-1, 1) (an unprepared checkpoint tensor).
Tensor RandomHalf(DType dtype, std::vector<int64_t> shape, uint32_t seed) {
  Tensor t = Tensor::Empty(std::move(shape), dtype);
  const std::vector<float> v = RandomVector(static_cast<size_t>(t.numel()), seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<uint16_t>()[i] = ToHalf(dtype, v[i]);
  return t;
}

// The exact f32 values of a 16-bit tensor, by the scalar conversion of kernels/dtype.h.
std::vector<float> Widened(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  ConvertToF32(t.dtype(), t.raw(), out.data(), out.size());
  return out;
}

std::vector<double> ReferenceLinear(const Tensor& x, const std::vector<float>& w,
                                    const Tensor* bias, int64_t n, int64_t in, int64_t out) {
  std::vector<double> y(static_cast<size_t>(n * out));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias != nullptr ? bias->data<float>()[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) {
        acc += static_cast<double>(x.data<float>()[i * in + k]) * w[o * in + k];
      }
      y[i * out + o] = acc;
    }
  }
  return y;
}

TEST(SimdTest, BestIsSupported) {
  EXPECT_TRUE(cpu::SimdSupported(Simd::kScalar));
  EXPECT_TRUE(cpu::SimdSupported(cpu::BestSimd()));
  std::cout << "best simd on this CPU: " << cpu::SimdName(cpu::BestSimd()) << "\n";
}

// Every 16-bit pattern, converted by each path, equals the scalar conversion exactly (NaNs
// only need to stay NaN: the f16 hardware conversion quiets signalling NaNs).
TEST(ConvertHalfTest, AllBitPatternsExact) {
  std::vector<uint16_t> bits(65536);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  for (DType dtype : kHalfTypes) {
    for (Simd simd : SupportedSimds()) {
      std::vector<float> got(bits.size());
      cpu::ConvertHalf(dtype, bits.data(), got.data(), static_cast<int64_t>(bits.size()), simd);
      for (size_t i = 0; i < bits.size(); ++i) {
        const float want = FromHalf(dtype, bits[i]);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(got[i])) << Label(dtype, simd) << " bits " << i;
        } else {
          ASSERT_EQ(std::memcmp(&got[i], &want, sizeof want), 0)
              << Label(dtype, simd) << " bits " << i << ": want " << want << ", got " << got[i];
        }
      }
    }
  }
}

// Lengths and offsets around the vector widths, so that every tail is taken and nothing is
// written past n.
TEST(ConvertHalfTest, TailsAndUnalignedStarts) {
  const std::vector<float> values = RandomVector(80, 7, -5.0f, 5.0f);
  for (DType dtype : kHalfTypes) {
    std::vector<uint16_t> src(values.size());
    for (size_t i = 0; i < src.size(); ++i) src[i] = ToHalf(dtype, values[i]);
    for (Simd simd : SupportedSimds()) {
      for (int64_t offset : {0, 1, 3}) {
        for (int64_t n = 0; n <= 40; ++n) {
          std::vector<float> dst(n + 1, -7.0f);
          cpu::ConvertHalf(dtype, src.data() + offset, dst.data(), n, simd);
          for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(dst[i], FromHalf(dtype, src[offset + i]))
                << Label(dtype, simd) << " n " << n << " offset " << offset << " i " << i;
          }
          ASSERT_EQ(dst[n], -7.0f) << Label(dtype, simd) << " wrote past n = " << n;
        }
      }
    }
  }
}

struct GemvCase {
  int64_t out, in;
  int threads;
};

void PrintTo(const GemvCase& c, std::ostream* os) {
  *os << "out " << c.out << ", in " << c.in << ", threads " << c.threads;
}

class GemvHalfTest : public ::testing::TestWithParam<GemvCase> {};

// Each path against the double reference and against the scalar path.
TEST_P(GemvHalfTest, EveryPathMatchesReferenceAndScalar) {
  const auto [out, in, threads] = GetParam();
  const std::vector<float> x = RandomVector(static_cast<size_t>(in), 11);
  for (DType dtype : kHalfTypes) {
    const Tensor w = RandomHalf(dtype, {out, in}, 12);
    const std::vector<float> wf = Widened(w);
    std::vector<double> want(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += static_cast<double>(wf[o * in + k]) * x[k];
      want[o] = acc;
    }
    std::vector<float> scalar(static_cast<size_t>(out), NAN);
    cpu::GemvHalf(dtype, w.data<uint16_t>(), out, in, x.data(), scalar.data(), threads,
                  Simd::kScalar);
    EXPECT_TRUE(AllClose(scalar, want, 1e-6 * in, 1e-5)) << Label(dtype, Simd::kScalar);
    for (Simd simd : SupportedSimds()) {
      std::vector<float> got(static_cast<size_t>(out), NAN);
      cpu::GemvHalf(dtype, w.data<uint16_t>(), out, in, x.data(), got.data(), threads, simd);
      EXPECT_TRUE(AllClose(got, want, 1e-6 * in, 1e-5)) << Label(dtype, simd);
      const std::vector<double> scalar_d(scalar.begin(), scalar.end());
      EXPECT_TRUE(AllClose(got, scalar_d, 1e-6 * in, 1e-5)) << Label(dtype, simd) << " vs scalar";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemvHalfTest,
                         ::testing::Values(GemvCase{9 * 8, 72, 1},  // 72 = 64 + a tail of 8
                                           GemvCase{9 * 8, 72, 2}, GemvCase{1, 1, 1},
                                           GemvCase{3, 17, 2},      // fewer rows than one group
                                           GemvCase{7, 16, 1},      // a group and 3 single rows
                                           GemvCase{301, 1031, 2},  // parallel, odd everything
                                           GemvCase{512, 2048, 2}));

struct HalfLinearCase {
  int64_t n, in, out;
  bool bias;
  int threads;
};

void PrintTo(const HalfLinearCase& c, std::ostream* os) {
  *os << "n " << c.n << ", in " << c.in << ", out " << c.out << (c.bias ? ", bias" : "")
      << ", threads " << c.threads;
}

class HalfLinearTest : public ::testing::TestWithParam<HalfLinearCase> {};

TEST_P(HalfLinearTest, EveryPathMatchesReferenceAndScalar) {
  const auto [n, in, out, with_bias, threads] = GetParam();
  auto backend = CreateCpuBackend(threads);
  const Tensor x = RandomTensor({n, in}, 21);
  const Tensor b = RandomTensor({out}, 23);
  const Tensor* bias = with_bias ? &b : nullptr;
  for (DType dtype : kHalfTypes) {
    const Tensor w = backend->PrepareWeight(RandomHalf(dtype, {out, in}, 22));
    ASSERT_EQ(w.dtype(), dtype);
    const std::vector<double> want = ReferenceLinear(x, Widened(w), bias, n, in, out);
    Tensor y = backend->Allocate({n, out});
    backend->Linear(x, w, bias, y);
    EXPECT_TRUE(AllClose(y, want, 1e-6 * in, 1e-5)) << DTypeName(dtype) << " backend";
    Tensor scalar = backend->Allocate({n, out});
    cpu::Linear(x, w, bias, scalar, threads, Simd::kScalar);
    EXPECT_TRUE(AllClose(scalar, want, 1e-6 * in, 1e-5)) << Label(dtype, Simd::kScalar);
    for (Simd simd : SupportedSimds()) {
      Tensor got = backend->Allocate({n, out});
      cpu::Linear(x, w, bias, got, threads, simd);
      EXPECT_TRUE(AllClose(got, want, 1e-6 * in, 1e-5)) << Label(dtype, simd);
      if (n > 1) {
        // Prefill converts exactly and then runs the same sgemm calls: identical results.
        EXPECT_EQ(ToVector(got), ToVector(scalar)) << Label(dtype, simd) << " vs scalar";
      } else {
        EXPECT_TRUE(AllClose(got, scalar, 1e-6 * in, 1e-5)) << Label(dtype, simd) << " vs scalar";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, HalfLinearTest,
    ::testing::Values(HalfLinearCase{1, 72, 9 * 8, false, 2},  // decode
                      HalfLinearCase{1, 72, 9 * 8, true, 2}, HalfLinearCase{1, 17, 5, true, 1},
                      HalfLinearCase{1, 1024, 300, false, 2},
                      HalfLinearCase{3, 72, 9 * 8, false, 2},  // prefill
                      HalfLinearCase{2, 72, 9 * 8, true, 1}, HalfLinearCase{5, 33, 40, true, 2},
                      // Blocks of 160 + 140 and of 256 + 256 + 88 rows: never a whole multiple.
                      HalfLinearCase{64, 72, 300, true, 2}, HalfLinearCase{9, 1024, 600, false, 2},
                      HalfLinearCase{16, 256, 600, true, 1}, HalfLinearCase{7, 1, 3, false, 2}));

// Prefill lowers the process-wide OpenBLAS thread count to 1 around its parallel region; it
// must come back, or every f32 sgemm after it would run on one thread.
TEST(HalfLinearTest, PrefillRestoresBlasThreads) {
  auto backend = CreateCpuBackend(2);
  ASSERT_EQ(openblas_get_num_threads(), 2);
  const Tensor x = RandomTensor({8, 256}, 1);
  const Tensor w = backend->PrepareWeight(RandomHalf(DType::kBF16, {512, 256}, 2));
  Tensor y = backend->Allocate({8, 512});
  backend->Linear(x, w, nullptr, y);
  EXPECT_EQ(openblas_get_num_threads(), 2);
  const Tensor wf = RandomTensor({512, 256}, 3);
  backend->Linear(x, wf, nullptr, y);
  EXPECT_TRUE(AllClose(y, ReferenceLinear(x, ToVector(wf), nullptr, 8, 256, 512), 1e-6 * 256));
}

TEST(HalfLinearTest, RejectsBadInputs) {
  auto backend = CreateCpuBackend(2);
  const Tensor x = RandomTensor({2, 8}, 1);
  Tensor y = backend->Allocate({2, 4});
  const Tensor w7 = RandomHalf(DType::kBF16, {4, 7}, 2);
  EXPECT_THROW(backend->Linear(x, w7, nullptr, y), std::invalid_argument);
  const Tensor w3d = RandomHalf(DType::kF16, {4, 2, 4}, 2);
  EXPECT_THROW(backend->Linear(x, w3d, nullptr, y), std::invalid_argument);
  const Tensor w = RandomHalf(DType::kBF16, {4, 8}, 2);
  const Tensor half_bias = RandomHalf(DType::kBF16, {4}, 3);  // biases are prepared to f32
  EXPECT_THROW(backend->Linear(x, w, &half_bias, y), std::invalid_argument);
  const Tensor half_x = RandomHalf(DType::kBF16, {2, 8}, 4);
  EXPECT_THROW(backend->Linear(half_x, w, nullptr, y), std::invalid_argument);
}

TEST(HalfEmbeddingTest, GathersAndConvertsRows) {
  auto backend = CreateCpuBackend(2);
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  for (DType dtype : kHalfTypes) {
    for (int64_t d : {12, 72, 2048}) {  // below, around and well above the vector widths
      const Tensor table = backend->PrepareWeight(RandomHalf(dtype, {50, d}, 31));
      ASSERT_EQ(table.dtype(), dtype);
      const std::vector<float> wide = Widened(table);
      for (Simd simd : SupportedSimds()) {
        Tensor y = backend->Allocate({static_cast<int64_t>(ids.size()), d});
        cpu::Embedding(table, ids, y, 2, simd);
        for (size_t i = 0; i < ids.size(); ++i) {
          for (int64_t k = 0; k < d; ++k) {
            ASSERT_EQ(y.data<float>()[i * d + k], wide[ids[i] * d + k])
                << Label(dtype, simd) << " d " << d << " row " << i << " k " << k;
          }
        }
      }
      Tensor y = backend->Allocate({static_cast<int64_t>(ids.size()), d});
      backend->Embedding(table, ids, y);
      EXPECT_EQ(ToVector(y)[d], wide[0]);  // row 1 is id 0
    }
  }
  const Tensor table = RandomHalf(DType::kBF16, {50, 12}, 31);
  const std::vector<int32_t> bad = {50};
  Tensor y1 = backend->Allocate({1, 12});
  EXPECT_THROW(backend->Embedding(table, bad, y1), std::out_of_range);
}

// 2-D bf16 / f16 weights stay 16-bit and are used in place (a view of the checkpoint's mapping
// stays one); data that is not 2-byte aligned becomes an owned, 64-byte aligned, bit-identical
// copy. 1-D ones (norm weights, biases) become f32.
TEST(HalfPrepareWeightTest, KeepsMatricesConvertsVectors) {
  auto backend = CreateCpuBackend(2);
  for (DType dtype : kHalfTypes) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{7, 9}, {301, 257}}) {
      const Tensor src = RandomHalf(dtype, shape, 41);
      const Tensor w = backend->PrepareWeight(src);
      EXPECT_EQ(w.dtype(), dtype);
      EXPECT_EQ(w.shape(), shape);
      EXPECT_EQ(w.raw(), src.raw());
      EXPECT_EQ(w.holder(), src.holder());
      // The same bytes one byte off their alignment.
      Tensor buffer = Tensor::Empty({src.numel() + 1}, dtype);
      Tensor odd =
          Tensor::View(static_cast<char*>(buffer.raw()) + 1, shape, dtype, buffer.holder());
      std::memcpy(odd.raw(), src.raw(), src.nbytes());
      const Tensor copy = backend->PrepareWeight(odd);
      EXPECT_EQ(copy.dtype(), dtype);
      EXPECT_EQ(copy.shape(), shape);
      EXPECT_NE(copy.holder(), odd.holder());
      EXPECT_EQ(reinterpret_cast<uintptr_t>(copy.raw()) % 64, 0u);
      ASSERT_EQ(copy.nbytes(), src.nbytes());
      EXPECT_EQ(std::memcmp(copy.raw(), src.raw(), src.nbytes()), 0) << DTypeName(dtype);
    }
    const Tensor src1 = RandomHalf(dtype, {72}, 42);
    const Tensor v = backend->PrepareWeight(src1);
    EXPECT_EQ(v.dtype(), DType::kF32);
    EXPECT_EQ(v.shape(), src1.shape());
    EXPECT_EQ(ToVector(v), Widened(src1)) << DTypeName(dtype);
  }
}

}  // namespace
}  // namespace shardlm
