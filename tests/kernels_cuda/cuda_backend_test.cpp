// The CUDA backend, op by op, against the CPU backend on random inputs. Tolerances: f32 ops
// agree to 1e-5 relative to the largest magnitude of the reference output (the summation
// orders differ); Linear with bf16 / f16 weights to 2e-2 (the CUDA path also rounds the
// activations to 16 bits). Every test skips without a CUDA device.
#include "kernels/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"
#include "kernels/tensor.h"

namespace shardlm {
namespace {

constexpr float kF32Tol = 1e-5f;
constexpr float kHalfTol = 2e-2f;

Tensor Random(std::vector<int64_t> shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::Empty(std::move(shape), DType::kF32);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

// A 16-bit copy of an f32 host tensor.
Tensor ToHalf(const Tensor& t, DType dtype) {
  Tensor out = Tensor::Empty(t.shape(), dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = t.data<float>()[i];
    out.data<uint16_t>()[i] = dtype == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
  }
  return out;
}

// |got - want| <= tol * max(1, max |want|), element by element.
void ExpectClose(const Tensor& got, const Tensor& want, float tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  float scale = 1.0f;
  for (int64_t i = 0; i < want.numel(); ++i)
    scale = std::max(scale, std::abs(want.data<float>()[i]));
  int bad = 0;
  for (int64_t i = 0; i < want.numel() && bad < 10; ++i) {
    const float g = got.data<float>()[i], w = want.data<float>()[i];
    if (!(std::abs(g - w) <= tol * scale)) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", CPU gives " << w
                    << " (tolerance " << tol * scale << ")";
      ++bad;
    }
  }
}

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) {
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gives 0 or an error)";
    }
    cuda_ = CreateCudaBackend(0);
    cpu_ = CreateCpuBackend(2);
  }

  std::unique_ptr<Backend> cuda_;
  std::unique_ptr<Backend> cpu_;
  std::mt19937 rng_{1234};
};

TEST(CudaBackendNoDevice, CreateThrowsWithoutDevice) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THROW(CreateCudaBackend(0), std::runtime_error);
}

TEST_F(CudaBackendTest, AllocateIsZeroAndRoundTrips) {
  Tensor z = cuda_->Allocate({3, 5});
  EXPECT_EQ(z.device(), Device::kCuda);
  Tensor zh = cuda_->ToHost(z);
  for (int64_t i = 0; i < zh.numel(); ++i) EXPECT_EQ(zh.data<float>()[i], 0.0f);
  Tensor x = Random({4, 7}, rng_);
  Tensor back = cuda_->ToHost(cuda_->ToDevice(x));
  ExpectClose(back, x, 0.0f, "round trip");
  EXPECT_THROW(CreateCudaBackend(1 << 20), std::runtime_error);
}

TEST_F(CudaBackendTest, PrepareWeightRejectsQuantized) {
  Tensor q = Tensor::Empty({2, 32}, DType::kQ8_0);
  EXPECT_THROW(cuda_->PrepareWeight(q), std::invalid_argument);
}

TEST_F(CudaBackendTest, LinearF32) {
  for (int64_t n : {1, 5, 33}) {
    Tensor x = Random({n, 96}, rng_), w = Random({70, 96}, rng_), b = Random({70}, rng_);
    Tensor want = cpu_->Allocate({n, 70});
    Tensor wc = cpu_->PrepareWeight(w), bc = cpu_->PrepareWeight(b);
    cpu_->Linear(x, wc, &bc, want);
    Tensor xd = cuda_->ToDevice(x), wd = cuda_->PrepareWeight(w), bd = cuda_->PrepareWeight(b);
    Tensor yd = cuda_->Allocate({n, 70});
    cuda_->Linear(xd, wd, &bd, yd);
    ExpectClose(cuda_->ToHost(yd), want, kF32Tol, "Linear f32 n=" + std::to_string(n));
    cuda_->Linear(xd, wd, nullptr, yd);
    cpu_->Linear(x, wc, nullptr, want);
    ExpectClose(cuda_->ToHost(yd), want, kF32Tol, "Linear f32 no bias");
  }
}

