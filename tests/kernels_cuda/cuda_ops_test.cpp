// The CUDA ops of the dense families of issue 15 against the CPU backend: GeGLU (GluMul /
// GluMulPacked with tanh GELU, saturated gates included), Scale, HeadRmsNorm (q/k norm inside a
// fused QKV output), Rope and RopeWriteKv with long-rope frequencies and attention factor,
// partial rotary and interleaved pairs (GLM-4), and Gemma 3 270M's attention (head_dim 256, 4
// query heads on 1 KV head) with local (sliding-window) and global layers alternating within one
// CUDA graph. Tolerances as in cuda_backend_test: f32 ops to 1e-5 relative to the largest
// magnitude of the CPU output (the CUDA math library's expf / tanhf / cosf differ from the host's
// by an ulp or two); 16-bit KV caches to 2e-2; attention over bf16 caches to 1e-4 against the
// CPU over f32 caches holding the same rounded values. Every test skips without a CUDA device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "base/dtype.h"
#include "base/rope.h"
#include "base/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/scatter_plan.h"
#include "tests/kernels_cuda/cuda_vs_cpu.h"
#include "tests/kernels_cuda/logit_compare.h"

namespace shardlm {
namespace {

using cudatest::ExpectClose;

constexpr float kF32Tol = 1e-5f;
constexpr float kHalfTol = 2e-2f;
constexpr float kRoundedCacheTol = 1e-4f;

const char* Name(Activation act) { return act == Activation::kSilu ? "SiLU" : "GELU-tanh"; }

class CudaOpsTest : public CudaVsCpuTest {
 protected:
  CudaOpsTest() : CudaVsCpuTest(15) {}

};

TEST_F(CudaOpsTest, GluMulBothActivations) {
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh}) {
    Tensor g = Random({3001}, -8.0f, 8.0f), u = Random({3001});
    Tensor want = cpu_->Allocate({3001});
    cpu_->GluMul(g, u, act, want);
    Tensor gd = cuda_->ToDevice(g);
    Tensor yd = cuda_->Allocate({3001});
    cuda_->GluMul(gd, cuda_->ToDevice(u), act, yd);
    ExpectClose(cuda_->ToHost(yd), want, kF32Tol, std::string("GluMul ") + Name(act));
    cuda_->GluMul(gd, cuda_->ToDevice(u), act, gd);  // y aliases gate
    ExpectClose(cuda_->ToHost(gd), want, kF32Tol, std::string("GluMul in place ") + Name(act));

    Tensor gate_up = Random({5, 2 * 700}, -8.0f, 8.0f);
    Tensor want_packed = cpu_->Allocate({5, 700});
    cpu_->GluMulPacked(gate_up, act, want_packed);
    Tensor yp = cuda_->Allocate({5, 700});
    cuda_->GluMulPacked(cuda_->ToDevice(gate_up), act, yp);
    ExpectClose(cuda_->ToHost(yp), want_packed, kF32Tol, std::string("GluMulPacked ") + Name(act));
  }
}

// Saturated and extreme gates, each element to 1e-6 of its own CPU value (a shared scale would
// hide everything behind 1e20): finite, no NaN, the same limits (g * u or 0) as the CPU.
TEST_F(CudaOpsTest, GluMulSaturatedGates) {
  const std::vector<float> gates = {100.0f, -100.0f, 0.0f,   1e20f,  -1e20f, 3e12f,
                                    -3e12f, 30.0f,   -30.0f, 1e-30f, -0.5f,  15.0f};
  const int64_t n = static_cast<int64_t>(gates.size());
  Tensor g = Tensor::Empty({n}, DType::kF32);
  std::copy(gates.begin(), gates.end(), g.data<float>());
  const Tensor u = Random({n}, 0.5f, 1.5f);
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh}) {
    Tensor want = cpu_->Allocate({n});
    cpu_->GluMul(g, u, act, want);
    Tensor yd = cuda_->Allocate({n});
    cuda_->GluMul(cuda_->ToDevice(g), cuda_->ToDevice(u), act, yd);
    const Tensor got = cuda_->ToHost(yd);
    for (size_t i = 0; i < gates.size(); ++i) {
      const float w = want.data<float>()[i], v = got.data<float>()[i];
      EXPECT_TRUE(std::isfinite(v)) << Name(act) << " g " << gates[i];
      EXPECT_LE(std::abs(v - w), 1e-6f * std::abs(w) + 1e-30f)
          << Name(act) << " g " << gates[i] << ": CUDA " << v << ", CPU " << w;
    }
  }
}

