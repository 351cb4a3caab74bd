// The CUDA backend, op by op, against the CPU backend on random inputs. Tolerances: f32 ops
// agree to 1e-5 relative to the largest magnitude of the reference output (the summation
// orders differ); Linear with bf16 / f16 / quantized weights to 1e-4 on every path (both
// backends see the same weight values and keep x in f32; only the summation orders differ, over
// up to 1024 terms), and its results for one row at different batch sizes to 1e-5 of each other
// (a rounding of x to 16 bits would differ by about 1e-3); attention over bf16 / f16 KV
// caches to 2e-2 against the CPU over f32 caches, and to 1e-4 against the CPU over f32 caches
// holding the same 16-bit-rounded values (only the rounding in WriteKv differs then). Every
// test skips without a CUDA device.
#include "kernels/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quant/codec.h"
#include "base/check.h"
#include "base/dtype.h"
#include "base/tensor.h"
#include "tests/kernels_cuda/logit_compare.h"

namespace shardlm {
namespace {

using cudatest::ExpectClose;

constexpr float kF32Tol = 1e-5f;
constexpr float kHalfTol = 2e-2f;
// Linear with 16-bit or quantized weights against the CPU on the same weights.
constexpr float kLinearTol = 1e-4f;
// One row of Linear computed at two batch sizes (different kernels, f32 both).
constexpr float kBatchAgreementTol = 1e-5f;
// CUDA over 16-bit caches vs the CPU over f32 caches holding the same rounded values.
constexpr float kRoundedCacheTol = 1e-4f;

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

// A host f32 tensor holding the values of `t` rounded to `dtype` (f32: a copy).
Tensor RoundedTo(const Tensor& t, DType dtype) {
  Tensor out = Tensor::Empty(t.shape(), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = t.data<float>()[i];
    out.data<float>()[i] = dtype == DType::kBF16   ? Bf16ToF32(F32ToBf16(v))
                           : dtype == DType::kF16 ? F16ToF32(F32ToF16(v))
                                                  : v;
  }
  return out;
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

// Quantized matrices stay as their blocks on the device (the dequantizing GEMV reads them; see
// cuda_quant_test); a quantized tensor that is not a matrix is refused.
TEST_F(CudaBackendTest, PrepareWeightKeepsQuantizedMatrices) {
  Tensor q = Tensor::Empty({2, 32}, DType::kQ8_0);
  Tensor qd = cuda_->PrepareWeight(q);
  EXPECT_EQ(qd.dtype(), DType::kQ8_0);
  EXPECT_EQ(qd.device(), Device::kCuda);
  EXPECT_EQ(qd.shape(), q.shape());
  Tensor v = Tensor::Empty({32}, DType::kQ8_0);
  EXPECT_THROW(cuda_->PrepareWeight(v), std::invalid_argument);
  // 16-bit matrices stay 16-bit; 16-bit vectors (norms, biases) become f32.
  EXPECT_EQ(cuda_->PrepareWeight(Tensor::Empty({4, 8}, DType::kBF16)).dtype(), DType::kBF16);
  EXPECT_EQ(cuda_->PrepareWeight(Tensor::Empty({8}, DType::kF16)).dtype(), DType::kF32);
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
    ExpectClose(cuda_->ToHost(yd), want, kLinearTol, std::string("Linear ") + DTypeName(dt));
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

// A quantized table (GGUF keeps token_embd quantized; a tied LM head reads the same blocks):
// every block type the CUDA kernels read, rows gathered and dequantized on the device against
// the CPU backend's dequantization (f32 either way; only FMA contraction of the CPU's SIMD
// decoder may differ), -1 ids as zero rows, a repeated id, the first and last rows, and a batch
// of more rows than one launch's grid.y covers in one pass.
TEST_F(CudaBackendTest, EmbeddingQuantizedTables) {
  constexpr int64_t kVocab = 37, kDim = 512;
  for (DType dt : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1,
                   DType::kQ4_K, DType::kQ5_K, DType::kQ6_K}) {
    SCOPED_TRACE(DTypeName(dt));
    const Tensor f32 = Random({kVocab, kDim}, rng_);
    Tensor table = Tensor::Empty({kVocab, kDim}, dt);
    for (int64_t r = 0; r < kVocab; ++r) {
      quant::QuantizeRow(dt, f32.data<float>() + r * kDim,
                         static_cast<char*>(table.raw()) + DTypeBytes(dt, r * kDim), kDim);
    }
    const Tensor cpu_table = cpu_->PrepareWeight(table);
    const Tensor cuda_table = cuda_->PrepareWeight(table);
    ASSERT_EQ(cuda_table.dtype(), dt);
    for (const std::vector<int32_t>& ids :
         {std::vector<int32_t>{3, -1, 36, 0, 3}, std::vector<int32_t>{-1},
          std::vector<int32_t>{}}) {
      const int64_t n = static_cast<int64_t>(ids.size());
      Tensor want = cpu_->Allocate({n, kDim});
      cpu_->Embedding(cpu_table, ids, want);
      Tensor yd = cuda_->Allocate({n, kDim});
      cuda_->Embedding(cuda_table, ids, yd);
      ExpectClose(cuda_->ToHost(yd), want, 1e-6f,
                  std::string("Embedding ") + DTypeName(dt) + " n=" + std::to_string(n));
    }
    // More rows than grid.y (65535): the kernel's row loop.
    std::vector<int32_t> many(70000);
    for (size_t i = 0; i < many.size(); ++i) {
      many[i] = static_cast<int32_t>(i * 7 % (kVocab + 1)) - 1;  // -1 .. vocab - 1
    }
    const int64_t n = static_cast<int64_t>(many.size());
    Tensor want = cpu_->Allocate({n, kDim});
    cpu_->Embedding(cpu_table, many, want);
    Tensor yd = cuda_->Allocate({n, kDim});
    cuda_->Embedding(cuda_table, many, yd);
    ExpectClose(cuda_->ToHost(yd), want, 1e-6f, std::string("Embedding ") + DTypeName(dt) +
                                                    " n=" + std::to_string(n));
  }
  // A y of the wrong width is refused, naming the op.
  Tensor table = Tensor::Empty({4, 32}, DType::kQ8_0);
  std::memset(table.raw(), 0, table.nbytes());
  const Tensor td = cuda_->PrepareWeight(table);
  Tensor bad = cuda_->Allocate({1, 31});
  try {
    cuda_->Embedding(td, std::vector<int32_t>{0}, bad);
    ADD_FAILURE() << "a y of the wrong width was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("Embedding"), std::string::npos) << e.what();
  }
}

// An op that throws while a graph is recorded must not leave the stream capturing (every later
// op, eager or recorded, would fail): a shape error (thrown before anything is enqueued: the
// capture is still valid) and a synchronize (a call that invalidates the capture). After
// AbortCapture the recorded ops never ran, eager ops and their launch checks work, a tensor
// allocated inside the dropped capture can be freed, and a fresh capture records and replays.
TEST_F(CudaBackendTest, AbortCaptureAfterAnOpThrew) {
  const Tensor x = Random({1000}, rng_), y = Random({1000}, rng_);
  Tensor x_plus_y = cpu_->ToDevice(x), x_plus_2y = cpu_->ToDevice(x);
  cpu_->Add(x_plus_y, y);
  cpu_->Add(x_plus_2y, y);
  cpu_->Add(x_plus_2y, y);
  Tensor xd = cuda_->ToDevice(x);
  const Tensor yd = cuda_->ToDevice(y);
  const Tensor bad = cuda_->Allocate({999});
  for (int how = 0; how < 2; ++how) {
    SCOPED_TRACE(how == 0 ? "shape error while capturing" : "synchronize while capturing");
    {
      ASSERT_TRUE(cuda_->BeginCapture());
      Tensor inside = cuda_->AllocateUninitialized({64});  // a graph node; freed after the abort
      cuda_->Add(xd, yd);                                  // recorded, never run
      if (how == 0) {
        EXPECT_THROW(cuda_->Add(xd, bad), std::invalid_argument);
      } else {
        EXPECT_THROW(cuda_->Synchronize(), CheckFailure);
      }
      cuda_->AbortCapture();
    }
    cuda_->AbortCapture();  // nothing open: a no-op
    ExpectClose(cuda_->ToHost(xd), x, 0.0f, "x after the aborted capture");
    Tensor sum = cuda_->ToDevice(x);
    cuda_->Add(sum, yd);
    ExpectClose(cuda_->ToHost(sum), x_plus_y, kF32Tol, "eager Add after the aborted capture");

    Tensor acc = cuda_->ToDevice(x);
    cuda_->Synchronize();
    ASSERT_TRUE(cuda_->BeginCapture());
    cuda_->Add(acc, yd);
    std::unique_ptr<BackendGraph> graph = cuda_->EndCapture();
    ASSERT_NE(graph, nullptr);
    graph->Replay();
    graph->Replay();
    ExpectClose(cuda_->ToHost(acc), x_plus_2y, kF32Tol, "a fresh capture replayed twice");
  }
  // Capture calls out of order are refused, naming the call.
  EXPECT_THROW(cuda_->EndCapture(), std::logic_error);
  ASSERT_TRUE(cuda_->BeginCapture());
  EXPECT_THROW(cuda_->BeginCapture(), std::logic_error);
  cuda_->AbortCapture();
  Tensor after = cuda_->ToDevice(x);
  cuda_->Add(after, yd);
  ExpectClose(cuda_->ToHost(after), x_plus_y, kF32Tol, "eager Add at the end");
}

// Index copies go through pinned staging slots, asynchronously: with the stream kept busy (the
// copies queue behind GEMMs), more writes than there are slots, of growing sizes, and no
// synchronization in between, every tensor must receive its own values (a slot refilled while
// its copy still waits would hand a later tensor's values to an earlier one). Then the graph
// pattern: WriteIndices before each replay, with no host wait between replays, each replay
// accumulating the rows its indices name. Values are read back through an f32 Embedding over a
// table whose row i holds i.
TEST_F(CudaBackendTest, IndexCopiesThroughPinnedStaging) {
  constexpr int64_t kVocab = 5000;
  Tensor table = Tensor::Empty({kVocab, 1}, DType::kF32);
  for (int64_t i = 0; i < kVocab; ++i) table.data<float>()[i] = static_cast<float>(i);
  const Tensor td = cuda_->PrepareWeight(table);
  const Tensor a = cuda_->ToDevice(Random({1024, 1024}, rng_));
  Tensor busy = cuda_->Allocate({1024, 1024});

  std::vector<std::vector<int32_t>> values;
  std::vector<Tensor> dst;
  for (int k = 0; k < 12; ++k) {
    cuda_->Linear(a, a, nullptr, busy);  // keeps the stream busy: the copies below wait
    std::vector<int32_t> v(static_cast<size_t>(100 + 400 * k));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int32_t>((i * 7 + k * 131) % kVocab);
    values.push_back(v);
    if (k % 3 == 0) {
      dst.push_back(cuda_->UploadIndices(v));
    } else {
      dst.push_back(cuda_->Allocate({static_cast<int64_t>(v.size())}, DType::kI32));
      cuda_->WriteIndices(v, dst.back());
    }
    std::fill(v.begin(), v.end(), -7);  // the host array may be reused as soon as the call returns
  }
  for (size_t k = 0; k < dst.size(); ++k) {
    Tensor y = cuda_->Allocate({dst[k].numel(), 1});
    cuda_->Embedding(td, dst[k], y);
    const Tensor h = cuda_->ToHost(y);
    for (size_t i = 0; i < values[k].size(); ++i) {
      ASSERT_EQ(h.data<float>()[i], static_cast<float>(values[k][i]))
          << "index tensor " << k << " element " << i;
    }
  }

  // WriteIndices between replays of a graph that reads the indices.
  constexpr int64_t kRows = 300;
  Tensor idx = cuda_->Allocate({kRows}, DType::kI32);
  Tensor rows = cuda_->Allocate({kRows, 1});
  Tensor acc = cuda_->Allocate({kRows, 1});
  cuda_->WriteIndices(std::vector<int32_t>(kRows, 0), idx);
  cuda_->Synchronize();
  ASSERT_TRUE(cuda_->BeginCapture());
  cuda_->Embedding(td, idx, rows);
  cuda_->Add(acc, rows);
  std::unique_ptr<BackendGraph> graph = cuda_->EndCapture();
  ASSERT_NE(graph, nullptr);
  std::vector<double> want(kRows, 0.0);
  for (int r = 0; r < 10; ++r) {
    cuda_->Linear(a, a, nullptr, busy);
    std::vector<int32_t> v(kRows);
    for (int64_t i = 0; i < kRows; ++i) {
      v[i] = static_cast<int32_t>((i * 13 + r * 17) % 1000);
      want[i] += v[i];
    }
    cuda_->WriteIndices(v, idx);
    graph->Replay();
  }
  const Tensor got = cuda_->ToHost(acc);
  for (int64_t i = 0; i < kRows; ++i) {
    ASSERT_EQ(got.data<float>()[i], static_cast<float>(want[i])) << "row " << i;
  }
  // Index writes are refused while capturing (the copy would read the staging slot at replay).
  ASSERT_TRUE(cuda_->BeginCapture());
  EXPECT_THROW(cuda_->WriteIndices(std::vector<int32_t>{1}, idx), std::logic_error);
  EXPECT_THROW(cuda_->UploadIndices(std::vector<int32_t>{1}), std::logic_error);
  cuda_->AbortCapture();
}

TEST_F(CudaBackendTest, GluMulAndAdd) {
  Tensor g = Random({1000}, rng_, -6.0f, 6.0f), u = Random({1000}, rng_);
  Tensor want = cpu_->Allocate({1000});
  cpu_->GluMul(g, u, Activation::kSilu, want);
  Tensor gd = cuda_->ToDevice(g);
  cuda_->GluMul(gd, cuda_->ToDevice(u), Activation::kSilu, gd);  // y aliases gate
  ExpectClose(cuda_->ToHost(gd), want, kF32Tol, "GluMul");
  cpu_->Add(want, u);
  cuda_->Add(gd, cuda_->ToDevice(u));
  ExpectClose(cuda_->ToHost(gd), want, kF32Tol, "Add");
}

// The fused layer ops against the CPU's: RopeWriteKv into f32, bf16 and f16 caches (read back
// through Embedding, which gathers cache rows as f32), partial rotary, both pair layouts, llama3
// scaling; GluMulPacked.
TEST_F(CudaBackendTest, RopeWriteKvAndGluMulPacked) {
  const int64_t n = 5, heads = 6, kv_heads = 2, hd = 64, rows = 24;
  const int64_t kv_width = kv_heads * hd;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (bool interleaved : {false, true}) {
      const std::string what =
          std::string("RopeWriteKv ") + DTypeName(dt) + (interleaved ? " interleaved" : " half");
      RopeConfig rope;
      rope.theta = 10000.0f;
      rope.rotary_dim = 48;  // partial rotary on a 64-wide head
      rope.interleaved = interleaved;
      rope.scaling = RopeConfig::Scaling::kLlama3;
      rope.factor = 8.0f;
      Tensor qkv = Random({n, (heads + 2 * kv_heads) * hd}, rng_);
      const std::vector<int32_t> pos = {0, 7, 300, 4095, 12}, cache_rows = {3, 0, 23, 9, 10};
      Tensor q = cpu_->Allocate({n, heads, hd});
      Tensor kc = cpu_->Allocate({rows, kv_heads, hd}), vc = cpu_->Allocate({rows, kv_heads, hd});
      cpu_->RopeWriteKv(qkv, pos, rope, cache_rows, kc, vc, q);

      Tensor qd = cuda_->Allocate({n, heads, hd});
      Tensor kcd = cuda_->Allocate({rows, kv_heads, hd}, dt);
      Tensor vcd = cuda_->Allocate({rows, kv_heads, hd}, dt);
      cuda_->RopeWriteKv(cuda_->ToDevice(qkv), pos, rope, cache_rows, kcd, vcd, qd);
      ExpectClose(cuda_->ToHost(qd), q, kF32Tol, what + " q");
      std::vector<int32_t> every(rows);
      std::iota(every.begin(), every.end(), 0);
      const float tol = dt == DType::kF32 ? kF32Tol : kHalfTol;
      for (auto [cache, want, name] :
           {std::tuple{&kcd, &kc, " k_cache"}, std::tuple{&vcd, &vc, " v_cache"}}) {
        Tensor got = cuda_->Allocate({rows, kv_width});
        cuda_->Embedding(cache->Reshape({rows, kv_width}), every, got);
        ExpectClose(cuda_->ToHost(got).Reshape({rows, kv_heads, hd}), *want, tol, what + name);
      }
    }
  }
  Tensor gate_up = Random({3, 2 * 700}, rng_, -6.0f, 6.0f);
  Tensor want = cpu_->Allocate({3, 700});
  cpu_->GluMulPacked(gate_up, Activation::kSilu, want);
  Tensor yd = cuda_->Allocate({3, 700});
  cuda_->GluMulPacked(cuda_->ToDevice(gate_up), Activation::kSilu, yd);
  ExpectClose(cuda_->ToHost(yd), want, kF32Tol, "GluMulPacked");
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

// One sequence over blocks 0, 1, 2, ... of a cache of `rows` rows (key position j at cache row
// j), queries at `positions`.
struct InOrderSequence {
  int bs;
  std::vector<int32_t> positions, seq, begin, table;

  InOrderSequence(int block_size, int64_t rows, std::vector<int32_t> query_positions)
      : bs(block_size), positions(std::move(query_positions)) {
    table.resize(static_cast<size_t>(rows / bs));
    std::iota(table.begin(), table.end(), 0);
    seq.assign(positions.size(), 0);
    begin = {0, static_cast<int32_t>(table.size())};
  }
  PagedKvLayout Layout() const { return PagedKvLayout{bs, positions, seq, begin, table}; }
};

TEST_F(CudaBackendTest, WriteKvAndPagedAttentionInOrder) {
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
    const InOrderSequence one(8, max_seq, pos);
    Tensor want = cpu_->Allocate({n, c.heads * c.head_dim});
    cpu_->PagedAttention(q, kc, vc, one.Layout(), p, want);
    Tensor od = cuda_->Allocate({n, c.heads * c.head_dim});
    cuda_->PagedAttention(cuda_->ToDevice(q), kcd, vcd, one.Layout(), p, od);
    ExpectClose(cuda_->ToHost(od), want, kF32Tol,
                "PagedAttention in order heads=" + std::to_string(c.heads) +
                    " kv=" + std::to_string(c.kv_heads) + " window=" + std::to_string(c.window));
  }
}

// Many keys per query (the online softmax has no limit on the keys).
TEST_F(CudaBackendTest, PagedAttentionLongContextInOrder) {
  const int64_t max_seq = 16000;
  AttentionParams p{2, 1, 64, 0.125f, 0};
  Tensor kc = Random({max_seq, 1, 64}, rng_), vc = Random({max_seq, 1, 64}, rng_);
  Tensor q = Random({2, 2, 64}, rng_);
  const InOrderSequence one(16, max_seq, {15999, 12000});
  Tensor want = cpu_->Allocate({2, 128});
  cpu_->PagedAttention(q, kc, vc, one.Layout(), p, want);
  Tensor od = cuda_->Allocate({2, 128});
  cuda_->PagedAttention(cuda_->ToDevice(q), cuda_->ToDevice(kc), cuda_->ToDevice(vc),
                        one.Layout(), p, od);
  ExpectClose(cuda_->ToHost(od), want, kF32Tol, "PagedAttention over 16000 keys");
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


TEST_F(CudaBackendTest, AddRmsNormMatchesCpu) {
  const int64_t shapes[][2] = {{1, 256}, {7, 1000}, {33, 4096}};
  for (const auto& [n, d] : shapes) {
    const std::string what = std::to_string(n) + "x" + std::to_string(d);
    Tensor x = Random({n, d}, rng_), delta = Random({n, d}, rng_), w = Random({d}, rng_);
    Tensor xd = cuda_->ToDevice(x), wd = cuda_->PrepareWeight(w);
    // y aliasing delta, as the model calls it.
    Tensor dd = cuda_->ToDevice(delta);
    Tensor want = cpu_->Allocate({n, d});
    cpu_->AddRmsNorm(x, delta, w, 1e-5f, want);
    cuda_->AddRmsNorm(xd, dd, wd, 1e-5f, dd);
    ExpectClose(cuda_->ToHost(xd), x, kF32Tol, "AddRmsNorm x += delta " + what);
    ExpectClose(cuda_->ToHost(dd), want, kF32Tol, "AddRmsNorm y (aliasing delta) " + what);
    // A separate y; delta stays as it was.
    Tensor dd2 = cuda_->ToDevice(delta);
    Tensor yd = cuda_->Allocate({n, d});
    cpu_->AddRmsNorm(x, delta, w, 1e-5f, want);
    cuda_->AddRmsNorm(xd, dd2, wd, 1e-5f, yd);
    ExpectClose(cuda_->ToHost(xd), x, kF32Tol, "AddRmsNorm x += delta again " + what);
    ExpectClose(cuda_->ToHost(yd), want, kF32Tol, "AddRmsNorm y " + what);
    ExpectClose(cuda_->ToHost(dd2), delta, 0.0f, "AddRmsNorm leaves delta " + what);
  }
  Tensor xd = cuda_->Allocate({2, 8}), wd = cuda_->Allocate({8}), yd = cuda_->Allocate({2, 8});
  Tensor short_delta = cuda_->Allocate({1, 8}), w4 = cuda_->Allocate({4});
  Tensor host_delta = Tensor::Empty({2, 8}, DType::kF32);
  EXPECT_THROW(cuda_->AddRmsNorm(xd, short_delta, wd, 1e-5f, yd), std::invalid_argument);
  EXPECT_THROW(cuda_->AddRmsNorm(xd, yd, w4, 1e-5f, yd), std::invalid_argument);
  EXPECT_THROW(cuda_->AddRmsNorm(xd, host_delta, wd, 1e-5f, yd), std::invalid_argument);
}

TEST_F(CudaBackendTest, KvCacheDtypes) {
  EXPECT_EQ(cuda_->kv_cache_dtype(), DType::kBF16);  // the default
  EXPECT_EQ(CreateCudaBackend(0, DType::kF16)->kv_cache_dtype(), DType::kF16);
  EXPECT_EQ(CreateCudaBackend(0, DType::kF32)->kv_cache_dtype(), DType::kF32);
  EXPECT_THROW(CreateCudaBackend(0, DType::kQ8_0), std::invalid_argument);
  EXPECT_EQ(cpu_->kv_cache_dtype(), DType::kF32);
}

// The 16-bit GEMV (n = 1..4, in % 8 == 0), the tiled matmul (n = 5, 64) and the f32-converted
// SGEMM (in % 8 != 0) against the CPU, with and without bias.
TEST_F(CudaBackendTest, LinearHalfGemvAndGemm) {
  struct Shape {
    int64_t n, in, out;
  };
  const Shape shapes[] = {{1, 256, 300}, {2, 256, 300}, {3, 256, 300}, {4, 256, 300},
                          {5, 256, 300}, {64, 256, 300}, {1, 512, 1000}, {4, 1024, 37},
                          {2, 100, 50} /* in % 8 != 0: cuBLAS */};
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (const Shape& sh : shapes) {
      const std::string what = std::string("Linear ") + DTypeName(dt) + " n=" +
                               std::to_string(sh.n) + " in=" + std::to_string(sh.in) +
                               " out=" + std::to_string(sh.out);
      Tensor x = Random({sh.n, sh.in}, rng_);
      Tensor w = ToHalf(Random({sh.out, sh.in}, rng_), dt);
      Tensor b = Random({sh.out}, rng_);
      Tensor wc = cpu_->PrepareWeight(w), bc = cpu_->PrepareWeight(b);
      Tensor want = cpu_->Allocate({sh.n, sh.out});
      Tensor wd = cuda_->PrepareWeight(w), bd = cuda_->PrepareWeight(b);
      ASSERT_EQ(wd.dtype(), dt);
      Tensor xd = cuda_->ToDevice(x);
      Tensor yd = cuda_->Allocate({sh.n, sh.out});
      cpu_->Linear(x, wc, &bc, want);
      cuda_->Linear(xd, wd, &bd, yd);
      ExpectClose(cuda_->ToHost(yd), want, kLinearTol, what + " bias");
      cpu_->Linear(x, wc, nullptr, want);
      cuda_->Linear(xd, wd, nullptr, yd);
      ExpectClose(cuda_->ToHost(yd), want, kLinearTol, what);
    }
  }
}

// A host matrix [rows, cols] of `dtype` (quantized with the CPU codec, or rounded to 16 bits)
// made from uniform values in [lo, hi); every third row all positive, so that the K types also
// see zero mins.
Tensor RandomWeight(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng, float lo = -1.0f,
                    float hi = 1.0f) {
  Tensor f = Random({rows, cols}, rng, lo, hi);
  for (int64_t r = 0; r < rows; r += 3) {
    for (int64_t c = 0; c < cols; ++c) {
      float& v = f.data<float>()[r * cols + c];
      v = 0.3f * v + 0.5f * hi;
    }
  }
  if (dtype == DType::kF32) return f;
  if (dtype == DType::kBF16 || dtype == DType::kF16) return ToHalf(f, dtype);
  Tensor q = Tensor::Empty({rows, cols}, dtype);
  const size_t row_bytes = DTypeBytes(dtype, cols);
  for (int64_t r = 0; r < rows; ++r) {
    quant::QuantizeRow(dtype, f.data<float>() + r * cols,
                       static_cast<uint8_t*>(q.raw()) + r * row_bytes, cols);
  }
  return q;
}

// The first n rows of x [m, d] as a new host tensor [n, d].
Tensor FirstRows(const Tensor& x, int64_t n) {
  Tensor out = Tensor::Empty({n, x.dim(1)}, DType::kF32);
  std::copy_n(x.data<float>(), n * x.dim(1), out.data<float>());
  return out;
}

// Linear over w (host, any weight dtype) on the CPU and on CUDA for every n in `ns`, with a bias,
// each against the CPU to kLinearTol.
void CheckLinearAgainstCpu(Backend& cpu, Backend& cuda, const Tensor& w,
                           const std::vector<int64_t>& ns, std::mt19937& rng,
                           const std::string& name) {
  const int64_t out = w.dim(0), in = w.dim(1);
  const int64_t max_n = *std::max_element(ns.begin(), ns.end());
  Tensor x_all = Random({max_n, in}, rng), b = Random({out}, rng);
  Tensor wc = cpu.PrepareWeight(w), bc = cpu.PrepareWeight(b);
  Tensor wd = cuda.PrepareWeight(w), bd = cuda.PrepareWeight(b);
  ASSERT_EQ(wd.dtype(), w.dtype()) << name;
  for (int64_t n : ns) {
    const std::string what = "Linear " + name + " W [" + std::to_string(out) + ", " +
                             std::to_string(in) + "] n=" + std::to_string(n);
    Tensor x = FirstRows(x_all, n);
    Tensor want = cpu.Allocate({n, out});
    cpu.Linear(x, wc, &bc, want);
    Tensor yd = cuda.AllocateUninitialized({n, out}, DType::kF32);
    cuda.Linear(cuda.ToDevice(x), wd, &bd, yd);
    ExpectClose(cuda.ToHost(yd), want, kLinearTol, what);
  }
}

const DType kQuantTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                             DType::kQ5_1, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

// Every weight type on every path of Linear: the decode GEMVs (n <= 4 16-bit, <= 8 quantized),
// the tiled matmul (up to 64; tiles of 16 or 32 rows of x, partial ones), and the f32-converted
// SGEMM (65, 200). out = 300 is no multiple of the 32-row tiles; in = 800 ends the rows of
// 32-element blocks and 16-bit rows with a short step of the tiled matmul (800 = 3 * 256 + 32).
TEST_F(CudaBackendTest, LinearEveryWeightTypeAndBatchMatchesCpu) {
  const std::vector<int64_t> ns = {1, 4, 5, 8, 9, 16, 33, 64, 65, 200};
  for (DType dt : kQuantTypes) {
    const int64_t in = DTypeBlockElements(dt) == 256 ? 768 : 800;
    CheckLinearAgainstCpu(*cpu_, *cuda_, RandomWeight(dt, 300, in, rng_), ns, rng_, DTypeName(dt));
  }
  for (DType dt : {DType::kBF16, DType::kF16}) {
    CheckLinearAgainstCpu(*cpu_, *cuda_, RandomWeight(dt, 300, 800, rng_), ns, rng_, DTypeName(dt));
  }
}

// An LM head: 32011 output rows (no multiple of any tile), and at n = 65 the f32-converted SGEMM
// runs in several blocks of rows (16 MiB of f32 each: 8192 rows of 512), the last one partial.
TEST_F(CudaBackendTest, LinearLmHeadShapeMatchesCpu) {
  const std::vector<int64_t> ns = {1, 5, 9, 33, 65};
  for (DType dt : kQuantTypes) {
    const int64_t in = DTypeBlockElements(dt) == 256 ? 512 : 544;
    CheckLinearAgainstCpu(*cpu_, *cuda_, RandomWeight(dt, 32011, in, rng_), ns, rng_,
                          DTypeName(dt));
  }
  for (DType dt : {DType::kBF16, DType::kF16}) {
    CheckLinearAgainstCpu(*cpu_, *cuda_, RandomWeight(dt, 32011, 512, rng_), ns, rng_,
                          DTypeName(dt));
  }
}

// The rows of a batch do not depend on the batch size beyond f32 rounding: the same x rows
// through the GEMVs (n = 1, 4; 5 too for Q4_K), the tiled matmul (5, 9, 64) and the f32 SGEMM
// (65) give the same results for their common rows. Rounding x to bf16 / f16 on one of the paths
// (as the cuBLAS path once did from n = 5 on, and from n = 9 for quantized weights) differs by
// about 1e-3 of the output scale.
TEST_F(CudaBackendTest, LinearResultsDoNotDependOnBatchSize) {
  for (DType dt : {DType::kBF16, DType::kF16, DType::kQ4_K}) {
    const int64_t out = 257, in = 1024;
    Tensor w = RandomWeight(dt, out, in, rng_);
    Tensor wd = cuda_->PrepareWeight(w), bd = cuda_->PrepareWeight(Random({out}, rng_));
    Tensor x_all = Random({65, in}, rng_);
    Tensor y4 = cuda_->AllocateUninitialized({4, out}, DType::kF32);
    cuda_->Linear(cuda_->ToDevice(FirstRows(x_all, 4)), wd, &bd, y4);
    const Tensor ref = cuda_->ToHost(y4);
    for (int64_t n : {1, 5, 9, 64, 65}) {
      Tensor y = cuda_->AllocateUninitialized({n, out}, DType::kF32);
      cuda_->Linear(cuda_->ToDevice(FirstRows(x_all, n)), wd, &bd, y);
      const Tensor got = cuda_->ToHost(y);
      const int64_t common = std::min<int64_t>(n, 4);
      ExpectClose(
          FirstRows(got, common), FirstRows(ref, common), kBatchAgreementTol,
          std::string("Linear ") + DTypeName(dt) + " rows of n=" + std::to_string(n) + " vs n=4");
    }
  }
}

// f16 weights with activations past the f16 range (|x| up to 70000; f16 ends at 65504): every
// path keeps x in f32, so the results are finite and match the CPU.
TEST_F(CudaBackendTest, LinearF16WeightsWithActivationsBeyondF16Range) {
  for (int64_t in : {128, 100 /* in % 8 != 0: the f32-converted SGEMM at every n */}) {
    const int64_t out = 40;
    Tensor w = RandomWeight(DType::kF16, out, in, rng_);
    Tensor wc = cpu_->PrepareWeight(w), wd = cuda_->PrepareWeight(w);
    for (int64_t n : {1, 4, 5, 9, 65}) {
      const std::string what =
          "Linear f16 in=" + std::to_string(in) + " n=" + std::to_string(n) + " |x| <= 70000";
      Tensor x = Random({n, in}, rng_, -70000.0f, 70000.0f);
      x.data<float>()[0] = 70000.0f;
      Tensor want = cpu_->Allocate({n, out});
      cpu_->Linear(x, wc, nullptr, want);
      Tensor yd = cuda_->AllocateUninitialized({n, out}, DType::kF32);
      cuda_->Linear(cuda_->ToDevice(x), wd, nullptr, yd);
      const Tensor got = cuda_->ToHost(yd);
      for (int64_t i = 0; i < got.numel(); ++i) {
        ASSERT_TRUE(std::isfinite(got.data<float>()[i]))
            << what << ": element " << i << " is " << got.data<float>()[i];
      }
      ExpectClose(got, want, kLinearTol, what);
    }
  }
}

// A paged layout for the tests below: sequences of the given lengths over blocks of `bs` taken
// from a shuffled list, their K/V rows, and query tokens at `queries` (sequence, position).
struct PagedCase {
  int bs = 4;
  int64_t blocks = 0;
  std::vector<int32_t> tables, begin;
  std::vector<int32_t> kv_rows;  // cache row of every key of every sequence, in order
  std::vector<int32_t> positions, seq;