TEST_F(CudaBackendTest, LinearHalfWeights) {
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Tensor x = Random({9, 128}, rng_), w = ToHalf(Random({40, 128}, rng_), dt);
    Tensor b = ToHalf(Random({40}, rng_), dt);
    Tensor want = cpu_->Allocate({9, 40});
    Tensor wc = cpu_->PrepareWeight(w), bc = cpu_->PrepareWeight(b);
    cpu_->Linear(x, wc, &bc, want);
    Tensor wd = cuda_->PrepareWeight(w);
    EXPECT_EQ(wd.dtype(), dt);
    Tensor bd = cuda_->PrepareWeight(b);
    EXPECT_EQ(bd.dtype(), DType::kF32);
    Tensor yd = cuda_->Allocate({9, 40});
    cuda_->Linear(cuda_->ToDevice(x), wd, &bd, yd);
    ExpectClose(cuda_->ToHost(yd), want, kHalfTol, std::string("Linear ") + DTypeName(dt));
  }
}

TEST_F(CudaBackendTest, RmsNormInPlace) {
  Tensor x = Random({6, 200}, rng_), w = Random({200}, rng_);
  Tensor want = cpu_->Allocate({6, 200});
  cpu_->RmsNorm(x, w, 1e-6f, want);
  Tensor xd = cuda_->ToDevice(x);
  cuda_->RmsNorm(xd, cuda_->PrepareWeight(w), 1e-6f, xd);
  ExpectClose(cuda_->ToHost(xd), want, kF32Tol, "RmsNorm");
}

TEST_F(CudaBackendTest, Rope) {
  for (bool interleaved : {false, true}) {
    RopeConfig rope;
    rope.theta = 10000.0f;
    rope.rotary_dim = 48;  // partial rotary on a 64-wide head
    rope.interleaved = interleaved;
    rope.scaling = RopeConfig::Scaling::kLlama3;
    rope.factor = 8.0f;
    Tensor x = Random({4, 3, 64}, rng_);
    std::vector<int32_t> pos = {0, 7, 300, 4095};
    Tensor xd = cuda_->ToDevice(x);
    cpu_->Rope(x, pos, rope);
    cuda_->Rope(xd, pos, rope);
    ExpectClose(cuda_->ToHost(xd), x, kF32Tol, interleaved ? "Rope interleaved" : "Rope half");
  }
}

TEST_F(CudaBackendTest, Embedding) {
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    Tensor table = Random({50, 24}, rng_);
    if (dt != DType::kF32) table = ToHalf(table, dt);
    std::vector<int32_t> ids = {3, -1, 49, 0, 3};
    Tensor want = cpu_->Allocate({5, 24});
    cpu_->Embedding(cpu_->PrepareWeight(table), ids, want);
    Tensor yd = cuda_->Allocate({5, 24});
    cuda_->Embedding(cuda_->PrepareWeight(table), ids, yd);
    ExpectClose(cuda_->ToHost(yd), want, 0.0f, std::string("Embedding ") + DTypeName(dt));
  }
}

TEST_F(CudaBackendTest, SiluMulAndAdd) {
  Tensor g = Random({1000}, rng_, -6.0f, 6.0f), u = Random({1000}, rng_);
  Tensor want = cpu_->Allocate({1000});
  cpu_->SiluMul(g, u, want);
  Tensor gd = cuda_->ToDevice(g);
  cuda_->SiluMul(gd, cuda_->ToDevice(u), gd);  // y aliases gate
  ExpectClose(cuda_->ToHost(gd), want, kF32Tol, "SiluMul");
  cpu_->Add(want, u);
  cuda_->Add(gd, cuda_->ToDevice(u));
  ExpectClose(cuda_->ToHost(gd), want, kF32Tol, "Add");
}

TEST_F(CudaBackendTest, ArgmaxWithTiesAndValues) {
  Tensor l = Random({4, 5000}, rng_);
  l.data<float>()[1 * 5000 + 17] = 5.0f;  // a tie: the first index wins
  l.data<float>()[1 * 5000 + 4000] = 5.0f;
  l.data<float>()[2 * 5000 + 4999] = 9.0f;
  std::vector<int32_t> want(4), got(4);
  std::vector<float> want_v(4), got_v(4);
  cpu_->Argmax(l, want, want_v);
  cuda_->Argmax(cuda_->ToDevice(l), got, got_v);
  EXPECT_EQ(got, want);
  EXPECT_EQ(got_v, want_v);
  EXPECT_EQ(got[1], 17);
  std::vector<int32_t> only(4);
  cuda_->Argmax(cuda_->ToDevice(l), only);
  EXPECT_EQ(only, want);
}

struct AttnCase {
  int heads, kv_heads, head_dim, window;
};

