// The CPU backend's memory, weight and dense ops against double-precision references.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <numbers>
#include <ostream>
#include <span>
#include <stdexcept>
#include <vector>

#include "gtest/gtest.h"
#include "base/dtype.h"
#include "tests/kernels/test_util.h"

namespace shardlm {
namespace {

using testutil::AllClose;
using testutil::FromVector;
using testutil::RandomTensor;
using testutil::RandomVector;
using testutil::ToVector;

TEST(CpuBackendTest, NameAndAllocate) {
  auto backend = CreateCpuBackend(2);
  EXPECT_EQ(backend->name(), "cpu");
  Tensor t = backend->Allocate({3, 5});
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(t.dtype(), DType::kF32);
  EXPECT_EQ(t.device(), Device::kCpu);
  for (float v : ToVector(t)) ASSERT_EQ(v, 0.0f);
  Tensor h = backend->Allocate({4}, DType::kBF16);
  EXPECT_EQ(h.dtype(), DType::kBF16);
  EXPECT_EQ(h.nbytes(), 8u);
  EXPECT_THROW(CreateCpuBackend(-1), std::invalid_argument);
}

TEST(CpuBackendTest, ToDeviceAndToHostCopy) {
  auto backend = CreateCpuBackend();
  Tensor host = RandomTensor({4, 6}, 3);
  Tensor dev = backend->ToDevice(host);
  EXPECT_NE(dev.raw(), host.raw());
  EXPECT_EQ(dev.shape(), host.shape());
  EXPECT_EQ(ToVector(dev), ToVector(host));
  Tensor back = backend->ToHost(dev);
  EXPECT_NE(back.raw(), dev.raw());
  EXPECT_EQ(ToVector(back), ToVector(host));
  dev.data<float>()[0] = 42.0f;  // copies, not views
  EXPECT_NE(host.data<float>()[0], 42.0f);
}

TEST(CpuBackendTest, ToHostConvertsToF32) {
  auto backend = CreateCpuBackend();
  Tensor h = Tensor::Empty({3}, DType::kBF16);
  const uint16_t bits[] = {F32ToBf16(1.5f), F32ToBf16(-2.0f), F32ToBf16(0.25f)};
  std::memcpy(h.raw(), bits, sizeof bits);
  Tensor f = backend->ToHost(h);
  EXPECT_EQ(f.dtype(), DType::kF32);
  EXPECT_EQ(ToVector(f), (std::vector<float>{1.5f, -2.0f, 0.25f}));
}

// Builds a 16-bit tensor of `shape` from random values and checks that PrepareWeight gives
// exactly the element-wise conversion, in f32, with the same shape. Only tensors that are not
// matrices are converted (cpu_half_test.cpp covers the matrices, which stay 16-bit).
void CheckPrepared(DType dtype, std::vector<int64_t> shape) {
  auto backend = CreateCpuBackend();
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> values = RandomVector(static_cast<size_t>(n), 5, -3.0f, 3.0f);
  Tensor src = Tensor::Empty(shape, dtype);
  auto* bits = src.data<uint16_t>();
  for (int64_t i = 0; i < n; ++i) {
    bits[i] = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
  }
  Tensor w = backend->PrepareWeight(src);
  EXPECT_EQ(w.dtype(), DType::kF32);
  EXPECT_EQ(w.shape(), shape);
  const float* got = w.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const float want = dtype == DType::kBF16 ? Bf16ToF32(bits[i]) : F16ToF32(bits[i]);
    ASSERT_EQ(got[i], want) << "element " << i;
    ASSERT_NEAR(got[i], values[i], 0.02) << "element " << i;
  }
}

TEST(CpuBackendTest, PrepareWeightBf16) {
  CheckPrepared(DType::kBF16, {33});
  CheckPrepared(DType::kBF16, {301 * 257});  // several conversion chunks
  CheckPrepared(DType::kBF16, {3, 7, 9});
}

TEST(CpuBackendTest, PrepareWeightF16) {
  CheckPrepared(DType::kF16, {72});
  CheckPrepared(DType::kF16, {257 * 301});
  CheckPrepared(DType::kF16, {2, 5, 72});
}

// f32 weights are used in place (a view of the checkpoint's mapping stays one), unless their data
// is not 4-byte aligned: then an aligned copy.
TEST(CpuBackendTest, PrepareWeightF32UsesAlignedSourceInPlace) {
  auto backend = CreateCpuBackend();
  for (std::vector<int64_t> shape : {std::vector<int64_t>{3, 4}, {7}}) {
    Tensor src = RandomTensor(shape, 9);
    Tensor w = backend->PrepareWeight(src);
    EXPECT_EQ(w.raw(), src.raw());
    EXPECT_EQ(w.holder(), src.holder());
    EXPECT_EQ(w.shape(), shape);
  }
  Tensor buffer = Tensor::Empty({14}, DType::kF32);
  Tensor odd =
      Tensor::View(static_cast<char*>(buffer.raw()) + 1, {13}, DType::kF32, buffer.holder());
  const std::vector<float> values = RandomVector(13, 9, -1.0f, 1.0f);
  std::memcpy(odd.raw(), values.data(), 13 * sizeof(float));
  Tensor w = backend->PrepareWeight(odd);
  EXPECT_NE(w.raw(), odd.raw());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.raw()) % 64, 0u);
  EXPECT_EQ(ToVector(w), values);
}