TEST_F(CudaOpsTest, ScaleMatchesCpuExactly) {
  for (float s : {25.29822f, -0.125f, 0.0f}) {
    Tensor x = Random({7, 640}, -30.0f, 30.0f);
    Tensor xd = cuda_->ToDevice(x);
    cpu_->Scale(x, s);
    cuda_->Scale(xd, s);
    ExpectClose(cuda_->ToHost(xd), x, 0.0f, "Scale by " + std::to_string(s));  // one rounding
  }
  Tensor empty = cuda_->Allocate({0, 8});
  EXPECT_NO_THROW(cuda_->Scale(empty, 2.0f));
}

struct HeadNormCase {
  int64_t n;
  int heads, kv_heads;
  int64_t head_dim;
};

// Gemma 3 270M (4 / 1 heads of 256), Qwen3 (16 / 8 of 128, a prefill of 70 tokens), a head_dim
// that is not a multiple of 32, and a single token. V must come back bit for bit.
TEST_F(CudaOpsTest, HeadRmsNormMatchesCpu) {
  for (const HeadNormCase& c : {HeadNormCase{3, 4, 1, 256}, HeadNormCase{70, 16, 8, 128},
                                HeadNormCase{5, 3, 3, 20}, HeadNormCase{1, 2, 1, 64}}) {
    const std::string what = "HeadRmsNorm n " + std::to_string(c.n) + ", heads " +
                             std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) +
                             ", head_dim " + std::to_string(c.head_dim);
    const int64_t width = (c.heads + 2 * c.kv_heads) * c.head_dim;
    Tensor qkv = Random({c.n, width}, -4.0f, 4.0f);
    const Tensor q_w = Random({c.head_dim}, 0.0f, 2.0f), k_w = Random({c.head_dim}, -1.0f, 1.0f);
    const std::vector<float> before(qkv.data<float>(), qkv.data<float>() + qkv.numel());
    Tensor qkv_d = cuda_->ToDevice(qkv);
    cuda_->HeadRmsNorm(qkv_d, c.heads, c.kv_heads, cuda_->PrepareWeight(q_w),
                       cuda_->PrepareWeight(k_w), 1e-6f);
    cpu_->HeadRmsNorm(qkv, c.heads, c.kv_heads, q_w, k_w, 1e-6f);
    const Tensor got = cuda_->ToHost(qkv_d);
    ExpectClose(got, qkv, kF32Tol, what);
    const int64_t v_begin = (c.heads + c.kv_heads) * c.head_dim;
    for (int64_t i = 0; i < c.n; ++i) {
      for (int64_t k = v_begin; k < width; ++k) {
        ASSERT_EQ(got.data<float>()[i * width + k], before[static_cast<size_t>(i * width + k)])
            << what << ": V changed at token " << i << ", column " << k;
      }
    }
  }
  Tensor qkv = cuda_->Allocate({2, (4 + 2) * 8});
  const Tensor w8 = cuda_->ToDevice(Random({8})), w6 = cuda_->ToDevice(Random({6}));
  EXPECT_NO_THROW(cuda_->HeadRmsNorm(qkv, 4, 1, w8, w8, 1e-6f));
  EXPECT_THROW(cuda_->HeadRmsNorm(qkv, 4, 2, w8, w8, 1e-6f), std::invalid_argument);  // width
  EXPECT_THROW(cuda_->HeadRmsNorm(qkv, 4, 1, w8, w6, 1e-6f), std::invalid_argument);
  EXPECT_THROW(cuda_->HeadRmsNorm(qkv, 4, 1, Random({8}), w8, 1e-6f), std::invalid_argument);
}

struct RopeCase {
  int64_t head_dim;
  int rotary_dim;
  bool interleaved;
  RopeConfig::Scaling scaling;
  float attention_factor;
};

RopeConfig MakeRope(const RopeCase& c, float long_factor_scale) {
  RopeConfig rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = c.rotary_dim;
  rope.interleaved = c.interleaved;
  rope.scaling = c.scaling;
  rope.attention_factor = c.attention_factor;
  if (c.scaling == RopeConfig::Scaling::kLongRope) {
    for (int k = 0; k < c.rotary_dim / 2; ++k) {
      rope.freq_factors.push_back(1.0f + long_factor_scale * static_cast<float>(k));
    }
  }
  return rope;
}