  PagedCase(int block_size, int64_t cache_blocks, const std::vector<int32_t>& lengths,
            const std::vector<std::pair<int32_t, int32_t>>& queries, int stride)
      : bs(block_size), blocks(cache_blocks) {
    // Block b of the shuffled order is (b * stride) % cache_blocks (stride coprime with it).
    int32_t next = 0;
    begin.push_back(0);
    for (int32_t len : lengths) {
      const int32_t nb = (len + bs - 1) / bs;
      for (int32_t b = 0; b < nb; ++b) {
        tables.push_back(static_cast<int32_t>((int64_t{next++} * stride) % cache_blocks));
      }
      begin.push_back(static_cast<int32_t>(tables.size()));
      for (int32_t j = 0; j < len; ++j) {
        kv_rows.push_back(tables[begin[begin.size() - 2] + j / bs] * bs + j % bs);
      }
    }
    for (const auto& [s, p] : queries) {
      seq.push_back(s);
      positions.push_back(p);
    }
  }
  PagedKvLayout Layout() const { return PagedKvLayout{bs, positions, seq, begin, tables}; }
  int64_t n() const { return static_cast<int64_t>(positions.size()); }
};

// WriteKv into bf16 and f16 caches on the device, then PagedAttention (index tensors made by
// UploadIndices / UploadLayout), against the CPU over f32 caches.
TEST_F(CudaBackendTest, WriteKvAndPagedAttentionHalfCaches) {
  for (AttnCase c : {AttnCase{4, 2, 32, 0}, AttnCase{8, 2, 64, 7}, AttnCase{4, 1, 128, 0},
                     AttnCase{6, 3, 16, 3}}) {
    // Seq 0: 19 keys (5 blocks), seq 1: 16 (4 blocks), seq 2: 1; queries anywhere in them.
    const PagedCase pc(4, 14, {19, 16, 1},
                       {{0, 0}, {0, 13}, {0, 18}, {1, 2}, {1, 15}, {1, 9}, {2, 0}}, 5);
    const int64_t rows = pc.blocks * pc.bs, keys = static_cast<int64_t>(pc.kv_rows.size());
    AttentionParams p{c.heads, c.kv_heads, c.head_dim, 1.0f / std::sqrt(float(c.head_dim)),
                      c.window};
    Tensor k = Random({keys, c.kv_heads, c.head_dim}, rng_, -2.0f, 2.0f);
    Tensor v = Random({keys, c.kv_heads, c.head_dim}, rng_);
    Tensor q = Random({pc.n(), c.heads, c.head_dim}, rng_, -2.0f, 2.0f);
    Tensor kc = cpu_->Allocate({rows, c.kv_heads, c.head_dim});
    Tensor vc = cpu_->Allocate({rows, c.kv_heads, c.head_dim});
    cpu_->WriteKv(k, v, pc.kv_rows, kc, vc);
    Tensor want = cpu_->Allocate({pc.n(), c.heads * c.head_dim});
    cpu_->PagedAttention(q, kc, vc, pc.Layout(), p, want);
    const Tensor qd = cuda_->ToDevice(q);
    const Tensor kv_rows = cuda_->UploadIndices(pc.kv_rows);
    const PagedKvIndices layout = cuda_->UploadLayout(pc.Layout());
    for (DType dt : {DType::kBF16, DType::kF16}) {
      const std::string what = std::string("PagedAttention ") + DTypeName(dt) + " cache heads=" +
                               std::to_string(c.heads) + " kv=" + std::to_string(c.kv_heads) +
                               " head_dim=" + std::to_string(c.head_dim) +
                               " window=" + std::to_string(c.window);
      Tensor kcd = cuda_->Allocate({rows, c.kv_heads, c.head_dim}, dt);
      Tensor vcd = cuda_->Allocate({rows, c.kv_heads, c.head_dim}, dt);
      cuda_->WriteKv(cuda_->ToDevice(k), cuda_->ToDevice(v), kv_rows, kcd, vcd);
      Tensor od = cuda_->Allocate({pc.n(), c.heads * c.head_dim});
      cuda_->PagedAttention(qd, kcd, vcd, layout, p, od);
      const Tensor got = cuda_->ToHost(od);
      ExpectClose(got, want, kHalfTol, what + " vs f32 caches");
      // The CPU over f32 caches that hold the rounded values: only the f32 arithmetic differs.
      Tensor kr = cpu_->Allocate({rows, c.kv_heads, c.head_dim});
      Tensor vr = cpu_->Allocate({rows, c.kv_heads, c.head_dim});
      cpu_->WriteKv(RoundedTo(k, dt), RoundedTo(v, dt), pc.kv_rows, kr, vr);
      Tensor want_rounded = cpu_->Allocate({pc.n(), c.heads * c.head_dim});
      cpu_->PagedAttention(q, kr, vr, pc.Layout(), p, want_rounded);
      ExpectClose(got, want_rounded, kRoundedCacheTol, what + " vs rounded f32 caches");
      // The host-span overloads give the same.
      Tensor od2 = cuda_->Allocate({pc.n(), c.heads * c.head_dim});
      cuda_->PagedAttention(qd, kcd, vcd, pc.Layout(), p, od2);
      ExpectClose(cuda_->ToHost(od2), got, 0.0f, what + " span overload");
    }
  }
}

// 3000 keys per query over a paged bf16 cache (and an f32 one), with and without a sliding
// window: the online-softmax kernel has no limit on the keys.
TEST_F(CudaBackendTest, PagedAttentionLongContext) {
  const int bs = 16;
  // Seq 0: 3000 keys (188 blocks), seq 1: 1500 (94 blocks), over 300 shuffled blocks.
  const PagedCase pc(bs, 300, {3000, 1500},
                     {{0, 2999}, {0, 2048}, {0, 1234}, {0, 0}, {1, 1499}, {1, 777}}, 7);
  const int64_t rows = pc.blocks * bs, keys = static_cast<int64_t>(pc.kv_rows.size());
  for (int window : {0, 1000}) {
    // scale 1: peaked softmax weights, so that reading a wrong key shows.
    AttentionParams p{8, 2, 64, 1.0f, window};
    Tensor k = Random({keys, 2, 64}, rng_), v = Random({keys, 2, 64}, rng_);
    Tensor q = Random({pc.n(), 8, 64}, rng_);
    Tensor kc = cpu_->Allocate({rows, 2, 64}), vc = cpu_->Allocate({rows, 2, 64});
    cpu_->WriteKv(k, v, pc.kv_rows, kc, vc);
    Tensor want = cpu_->Allocate({pc.n(), 8 * 64});
    cpu_->PagedAttention(q, kc, vc, pc.Layout(), p, want);
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const std::string what = std::string("PagedAttention over 3000 keys, ") + DTypeName(dt) +
                               " cache, window " + std::to_string(window);
      Tensor kcd = cuda_->Allocate({rows, 2, 64}, dt), vcd = cuda_->Allocate({rows, 2, 64}, dt);
      cuda_->WriteKv(cuda_->ToDevice(k), cuda_->ToDevice(v), pc.kv_rows, kcd, vcd);
      Tensor od = cuda_->Allocate({pc.n(), 8 * 64});
      cuda_->PagedAttention(cuda_->ToDevice(q), kcd, vcd, pc.Layout(), p, od);
      const Tensor got = cuda_->ToHost(od);
      if (dt == DType::kF32) {
        ExpectClose(got, want, kF32Tol, what);
        continue;
      }
      ExpectClose(got, want, kHalfTol, what + " vs f32 caches");
      Tensor kr = cpu_->Allocate({rows, 2, 64}), vr = cpu_->Allocate({rows, 2, 64});
      cpu_->WriteKv(RoundedTo(k, dt), RoundedTo(v, dt), pc.kv_rows, kr, vr);
      Tensor want_rounded = cpu_->Allocate({pc.n(), 8 * 64});
      cpu_->PagedAttention(q, kr, vr, pc.Layout(), p, want_rounded);
      ExpectClose(got, want_rounded, kRoundedCacheTol, what + " vs rounded f32 caches");
    }
  }
}

// Attention over 3000 keys of a bf16 cache whose blocks are in order.
TEST_F(CudaBackendTest, PagedAttentionLongContextBf16CacheInOrder) {
  const int64_t max_seq = 3072;
  AttentionParams p{4, 2, 128, 1.0f / std::sqrt(128.0f), 0};
  Tensor kc = Random({max_seq, 2, 128}, rng_, -3.0f, 3.0f), vc = Random({max_seq, 2, 128}, rng_);
  Tensor q = Random({3, 4, 128}, rng_, -3.0f, 3.0f);
  std::vector<int32_t> pos = {2999, 3071, 5};
  std::vector<int32_t> all(max_seq);
  std::iota(all.begin(), all.end(), 0);
  Tensor kcd = cuda_->Allocate({max_seq, 2, 128}, DType::kBF16);
  Tensor vcd = cuda_->Allocate({max_seq, 2, 128}, DType::kBF16);
  cuda_->WriteKv(cuda_->ToDevice(kc), cuda_->ToDevice(vc), all, kcd, vcd);
  const InOrderSequence one(16, max_seq, pos);
  Tensor od = cuda_->Allocate({3, 4 * 128});
  cuda_->PagedAttention(cuda_->ToDevice(q), kcd, vcd, one.Layout(), p, od);
  const Tensor got = cuda_->ToHost(od);
  Tensor want = cpu_->Allocate({3, 4 * 128});
  cpu_->PagedAttention(q, kc, vc, one.Layout(), p, want);
  ExpectClose(got, want, kHalfTol, "PagedAttention over 3000 keys, bf16 cache vs f32");
  cpu_->PagedAttention(q, RoundedTo(kc, DType::kBF16), RoundedTo(vc, DType::kBF16), one.Layout(),
                       p, want);
  ExpectClose(got, want, kRoundedCacheTol,
              "PagedAttention over 3000 keys, bf16 cache vs rounded");
}

}  // namespace
}  // namespace shardlm