struct LinearCase {
  int64_t n, in, out;
  bool bias;
};

void PrintTo(const LinearCase& c, std::ostream* os) {
  *os << "n " << c.n << ", in " << c.in << ", out " << c.out << (c.bias ? ", bias" : "");
}

class LinearTest : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LinearTest, MatchesReference) {
  const auto [n, in, out, with_bias] = GetParam();
  auto backend = CreateCpuBackend();
  Tensor x = RandomTensor({n, in}, 1);
  Tensor w = backend->PrepareWeight(RandomTensor({out, in}, 2));
  Tensor b = RandomTensor({out}, 3);
  Tensor y = backend->Allocate({n, out});
  backend->Linear(x, w, with_bias ? &b : nullptr, y);
  std::vector<double> want(n * out);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      double acc = with_bias ? b.data<float>()[o] : 0.0;
      for (int64_t k = 0; k < in; ++k) {
        acc += static_cast<double>(x.data<float>()[i * in + k]) * w.data<float>()[o * in + k];
      }
      want[i * out + o] = acc;
    }
  }
  EXPECT_TRUE(AllClose(y, want, 1e-6 * in, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearTest,
                         ::testing::Values(LinearCase{1, 72, 72, false},  // gemv
                                           LinearCase{1, 72, 72, true}, LinearCase{1, 17, 5, true},
                                           LinearCase{1, 1024, 300, false},
                                           LinearCase{3, 72, 72, false},  // gemm
                                           LinearCase{2, 72, 72, true}, LinearCase{5, 33, 40, true},
                                           LinearCase{64, 256, 96, true},
                                           LinearCase{7, 1, 3, false}));

TEST(LinearTest, TakesLeadingDimensionsAsRows) {
  auto backend = CreateCpuBackend();
  Tensor x = RandomTensor({2, 3, 8}, 4);
  Tensor w = RandomTensor({5, 8}, 5);
  Tensor y = backend->Allocate({2, 3, 5});
  Tensor y2 = backend->Allocate({6, 5});
  backend->Linear(x, w, nullptr, y);
  backend->Linear(x.Reshape({6, 8}), w, nullptr, y2);
  EXPECT_EQ(ToVector(y), ToVector(y2));
}

TEST(LinearTest, RejectsMismatchedShapes) {
  auto backend = CreateCpuBackend();
  Tensor x = RandomTensor({2, 8}, 1);
  Tensor w = RandomTensor({4, 7}, 2);
  Tensor y = backend->Allocate({2, 4});
  EXPECT_THROW(backend->Linear(x, w, nullptr, y), std::invalid_argument);
  Tensor w8 = RandomTensor({4, 8}, 2);
  Tensor bad_bias = RandomTensor({3}, 3);
  EXPECT_THROW(backend->Linear(x, w8, &bad_bias, y), std::invalid_argument);
  Tensor bad_y = backend->Allocate({3, 4});
  EXPECT_THROW(backend->Linear(x, w8, nullptr, bad_y), std::invalid_argument);
  Tensor on_device = Tensor::View(w8.raw(), {4, 8}, DType::kF32, w8.holder(), Device::kCuda);
  EXPECT_THROW(backend->Linear(x, on_device, nullptr, y), std::invalid_argument);
}

std::vector<double> ReferenceRmsNorm(const std::vector<float>& x, const std::vector<float>& w,
                                     int64_t d, double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / d; ++r) {
    double ss = 0;
    for (int64_t k = 0; k < d; ++k) ss += static_cast<double>(x[r * d + k]) * x[r * d + k];
    const double inv = 1.0 / std::sqrt(ss / d + eps);
    for (int64_t k = 0; k < d; ++k) y[r * d + k] = x[r * d + k] * inv * w[k];
  }
  return y;
}