const RopeCase kRopeCases[] = {
    {128, 64, true, RopeConfig::Scaling::kNone, 1.0f},            // GLM-4: half, interleaved
    {96, 96, false, RopeConfig::Scaling::kLongRope, 1.1902381f},  // Phi-3 long-rope
    {64, 32, true, RopeConfig::Scaling::kLongRope, 1.25f},        // factor on a partial head
    {64, 48, false, RopeConfig::Scaling::kNone, 0.8f},
};

std::string Describe(const RopeCase& c) {
  return "head_dim " + std::to_string(c.head_dim) + ", rotary_dim " + std::to_string(c.rotary_dim) +
         (c.interleaved ? ", interleaved" : ", half") + ", scaling " +
         std::to_string(static_cast<int>(c.scaling)) + ", attention factor " +
         std::to_string(c.attention_factor);
}

// One CUDA backend running several configs in turn (the short and long long-rope factors are
// two frequency keys), each against the CPU.
TEST_F(CudaOpsTest, RopeAttentionFactorPartialInterleaved) {
  const std::vector<int32_t> pos = {0, 7, 300, 4095, 131071};
  for (int round = 0; round < 2; ++round) {
    for (const RopeCase& c : kRopeCases) {
      for (float long_scale : {0.1f, 0.9f}) {
        const RopeConfig rope = MakeRope(c, long_scale);
        Tensor x = Random({5, 3, c.head_dim}, -2.0f, 2.0f);
        Tensor xd = cuda_->ToDevice(x);
        cpu_->Rope(x, pos, rope);
        cuda_->Rope(xd, pos, rope);
        ExpectClose(cuda_->ToHost(xd), x, kF32Tol, "Rope " + Describe(c));
      }
    }
  }
}

TEST_F(CudaOpsTest, RopeWriteKvAttentionFactorPartialInterleaved) {
  const int64_t n = 5, heads = 4, kv_heads = 2, rows = 16;
  const std::vector<int32_t> pos = {0, 7, 300, 4095, 12}, cache_rows = {3, 0, 15, 9, 10};
  for (const RopeCase& c : kRopeCases) {
    const RopeConfig rope = MakeRope(c, 0.5f);
    const int64_t hd = c.head_dim, kv_width = kv_heads * hd;
    for (DType dt : {DType::kF32, DType::kBF16}) {
      const std::string what = "RopeWriteKv " + Describe(c) + ", " + DTypeName(dt) + " cache";
      const Tensor qkv = Random({n, (heads + 2 * kv_heads) * hd}, -2.0f, 2.0f);
      Tensor q = cpu_->Allocate({n, heads, hd});
      Tensor kc = cpu_->Allocate({rows, kv_heads, hd}), vc = cpu_->Allocate({rows, kv_heads, hd});
      cpu_->RopeWriteKv(qkv, pos, rope, cache_rows, kc, vc, q);
      Tensor qd = cuda_->Allocate({n, heads, hd});
      Tensor kcd = cuda_->Allocate({rows, kv_heads, hd}, dt);
      Tensor vcd = cuda_->Allocate({rows, kv_heads, hd}, dt);
      cuda_->RopeWriteKv(cuda_->ToDevice(qkv), pos, rope, cache_rows, kcd, vcd, qd);
      ExpectClose(cuda_->ToHost(qd), q, kF32Tol, what + ": q");
      // The caches read back through Embedding (bf16 rows to f32, exactly).
      std::vector<int32_t> every(rows);
      std::iota(every.begin(), every.end(), 0);
      for (auto [cache, want, name] :
           {std::tuple{&kcd, &kc, ": k_cache"}, std::tuple{&vcd, &vc, ": v_cache"}}) {
        Tensor got = cuda_->Allocate({rows, kv_width});
        cuda_->Embedding(cache->Reshape({rows, kv_width}), every, got);
        ExpectClose(cuda_->ToHost(got).Reshape({rows, kv_heads, hd}), *want,
                    dt == DType::kF32 ? kF32Tol : kHalfTol, what + name);
      }
    }
  }
}