TEST_F(CudaBackendTest, WriteKvAndAttention) {
  for (AttnCase c : {AttnCase{4, 4, 32, 0}, AttnCase{8, 2, 64, 0}, AttnCase{6, 3, 16, 5}}) {
    const int64_t max_seq = 40, n = 12;
    AttentionParams p{c.heads, c.kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim)),
                      c.window};
    // A prefill of positions 0..n-1 after some cache history, then a scattered decode batch.
    Tensor kc = Random({max_seq, c.kv_heads, c.head_dim}, rng_);
    Tensor vc = Random({max_seq, c.kv_heads, c.head_dim}, rng_);
    Tensor k = Random({n, c.kv_heads, c.head_dim}, rng_),
           v = Random({n, c.kv_heads, c.head_dim}, rng_);
    Tensor q = Random({n, c.heads, c.head_dim}, rng_);
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(3 + 2 * i);
    Tensor kcd = cuda_->ToDevice(kc), vcd = cuda_->ToDevice(vc);
    cpu_->WriteKv(k, v, pos, kc, vc);
    cuda_->WriteKv(cuda_->ToDevice(k), cuda_->ToDevice(v), pos, kcd, vcd);
    ExpectClose(cuda_->ToHost(kcd), kc, 0.0f, "WriteKv k");
    ExpectClose(cuda_->ToHost(vcd), vc, 0.0f, "WriteKv v");
    Tensor want = cpu_->Allocate({n, c.heads * c.head_dim});
    cpu_->Attention(q, kc, vc, pos, p, want);
    Tensor od = cuda_->Allocate({n, c.heads * c.head_dim});
    cuda_->Attention(cuda_->ToDevice(q), kcd, vcd, pos, p, od);
    ExpectClose(cuda_->ToHost(od), want, kF32Tol,
                "Attention heads=" + std::to_string(c.heads) + " kv=" + std::to_string(c.kv_heads) +
                    " window=" + std::to_string(c.window));
  }
}

// More keys than 48 KiB of shared memory holds: the kernel opts in to the larger limit.
TEST_F(CudaBackendTest, AttentionLongContext) {
  const int64_t max_seq = 16000;
  AttentionParams p{2, 1, 64, 0.125f, 0};
  Tensor kc = Random({max_seq, 1, 64}, rng_), vc = Random({max_seq, 1, 64}, rng_);
  Tensor q = Random({2, 2, 64}, rng_);
  std::vector<int32_t> pos = {15999, 12000};
  Tensor want = cpu_->Allocate({2, 128});
  cpu_->Attention(q, kc, vc, pos, p, want);
  Tensor od = cuda_->Allocate({2, 128});
  cuda_->Attention(cuda_->ToDevice(q), cuda_->ToDevice(kc), cuda_->ToDevice(vc), pos, p, od);
  ExpectClose(cuda_->ToHost(od), want, kF32Tol, "Attention over 16000 keys");
}

TEST_F(CudaBackendTest, PagedAttention) {
  for (AttnCase c : {AttnCase{4, 2, 32, 0}, AttnCase{4, 1, 64, 7}}) {
    const int bs = 4, blocks = 12;
    Tensor kc = Random({blocks * bs, c.kv_heads, c.head_dim}, rng_);
    Tensor vc = Random({blocks * bs, c.kv_heads, c.head_dim}, rng_);
    // Two sequences over shuffled blocks: seq 0 owns 5 blocks, seq 1 owns 4.
    std::vector<int32_t> tables = {7, 2, 9, 0, 11, 5, 1, 10, 3};
    std::vector<int32_t> begin = {0, 5, 9};
    std::vector<int32_t> positions = {0, 13, 19, 2, 15, 9};
    std::vector<int32_t> seq = {0, 0, 0, 1, 1, 1};
    const int64_t n = static_cast<int64_t>(positions.size());
    PagedKvLayout layout{bs, positions, seq, begin, tables};
    AttentionParams p{c.heads, c.kv_heads, c.head_dim, 0.125f, c.window};
    Tensor q = Random({n, c.heads, c.head_dim}, rng_);
    Tensor want = cpu_->Allocate({n, c.heads * c.head_dim});
    cpu_->PagedAttention(q, kc, vc, layout, p, want);
    Tensor od = cuda_->Allocate({n, c.heads * c.head_dim});
    cuda_->PagedAttention(cuda_->ToDevice(q), cuda_->ToDevice(kc), cuda_->ToDevice(vc), layout, p,
                          od);
    ExpectClose(cuda_->ToHost(od), want, kF32Tol,
                "PagedAttention window=" + std::to_string(c.window));
  }
}

}  // namespace
}  // namespace shardlm