TEST(RmsNormTest, MatchesReference) {
  auto backend = CreateCpuBackend();
  const int64_t shapes[][2] = {{1, 8}, {1, 4096}, {3, 72}, {17, 1000}, {64, 512}};
  for (const auto& [n, d] : shapes) {
    Tensor x = RandomTensor({n, d}, 21);
    Tensor w = RandomTensor({d}, 22);
    Tensor y = backend->Allocate({n, d});
    backend->RmsNorm(x, w, 1e-5f, y);
    EXPECT_TRUE(AllClose(y, ReferenceRmsNorm(ToVector(x), ToVector(w), d, 1e-5), 1e-6))
        << n << "x" << d;
  }
}

TEST(RmsNormTest, InPlaceAndEpsilonMatter) {
  auto backend = CreateCpuBackend();
  // Tiny inputs so that eps dominates the mean square.
  Tensor x = FromVector({2, 4}, {1e-3f, -2e-3f, 3e-3f, 0.0f, 0.5f, 1.0f, -1.5f, 2.0f});
  Tensor w = FromVector({4}, {1.0f, 2.0f, 0.5f, -1.0f});
  const std::vector<double> want = ReferenceRmsNorm(ToVector(x), ToVector(w), 4, 1e-2);
  backend->RmsNorm(x, w, 1e-2f, x);  // y aliases x
  EXPECT_TRUE(AllClose(x, want, 1e-7));
}

struct HeadNormCase {
  int64_t n, heads, kv_heads, head_dim;
};

// HeadRmsNorm (q/k norm of Qwen3 and Gemma 3) on a fused QKV output: every Q head as RmsNorm of
// that head with q_w, every K head with k_w (f64 reference, and the CPU RmsNorm op on the heads
// cut out), V bit for bit unchanged. Shapes: Gemma 3 270M (4 / 1 heads of 256), Qwen3-like
// (8 / 2 of 128), a head_dim that is not a multiple of 8, and enough rows for the threads.
TEST(HeadRmsNormTest, EqualsRmsNormOfEachHead) {
  auto backend = CreateCpuBackend(2);
  for (const HeadNormCase& c : {HeadNormCase{3, 4, 1, 256}, HeadNormCase{5, 8, 2, 128},
                                HeadNormCase{2, 3, 3, 20}, HeadNormCase{64, 16, 8, 128}}) {
    SCOPED_TRACE(testing::Message() << "n " << c.n << ", heads " << c.heads << "/" << c.kv_heads
                                    << ", head_dim " << c.head_dim);
    const int64_t d = c.head_dim, normed = c.heads + c.kv_heads;
    const int64_t width = (c.heads + 2 * c.kv_heads) * d;
    Tensor qkv = RandomTensor({c.n, width}, 81);
    for (int64_t i = 0; i < c.n; ++i) {  // heads of very different scales
      for (int64_t k = 0; k < width; ++k) qkv.data<float>()[i * width + k] *= 1.0f + (k / d) * 7;
    }
    const Tensor q_w = RandomTensor({d}, 82), k_w = RandomTensor({d}, 83);
    const std::vector<float> before = ToVector(qkv);
    backend->HeadRmsNorm(qkv, static_cast<int>(c.heads), static_cast<int>(c.kv_heads), q_w, k_w,
                         1e-6f);
    for (int64_t i = 0; i < c.n; ++i) {
      for (int64_t h = 0; h < normed; ++h) {
        const int64_t at = i * width + h * d;
        const std::vector<float> head(before.begin() + at, before.begin() + at + d);
        const Tensor& w = h < c.heads ? q_w : k_w;
        const std::span<const float> got(qkv.data<float>() + at, static_cast<size_t>(d));
        ASSERT_TRUE(AllClose(got, ReferenceRmsNorm(head, ToVector(w), d, 1e-6), 1e-6))
            << "token " << i << " head " << h;
        Tensor one = FromVector({1, d}, head), y = backend->Allocate({1, d});
        backend->RmsNorm(one, w, 1e-6f, y);
        const std::vector<float> op = ToVector(y);
        ASSERT_TRUE(AllClose(got, std::vector<double>(op.begin(), op.end()), 0.0, 1e-6))
            << "token " << i << " head " << h << " vs RmsNorm";
      }
      for (int64_t k = normed * d; k < width; ++k) {
        ASSERT_EQ(qkv.data<float>()[i * width + k], before[i * width + k]) << "V, token " << i;
      }
    }
  }
}