// Gemma 3 270M's attention: 4 query heads on 1 KV head of 256, scale 256^-1/2, a local layer
// (512-key window) and a global one. The host values of a cache are rounded to its dtype, so that
// the CPU over f32 sees what the device cache holds.
class Gemma3AttentionTest : public CudaOpsTest {
 protected:
  static constexpr int kHeads = 4, kKvHeads = 1, kHeadDim = 256, kWindow = 512;

  static AttentionParams Params(int window) {
    return AttentionParams{kHeads, kKvHeads, kHeadDim, 1.0f / 16.0f, window};
  }

  Tensor HostCache(int64_t rows, DType dtype, float range) {
    Tensor t = Random({rows, kKvHeads, kHeadDim}, -range, range);
    if (dtype == DType::kBF16) {
      for (int64_t i = 0; i < t.numel(); ++i) {
        t.data<float>()[i] = Bf16ToF32(F32ToBf16(t.data<float>()[i]));
      }
    }
    return t;
  }

  // Device K and V caches of `dtype` holding the host values (WriteKv of every row).
  std::pair<Tensor, Tensor> DeviceCaches(const Tensor& k, const Tensor& v, DType dtype) {
    Tensor kd = cuda_->Allocate(k.shape(), dtype), vd = cuda_->Allocate(v.shape(), dtype);
    std::vector<int32_t> all(static_cast<size_t>(k.dim(0)));
    std::iota(all.begin(), all.end(), 0);
    cuda_->WriteKv(cuda_->ToDevice(k), cuda_->ToDevice(v), all, kd, vd);
    return {kd, vd};
  }

  static float Tol(DType dtype) { return dtype == DType::kF32 ? kF32Tol : kRoundedCacheTol; }
};

// A decode step of two sequences through a local and a global layer (each its own cache),
// recorded in one graph and replayed at contexts past the window, where the two differ.
TEST_F(Gemma3AttentionTest, LocalAndGlobalLayersInOneGraph) {
  constexpr int kBs = 16, kSeqs = 2, kBlocksPerSeq = 100;  // up to 1600 keys a sequence
  const int64_t rows = int64_t{kSeqs} * kBlocksPerSeq * kBs;
  std::vector<int32_t> tables(static_cast<size_t>(kSeqs * kBlocksPerSeq));
  for (size_t b = 0; b < tables.size(); ++b) {  // shuffled: block b of the order is b * 37 % 200
    tables[b] = static_cast<int32_t>(b * 37 % tables.size());
  }
  const std::vector<int32_t> begin = {0, kBlocksPerSeq, 2 * kBlocksPerSeq}, seq = {0, 1};
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dt)) + " caches");
    const Tensor k_local = HostCache(rows, dt, 2.0f), v_local = HostCache(rows, dt, 1.0f);
    const Tensor k_global = HostCache(rows, dt, 2.0f), v_global = HostCache(rows, dt, 1.0f);
    const std::pair<Tensor, Tensor> local_caches = DeviceCaches(k_local, v_local, dt);
    const std::pair<Tensor, Tensor> global_caches = DeviceCaches(k_global, v_global, dt);
    const Tensor &kl = local_caches.first, &vl = local_caches.second;
    const Tensor &kg = global_caches.first, &vg = global_caches.second;
    const Tensor q = Random({kSeqs, kHeads, kHeadDim}, -2.0f, 2.0f);
    const Tensor qd = cuda_->ToDevice(q);
    Tensor out_local = cuda_->Allocate({kSeqs, kHeads * kHeadDim});
    Tensor out_global = cuda_->Allocate({kSeqs, kHeads * kHeadDim});

    std::vector<int32_t> positions = {5, 300};
    PagedKvIndices idx = cuda_->UploadLayout(PagedKvLayout{kBs, positions, seq, begin, tables});
    auto step = [&] {
      cuda_->PagedAttention(qd, kl, vl, idx, Params(kWindow), out_local);
      cuda_->PagedAttention(qd, kg, vg, idx, Params(0), out_global);
    };
    step();  // eager first, as DecodeGraphs does
    cuda_->Synchronize();
    ASSERT_TRUE(cuda_->BeginCapture());
    step();
    std::unique_ptr<BackendGraph> graph = cuda_->EndCapture();
    ASSERT_NE(graph, nullptr);

    for (const std::vector<int32_t>& at :
         std::vector<std::vector<int32_t>>{{5, 300}, {511, 512}, {700, 1200}, {1599, 1300}}) {
      positions = at;
      cuda_->WriteIndices(positions, idx.positions);
      graph->Replay();
      const PagedKvLayout now{kBs, positions, seq, begin, tables};
      const std::string where =
          " at positions " + std::to_string(at[0]) + ", " + std::to_string(at[1]);
      Tensor want_local = cpu_->Allocate({kSeqs, kHeads * kHeadDim});
      cpu_->PagedAttention(q, k_local, v_local, now, Params(kWindow), want_local);
      Tensor want_global = cpu_->Allocate({kSeqs, kHeads * kHeadDim});
      cpu_->PagedAttention(q, k_global, v_global, now, Params(0), want_global);
      ExpectClose(cuda_->ToHost(out_local), want_local, Tol(dt), "local layer" + where);
      ExpectClose(cuda_->ToHost(out_global), want_global, Tol(dt), "global layer" + where);
    }
    // The window matters at the last contexts: the global params over the local cache differ.
    Tensor no_window = cpu_->Allocate({kSeqs, kHeads * kHeadDim});
    cpu_->PagedAttention(q, k_local, v_local, PagedKvLayout{kBs, positions, seq, begin, tables},
                         Params(0), no_window);
    const Tensor local = cuda_->ToHost(out_local);
    float max_diff = 0.0f;
    for (int64_t i = 0; i < local.numel(); ++i) {
      max_diff = std::max(max_diff, std::abs(local.data<float>()[i] - no_window.data<float>()[i]));
    }
    EXPECT_GT(max_diff, 1e-3f) << "the window hides no key that matters: the test cannot fail";
  }
}

// Prefill chunks (query tiles) of 400 tokens at positions 400..799, local then global on one
// backend, and a prompt from position 0 that crosses the window.
TEST_F(Gemma3AttentionTest, PrefillLocalAndGlobal) {
  constexpr int kBs = 16;
  const int64_t rows = 800;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const Tensor kc = HostCache(rows, dt, 2.0f), vc = HostCache(rows, dt, 1.0f);
    const std::pair<Tensor, Tensor> caches = DeviceCaches(kc, vc, dt);
    const Tensor &kd = caches.first, &vd = caches.second;
    std::vector<int32_t> table(rows / kBs);
    for (size_t b = 0; b < table.size(); ++b) table[b] = static_cast<int32_t>(b * 7 % table.size());
    const std::vector<int32_t> begin = {0, static_cast<int32_t>(table.size())};
    for (auto [first, count] : {std::pair{400, 400}, std::pair{0, 600}}) {
      std::vector<int32_t> positions(static_cast<size_t>(count));
      std::iota(positions.begin(), positions.end(), first);
      const std::vector<int32_t> seq(positions.size(), 0);
      const PagedKvLayout layout{kBs, positions, seq, begin, table};
      const Tensor q = Random({count, kHeads, kHeadDim}, -2.0f, 2.0f);
      const Tensor qd = cuda_->ToDevice(q);
      for (int window : {kWindow, 0, kWindow}) {
        const std::string what = std::string(DTypeName(dt)) + " cache, positions " +
                                 std::to_string(first) + ".." + std::to_string(first + count - 1) +
                                 ", window " + std::to_string(window);
        Tensor want = cpu_->Allocate({count, kHeads * kHeadDim});
        cpu_->PagedAttention(q, kc, vc, layout, Params(window), want);
        Tensor got = cuda_->Allocate({count, kHeads * kHeadDim});
        cuda_->PagedAttention(qd, kd, vd, layout, Params(window), got);
        ExpectClose(cuda_->ToHost(got), want, Tol(dt), what);
      }
    }
  }
}

// ScatterAddRows (the mixture of experts' combine): dst[rows[i], :] += weights[i] * src[i, :].
// The host half runs anywhere (cuda_ops_host_test): the grouping plan of the CUDA kernel and the
// shared argument checks of the CPU op. The CUDA op must give the CPU's result bit for bit (the
// same adds in the same order, no FMA), on every run.