TEST(HeadRmsNormTest, RejectsBadShapes) {
  auto backend = CreateCpuBackend(1);
  Tensor qkv = RandomTensor({2, (4 + 2 * 2) * 8}, 1);
  const Tensor w8 = RandomTensor({8}, 2), w6 = RandomTensor({6}, 3);
  EXPECT_NO_THROW(backend->HeadRmsNorm(qkv, 4, 2, w8, w8, 1e-6f));
  EXPECT_THROW(backend->HeadRmsNorm(qkv, 4, 1, w8, w8, 1e-6f), std::invalid_argument);  // width
  EXPECT_THROW(backend->HeadRmsNorm(qkv, 4, 2, w8, w6, 1e-6f), std::invalid_argument);
  EXPECT_THROW(backend->HeadRmsNorm(qkv, 0, 2, w8, w8, 1e-6f), std::invalid_argument);
  Tensor flat = qkv.Reshape({2 * 64});
  EXPECT_THROW(backend->HeadRmsNorm(flat, 4, 2, w8, w8, 1e-6f), std::invalid_argument);
}

// AddRmsNorm (the residual add fused with the next norm): x += delta, then y = RmsNorm(x). x
// must hold the f32 sum exactly (one rounding of the exact sum), y the norm of the new x within
// 1e-6 of an f64 reference, with y a separate tensor and with y aliasing delta (as the model
// calls it: the branch output is overwritten by the next layer's normed input).
TEST(AddRmsNormTest, MatchesReferenceAndYMayAliasDelta) {
  auto backend = CreateCpuBackend(2);
  const int64_t shapes[][2] = {{1, 8}, {1, 4096}, {3, 72}, {17, 1000}, {64, 512}};
  for (const auto& [n, d] : shapes) {
    for (bool alias : {false, true}) {
      SCOPED_TRACE(testing::Message() << n << "x" << d << (alias ? " y aliases delta" : ""));
      Tensor x = RandomTensor({n, d}, 71);
      Tensor delta = RandomTensor({n, d}, 72);
      Tensor w = RandomTensor({d}, 73);
      const std::vector<float> x0 = ToVector(x), d0 = ToVector(delta);
      std::vector<double> sum(x0.size());
      std::vector<float> sum_f(x0.size());
      for (size_t i = 0; i < x0.size(); ++i) {
        sum[i] = static_cast<double>(x0[i]) + d0[i];
        sum_f[i] = x0[i] + d0[i];
      }
      const std::vector<double> want_y = ReferenceRmsNorm(sum_f, ToVector(w), d, 1e-5);
      if (alias) {
        backend->AddRmsNorm(x, delta, w, 1e-5f, delta);
        EXPECT_TRUE(AllClose(delta, want_y, 1e-6));
      } else {
        Tensor y = backend->Allocate({n, d});
        backend->AddRmsNorm(x, delta, w, 1e-5f, y);
        EXPECT_TRUE(AllClose(y, want_y, 1e-6));
        EXPECT_EQ(ToVector(delta), d0) << "delta must not change when y is another tensor";
      }
      EXPECT_TRUE(AllClose(x, sum, 0.0, 1e-7)) << "x += delta";
    }
  }
}

TEST(AddRmsNormTest, EpsilonMattersAndShapesAreChecked) {
  auto backend = CreateCpuBackend(1);
  // Tiny inputs so that eps dominates the mean square.
  Tensor x = FromVector({2, 4}, {1e-3f, -2e-3f, 3e-3f, 0.0f, 0.25f, 0.5f, -1.0f, 1.0f});
  Tensor delta = FromVector({2, 4}, {0.0f, 1e-3f, -1e-3f, 2e-3f, 0.25f, 0.5f, -0.5f, 1.0f});
  Tensor w = FromVector({4}, {1.0f, 2.0f, 0.5f, -1.0f});
  std::vector<float> sum(8);
  for (int i = 0; i < 8; ++i) sum[i] = x.data<float>()[i] + delta.data<float>()[i];
  const std::vector<double> want = ReferenceRmsNorm(sum, ToVector(w), 4, 1e-2);
  Tensor y = backend->Allocate({2, 4});
  backend->AddRmsNorm(x, delta, w, 1e-2f, y);
  EXPECT_TRUE(AllClose(y, want, 1e-7));
  EXPECT_EQ(ToVector(x), sum);

  Tensor short_delta = RandomTensor({1, 4}, 1);
  EXPECT_THROW(backend->AddRmsNorm(x, short_delta, w, 1e-5f, y), std::invalid_argument);
  Tensor w3 = RandomTensor({3}, 2);
  EXPECT_THROW(backend->AddRmsNorm(x, delta, w3, 1e-5f, y), std::invalid_argument);
  Tensor bad_y = backend->Allocate({2, 3});
  EXPECT_THROW(backend->AddRmsNorm(x, delta, w, 1e-5f, bad_y), std::invalid_argument);
}

TEST(EmbeddingTest, GathersRows) {
  auto backend = CreateCpuBackend();
  Tensor table = RandomTensor({50, 12}, 31);
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17};
  Tensor y = backend->Allocate({5, 12});
  backend->Embedding(table, ids, y);
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t k = 0; k < 12; ++k) {
      ASSERT_EQ(y.data<float>()[i * 12 + k], table.data<float>()[ids[i] * 12 + k]) << i;
    }
  }
  // -1: a zero row (ids owned by another vocabulary shard).
  const std::vector<int32_t> with_foreign = {-1, 3};
  Tensor y2 = backend->Allocate({2, 12});
  y2.data<float>()[0] = 5.0f;
  backend->Embedding(table, with_foreign, y2);
  for (int64_t k = 0; k < 12; ++k) {
    ASSERT_EQ(y2.data<float>()[k], 0.0f);
    ASSERT_EQ(y2.data<float>()[12 + k], table.data<float>()[3 * 12 + k]);
  }
  const std::vector<int32_t> bad = {50};
  Tensor y1 = backend->Allocate({1, 12});
  EXPECT_THROW(backend->Embedding(table, bad, y1), std::out_of_range);
  EXPECT_THROW(backend->Embedding(table, ids, y1), std::invalid_argument);
}

TEST(GluMulTest, SiluMatchesReference) {
  auto backend = CreateCpuBackend();
  for (int64_t n : {1, 7, 3 * 1000, 100000}) {
    std::vector<float> g = RandomVector(n, 41, -8.0f, 8.0f);
    if (n >= 4) {  // saturated ends must not turn into NaN
      g[0] = 100.0f;
      g[1] = -100.0f;
      g[2] = 0.0f;
    }
    Tensor gate = FromVector({n}, g);
    Tensor up = RandomTensor({n}, 42);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) {
      want[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * up.data<float>()[i];
    }
    Tensor y = backend->Allocate({n});
    backend->GluMul(gate, up, Activation::kSilu, y);
    EXPECT_TRUE(AllClose(y, want, 1e-7)) << n;
    backend->GluMul(gate, up, Activation::kSilu, gate);  // y aliases gate
    EXPECT_TRUE(AllClose(gate, want, 1e-7)) << n << " in place";
  }
}

// GeGLU: HF's gelu_pytorch_tanh(g) * u against a double reference. Far in the negative tail
// 1 + tanh cancels in f32 (as in PyTorch), hence the absolute part of the tolerance; saturated
// gates (|g| where 0.044715 g^3 overflows f32) give g * u and 0, never NaN.
TEST(GeluTanhMulTest, MatchesReference) {
  auto backend = CreateCpuBackend();
  auto reference = [](double g, double u) {
    return 0.5 * g *
           (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (g + 0.044715 * g * g * g))) * u;
  };
  for (int64_t n : {1, 7, 3 * 1000, 100000}) {
    std::vector<float> g = RandomVector(n, 43, -8.0f, 8.0f);
    if (n >= 8) {
      const float ends[] = {100.0f, -100.0f, 0.0f, 1e20f, -1e20f, 3e12f, -3e12f, -0.5f};
      std::copy(std::begin(ends), std::end(ends), g.begin());
    }
    Tensor gate = FromVector({n}, g);
    Tensor up = RandomTensor({n}, 44);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = reference(g[i], up.data<float>()[i]);
    Tensor y = backend->Allocate({n});
    backend->GluMul(gate, up, Activation::kGeluTanh, y);
    EXPECT_TRUE(AllClose(y, want, 1e-6, 1e-6)) << n;
    if (n >= 8) {
      EXPECT_FLOAT_EQ(y.data<float>()[3], 1e20f * up.data<float>()[3]);
      EXPECT_EQ(y.data<float>()[4], 0.0f);
    }
    backend->GluMul(gate, up, Activation::kGeluTanh, gate);  // y aliases gate
    EXPECT_TRUE(AllClose(gate, want, 1e-6, 1e-6)) << n << " in place";
  }
  // Not SiLU: the two activations differ (at g = 1: 0.8412 vs 0.7311).
  Tensor one = FromVector({1}, {1.0f}), u = FromVector({1}, {1.0f});
  Tensor gelu = backend->Allocate({1}), silu = backend->Allocate({1});
  backend->GluMul(one, u, Activation::kGeluTanh, gelu);
  backend->GluMul(one, u, Activation::kSilu, silu);
  EXPECT_NEAR(gelu.data<float>()[0], 0.841192, 1e-6);
  EXPECT_NEAR(silu.data<float>()[0], 0.731059, 1e-6);
}