float FromBits(int32_t bits) {
  float f = 0.0f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The plan's four parts for rows {3, 1, 3, 0, 1, 3}: destinations ascending, each one's sources in
// source order, the weights following their sources.
TEST(ScatterAddRowsHost, PlanGroupsSourcesByDestinationInSourceOrder) {
  const std::vector<int32_t> rows = {3, 1, 3, 0, 1, 3};
  const std::vector<float> weights = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f};
  const cuda::ScatterAddRowsPlan plan = cuda::PlanScatterAddRows(rows, weights);
  ASSERT_EQ(plan.groups, 3);
  ASSERT_EQ(plan.packed.size(), 3u + 4u + 2u * rows.size());
  EXPECT_EQ(std::vector<int32_t>(plan.packed.begin(), plan.packed.begin() + 3),
            (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(std::vector<int32_t>(plan.packed.begin() + 3, plan.packed.begin() + 7),
            (std::vector<int32_t>{0, 1, 3, 6}));
  EXPECT_EQ(std::vector<int32_t>(plan.packed.begin() + 7, plan.packed.begin() + 13),
            (std::vector<int32_t>{3, 1, 4, 0, 2, 5}));
  std::vector<float> got_weights;
  for (size_t p = 13; p < plan.packed.size(); ++p) got_weights.push_back(FromBits(plan.packed[p]));
  EXPECT_EQ(got_weights, (std::vector<float>{3.5f, 1.5f, 4.5f, 0.5f, 2.5f, 5.5f}));

  const cuda::ScatterAddRowsPlan none = cuda::PlanScatterAddRows({}, {});
  EXPECT_EQ(none.groups, 0);
  EXPECT_EQ(none.packed, std::vector<int32_t>{0});
}

// Random rows with many repeats: every source in exactly one group, the group of its row, after
// the earlier sources of that row; destinations strictly ascending.
TEST(ScatterAddRowsHost, PlanOfRandomRowsCoversEverySourceOnce) {
  std::mt19937 rng(16);
  std::uniform_int_distribution<int32_t> row(0, 16);
  std::vector<int32_t> rows(300);
  std::vector<float> weights(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i] = row(rng);
    weights[i] = static_cast<float>(i) + 0.25f;
  }
  const cuda::ScatterAddRowsPlan plan = cuda::PlanScatterAddRows(rows, weights);
  const int64_t g = plan.groups, m = static_cast<int64_t>(rows.size());
  ASSERT_EQ(static_cast<int64_t>(plan.packed.size()), 2 * g + 1 + 2 * m);
  const int32_t* dst = plan.packed.data();
  const int32_t* begins = dst + g;
  const int32_t* order = begins + g + 1;
  const int32_t* bits = order + m;
  EXPECT_EQ(begins[0], 0);
  EXPECT_EQ(begins[g], m);
  std::vector<int> seen(rows.size(), 0);
  for (int64_t j = 0; j < g; ++j) {
    if (j > 0) {
      EXPECT_LT(dst[j - 1], dst[j]) << "group " << j;
    }
    EXPECT_LT(begins[j], begins[j + 1]) << "group " << j << " is empty";
    for (int32_t p = begins[j]; p < begins[j + 1]; ++p) {
      ASSERT_GE(order[p], 0);
      ASSERT_LT(order[p], m);
      ++seen[order[p]];
      EXPECT_EQ(rows[order[p]], dst[j]) << "source " << order[p] << " in group of row " << dst[j];
      if (p > begins[j]) {
        EXPECT_LT(order[p - 1], order[p]) << "sources of row " << dst[j];
      }
      EXPECT_EQ(FromBits(bits[p]), weights[order[p]]) << "weight of source " << order[p];
    }
  }
  EXPECT_EQ(seen, std::vector<int>(rows.size(), 1));
}

// The CPU op (the reference of the CUDA one) and the checks every backend shares: repeated rows
// sum in source order; m = 0 is a no-op; wrong shapes, counts and rows are refused naming them.
TEST(ScatterAddRowsHost, CpuOpSumsRepeatedRowsAndRefusesBadArguments) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend(1);
  auto matrix = [](int64_t r, int64_t c, std::vector<float> v) {
    Tensor t = Tensor::Empty({r, c}, DType::kF32);
    std::copy(v.begin(), v.end(), t.data<float>());
    return t;
  };
  Tensor dst = matrix(3, 2, {0, 0, 0, 0, 0, 0});
  const Tensor src = matrix(3, 2, {1, 2, 3, 4, 5, 6});
  cpu->ScatterAddRows(src, std::vector<int32_t>{2, 0, 2}, std::vector<float>{0.5f, 2.0f, -1.0f},
                      dst);
  EXPECT_EQ(std::vector<float>(dst.data<float>(), dst.data<float>() + 6),
            (std::vector<float>{6, 8, 0, 0, -4.5f, -5}));

  const std::vector<float> before(dst.data<float>(), dst.data<float>() + 6);
  cpu->ScatterAddRows(Tensor::Empty({0, 2}, DType::kF32), {}, {}, dst);
  EXPECT_EQ(std::vector<float>(dst.data<float>(), dst.data<float>() + 6), before) << "m = 0";

  auto message = [&](const Tensor& s, std::vector<int32_t> rows, std::vector<float> w) {
    try {
      cpu->ScatterAddRows(s, rows, w, dst);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_THROW(cpu->ScatterAddRows(Tensor::Empty({0, 3}, DType::kF32), {}, {}, dst),
               std::invalid_argument);
  EXPECT_EQ(message(src, {0, 1}, {1, 1}),
            "ScatterAddRows: expects src [m, d], m rows and m weights, dst [n, d]; got src "
            "[3, 2], 2 rows, 2 weights, dst [3, 2]");
  EXPECT_THROW(
      cpu->ScatterAddRows(src, std::vector<int32_t>{0, 1, 2}, std::vector<float>{1, 1}, dst),
      std::invalid_argument);
  EXPECT_THROW(cpu->ScatterAddRows(matrix(3, 1, {1, 2, 3}), std::vector<int32_t>{0, 1, 2},
                                   std::vector<float>{1, 1, 1}, dst),
               std::invalid_argument);
  EXPECT_THROW(
      cpu->ScatterAddRows(src, std::vector<int32_t>{0, 3, 1}, std::vector<float>{1, 1, 1}, dst),
      std::out_of_range);
  EXPECT_EQ(message(src, {0, 1, -1}, {1, 1, 1}),
            "ScatterAddRows: row -1 at index 2 outside [0, 3)");
  EXPECT_EQ(std::vector<float>(dst.data<float>(), dst.data<float>() + 6), before)
      << "a refused call changed dst";
}

struct ScatterCase {
  std::string name;
  int64_t n, d;
  std::vector<int32_t> rows;
};

std::vector<ScatterCase> ScatterCases() {
  std::vector<ScatterCase> cases = {
      {"repeated rows in any order, d 37", 5, 37, {3, 0, 3, 4, 3, 1, 0}},
      {"d 1, one row six times", 3, 1, {2, 2, 2, 2, 2, 0}},
      {"rows descending, d 33", 40, 33, {}},
      {"an expert's tokens (distinct, ascending), d 256", 64, 256, {}},
      {"300 sources into 7 rows, d 4099 (blocks along y)", 7, 4099, {}},
  };
  for (int32_t r = 39; r >= 0; --r) cases[2].rows.push_back(r);
  for (int32_t r = 0; r < 64; r += 2) cases[3].rows.push_back(r);
  for (int32_t i = 0; i < 300; ++i) cases[4].rows.push_back((i * 5 + i / 7) % 7);
  return cases;
}

// Views (src rows in the middle of a larger tensor, dst likewise, as the expert-parallel combine
// passes them): the CPU's values bit for bit, the rows around dst untouched, and a second run from
// the same start gives the same bits.
TEST_F(CudaOpsTest, ScatterAddRowsMatchesCpuBitForBit) {
  for (const ScatterCase& c : ScatterCases()) {
    SCOPED_TRACE(c.name);
    const int64_t m = static_cast<int64_t>(c.rows.size());
    const Tensor src = Random({m + 3, c.d}, -2.0f, 2.0f);
    const Tensor dst0 = Random({c.n + 2, c.d});
    std::vector<float> weights(c.rows.size());
    std::uniform_real_distribution<float> w(-1.5f, 1.5f);
    for (float& x : weights) x = w(rng_);

    Tensor want = Tensor::Empty(dst0.shape(), DType::kF32);
    std::memcpy(want.raw(), dst0.raw(), dst0.nbytes());
    Tensor want_rows = want.Rows(1, 1 + c.n);
    cpu_->ScatterAddRows(src.Rows(2, 2 + m), c.rows, weights, want_rows);

    const Tensor src_dev = cuda_->ToDevice(src);
    Tensor first;
    for (int run = 0; run < 2; ++run) {
      Tensor dst_dev = cuda_->ToDevice(dst0);
      Tensor rows_dev = dst_dev.Rows(1, 1 + c.n);
      cuda_->ScatterAddRows(src_dev.Rows(2, 2 + m), c.rows, weights, rows_dev);
      const Tensor got = cuda_->ToHost(dst_dev);
      ExpectClose(got, want, 0.0f, c.name + ", run " + std::to_string(run));
      if (run == 0) {
        first = got;
      } else {
        EXPECT_EQ(std::memcmp(first.raw(), got.raw(), got.nbytes()), 0) << "not deterministic";
      }
    }
  }
}

// m = 0 is a no-op on both backends (a d that differs is refused on both); bad rows, counts and
// shapes get the CPU's exception types and leave dst as it was; a host tensor, overlapping src
// and dst, and a call while a graph is recorded are refused.
TEST_F(CudaOpsTest, ScatterAddRowsEmptyAndRefused) {
  const Tensor dst0 = Random({4, 6});
  Tensor dst_dev = cuda_->ToDevice(dst0);
  cuda_->ScatterAddRows(cuda_->Allocate({0, 6}), {}, {}, dst_dev);
  ExpectClose(cuda_->ToHost(dst_dev), dst0, 0.0f, "m = 0");
  Tensor dst_host = Tensor::Empty(dst0.shape(), DType::kF32);
  std::memcpy(dst_host.raw(), dst0.raw(), dst0.nbytes());
  EXPECT_THROW(cpu_->ScatterAddRows(Tensor::Empty({0, 5}, DType::kF32), {}, {}, dst_host),
               std::invalid_argument);
  EXPECT_THROW(cuda_->ScatterAddRows(cuda_->Allocate({0, 5}), {}, {}, dst_dev),
               std::invalid_argument);

  const Tensor src = Random({3, 6});
  const Tensor src_dev = cuda_->ToDevice(src);
  const std::vector<float> w3 = {1.0f, 2.0f, 3.0f};
  for (const std::vector<int32_t>& bad :
       {std::vector<int32_t>{0, 4, 1}, std::vector<int32_t>{-1, 0, 0}}) {
    EXPECT_THROW(cpu_->ScatterAddRows(src, bad, w3, dst_host), std::out_of_range);
    EXPECT_THROW(cuda_->ScatterAddRows(src_dev, bad, w3, dst_dev), std::out_of_range);
  }
  const std::vector<int32_t> rows3 = {0, 1, 1};
  EXPECT_THROW(cuda_->ScatterAddRows(src_dev, rows3, std::vector<float>{1.0f, 2.0f}, dst_dev),
               std::invalid_argument);
  EXPECT_THROW(cuda_->ScatterAddRows(src_dev, std::vector<int32_t>{0, 1}, w3, dst_dev),
               std::invalid_argument);
  EXPECT_THROW(cuda_->ScatterAddRows(cuda_->ToDevice(Random({3, 5})), rows3, w3, dst_dev),
               std::invalid_argument);
  EXPECT_THROW(cuda_->ScatterAddRows(src, rows3, w3, dst_dev), std::invalid_argument)
      << "a host src";
  EXPECT_THROW(cuda_->ScatterAddRows(dst_dev.Rows(1, 4), rows3, w3, dst_dev), std::invalid_argument)
      << "src inside dst";
  ExpectClose(cuda_->ToHost(dst_dev), dst0, 0.0f, "after refused calls");

  // (std::invalid_argument is a std::logic_error too: the message tells them apart.)
  ASSERT_TRUE(cuda_->BeginCapture());
  std::string captured = "no exception";
  try {
    cuda_->ScatterAddRows(src_dev, rows3, w3, dst_dev);
  } catch (const std::logic_error& e) {
    captured = e.what();
  }
  cuda_->AbortCapture();
  EXPECT_NE(captured.find("ScatterAddRows: not allowed while a graph is being captured"),
            std::string::npos)
      << captured;
  cuda_->ScatterAddRows(src_dev, rows3, w3, dst_dev);  // eager again after the capture
  cpu_->ScatterAddRows(src, rows3, w3, dst_host);
  ExpectClose(cuda_->ToHost(dst_dev), dst_host, 0.0f, "after the aborted capture");
}

}  // namespace
}  // namespace shardlm