TEST(ScaleTest, ScalesInPlace) {
  auto backend = CreateCpuBackend();
  for (int64_t n : {1, 9, 70000}) {
    for (float s : {25.29822f, -0.5f, 0.0f}) {  // sqrt(640): Gemma 3 270M's embedding scale
      Tensor x = RandomTensor({n, 1}, 53);
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = static_cast<double>(x.data<float>()[i]) * s;
      backend->Scale(x, s);
      EXPECT_TRUE(AllClose(x, want, 0.0, 1e-7)) << n << " x " << s;  // one f32 rounding
    }
  }
  Tensor empty = backend->Allocate({0, 4});
  EXPECT_NO_THROW(backend->Scale(empty, 2.0f));
}

TEST(AddTest, AddsInPlace) {
  auto backend = CreateCpuBackend();
  for (int64_t n : {1, 9, 70000}) {
    Tensor x = RandomTensor({n}, 51);
    Tensor y = RandomTensor({n}, 52);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) {
      want[i] = static_cast<double>(x.data<float>()[i]) + y.data<float>()[i];
    }
    backend->Add(x, y);
    EXPECT_TRUE(AllClose(x, want, 0.0, 1e-7)) << n;  // one f32 rounding of the exact sum
  }
  Tensor a = RandomTensor({4}, 1);
  Tensor b = RandomTensor({5}, 1);
  EXPECT_THROW(backend->Add(a, b), std::invalid_argument);
}

TEST(ArgmaxTest, FirstMaximumPerRow) {
  auto backend = CreateCpuBackend();
  const float inf = std::numeric_limits<float>::infinity();
  Tensor logits = FromVector({4, 5}, {1,    3,    3,    2,    0,   // tie: first wins
                                      -5,   -4,   -3,   -2,   -1,  // all negative, last
                                      -inf, -inf, -inf, -inf, -inf, 7, 1, 2, 7, 7});
  std::vector<int32_t> out(4, -1);
  backend->Argmax(logits, out);
  EXPECT_EQ(out, (std::vector<int32_t>{1, 4, 0, 0}));
  std::vector<float> values(4);
  backend->Argmax(logits, out, values);
  EXPECT_EQ(values, (std::vector<float>{3, -1, -inf, 7}));
  std::vector<float> wrong(3);
  EXPECT_THROW(backend->Argmax(logits, out, wrong), std::invalid_argument);
}

TEST(ArgmaxTest, LargeVocabulary) {
  auto backend = CreateCpuBackend();
  const int64_t vocab = 151936;
  std::vector<float> v = RandomVector(3 * vocab, 61, -10.0f, 10.0f);
  const int64_t where[3] = {vocab - 1, 12345, 0};
  for (int r = 0; r < 3; ++r) v[r * vocab + where[r]] = 20.0f;
  v[1 * vocab + 99999] = 20.0f;  // a later tie
  Tensor logits = FromVector({3, vocab}, v);
  std::vector<int32_t> out(3);
  backend->Argmax(logits, out);
  EXPECT_EQ(out, (std::vector<int32_t>{vocab - 1, 12345, 0}));
  std::vector<int32_t> one(1);
  backend->Argmax(logits.Rows(1, 2), one);
  EXPECT_EQ(one[0], 12345);
  EXPECT_THROW(backend->Argmax(logits, one), std::invalid_argument);
}

}  // namespace
}  // namespace shardlm
