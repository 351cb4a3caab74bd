// DecodeGraphs on the CPU, through a recording backend: a CPU backend whose BeginCapture /
// EndCapture record the ops as closures (a stand-in for a CUDA graph) and that throws if anything
// reads or writes host memory while recording (ToHost, ToDevice, UploadIndices, WriteIndices,
// Argmax, Sample). It checks, in CI and without a GPU, the parts of the graph path that are not
// CUDA: that a decode step of LlamaModel::ForwardStep makes no host round trip, the padding of a
// batch to a recorded size (padding rows on a reserved block), the rewrite of the fixed index
// buffers before each replay, and that replays give the logits of the same steps run eagerly
// (within 1e-5 x max |logit|: the padded GEMMs may sum in another order), that an op which
// throws while recording ends the capture (AbortCapture), and that nothing is allocated while
// recording (a CUDA graph would hold alloc / free nodes). The real graphs are
// tested against eager steps on a GPU in tests/kernels_cuda/cuda_model_test.cpp.
#include "runtime/decode_graphs.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"
#include "runtime/faulty_backend.h"
#include "formats/random_weights.h"

namespace shardlm {
namespace {

class RecordedGraph final : public BackendGraph {
 public:
  std::vector<std::function<void()>> ops;
  void Replay() override {
    for (auto& op : ops) op();
  }
};

class RecordingBackend final : public Backend {
 public:
  std::string_view name() const override { return "recording-cpu"; }
  bool supports_graphs() const override { return true; }
  bool BeginCapture() override {
    recording_ = std::make_unique<RecordedGraph>();
    return true;
  }
  std::unique_ptr<BackendGraph> EndCapture() override { return std::move(recording_); }
  void AbortCapture() noexcept override {
    if (recording_) ++aborted;
    recording_.reset();
  }
  bool recording() const { return recording_ != nullptr; }
  int aborted = 0;  // captures AbortCapture ended
  int captures_with_host_access = 0;
  // Allocations while recording: on CUDA, stream-ordered alloc / free nodes in the graph.
  int allocations_while_recording = 0;

  Tensor Allocate(std::vector<int64_t> shape, DType dtype) override {
    Tensor t = cpu_->Allocate(std::move(shape), dtype);
    if (recording_) {
      ++allocations_while_recording;
      Run([t] { std::fill_n(static_cast<char*>(t.raw()), t.nbytes(), 0); });
    }
    return t;
  }
  Tensor ToDevice(const Tensor& h) override { return Host("ToDevice", [&] { return cpu_->ToDevice(h); }); }
  Tensor ToHost(const Tensor& t) override { return Host("ToHost", [&] { return cpu_->ToHost(t); }); }
  Tensor PrepareWeight(const Tensor& h) override { return cpu_->PrepareWeight(h); }
  Tensor PrepareWeightColumns(const Tensor& h, int64_t b, int64_t e) override {
    return cpu_->PrepareWeightColumns(h, b, e);
  }
  Tensor UploadIndices(std::span<const int32_t> h) override {
    return Host("UploadIndices", [&] { return cpu_->UploadIndices(h); });
  }
  void WriteIndices(std::span<const int32_t> h, Tensor& d) override {
    Host("WriteIndices", [&] {
      cpu_->WriteIndices(h, d);
      return Tensor();
    });
  }
  void Argmax(const Tensor& l, std::span<int32_t> out, std::span<float> v) override {
    Host("Argmax", [&] {
      cpu_->Argmax(l, out, v);
      return Tensor();
    });
  }

  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    std::optional<Tensor> b;
    if (bias != nullptr) b = *bias;
    Run([=, this, y = y]() mutable { cpu_->Linear(x, w, b ? &*b : nullptr, y); });
  }
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    Run([=, this, y = y]() mutable { cpu_->RmsNorm(x, w, eps, y); });
  }
  void Copy(const Tensor& s, Tensor& d) override {
    Run([=, this, d = d]() mutable { cpu_->Copy(s, d); });
  }
  void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps, Tensor& y) override {
    Run([=, this, x = x, y = y]() mutable { cpu_->AddRmsNorm(x, delta, w, eps, y); });
  }
  void Rope(Tensor& x, const Tensor& p, const RopeConfig& r) override {
    Run([=, this, x = x]() mutable { cpu_->Rope(x, p, r); });
  }
  void RopeWriteKv(const Tensor& qkv, const Tensor& p, const RopeConfig& r, const Tensor& rows,
                   Tensor& kc, Tensor& vc, Tensor& q) override {
    Run([=, this, kc = kc, vc = vc, q = q]() mutable {
      cpu_->RopeWriteKv(qkv, p, r, rows, kc, vc, q);
    });
  }
  void Embedding(const Tensor& t, const Tensor& ids, Tensor& y) override {
    Run([=, this, y = y]() mutable { cpu_->Embedding(t, ids, y); });
  }
  void GluMul(const Tensor& g, const Tensor& u, Activation act, Tensor& y) override {
    Run([=, this, y = y]() mutable { cpu_->GluMul(g, u, act, y); });
  }
  void GluMulPacked(const Tensor& gu, Activation act, Tensor& y) override {
    Run([=, this, y = y]() mutable { cpu_->GluMulPacked(gu, act, y); });
  }
  void Add(Tensor& x, const Tensor& y) override {
    Run([=, this, x = x]() mutable { cpu_->Add(x, y); });
  }
  void Scale(Tensor& x, float s) override {
    Run([=, this, x = x]() mutable { cpu_->Scale(x, s); });
  }
  void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& qw, const Tensor& kw,
                   float eps) override {
    Run([=, this, qkv = qkv]() mutable { cpu_->HeadRmsNorm(qkv, heads, kv_heads, qw, kw, eps); });
  }
  void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& kc,
               Tensor& vc) override {
    Run([=, this, kc = kc, vc = vc]() mutable { cpu_->WriteKv(k, v, rows, kc, vc); });
  }
  void PagedAttention(const Tensor& q, const Tensor& kc, const Tensor& vc,
                      const PagedKvIndices& l, const AttentionParams& a, Tensor& out) override {
    Run([=, this, out = out]() mutable { cpu_->PagedAttention(q, kc, vc, l, a, out); });
  }

 private:
  // Record while capturing (the closure holds its tensors, as a graph holds its memory), else run.
  void Run(std::function<void()> op) {
    if (recording_) {
      recording_->ops.push_back(std::move(op));
    } else {
      op();
    }
  }
  // A host round trip: never allowed inside a capture.
  Tensor Host(const char* op, const std::function<Tensor()>& f) {
    if (recording_) throw std::logic_error(std::string(op) + " while recording a graph");
    return f();
  }

  std::unique_ptr<Backend> cpu_ = CreateCpuBackend(2);
  std::unique_ptr<RecordedGraph> recording_;
};

struct Seq {
  int32_t len = 0;
  std::vector<int32_t> blocks;
};

// One step: sequence s brings tokens[s] (none: not in the step); blocks come from `next_block`
// upwards, never `reserved`; the last row of each sequence wants its logits.
BatchInput MakeBatch(std::vector<Seq>& seqs, const std::vector<std::vector<int32_t>>& tokens,
                     int block_size, int32_t& next_block, int32_t reserved) {
  BatchInput b;
  b.table_begin.push_back(0);
  int32_t index = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    if (tokens[s].empty()) continue;
    const int64_t need = seqs[s].len + static_cast<int64_t>(tokens[s].size());
    while (static_cast<int64_t>(seqs[s].blocks.size()) * block_size < need) {
      if (next_block == reserved) ++next_block;
      seqs[s].blocks.push_back(next_block++);
    }
    for (size_t i = 0; i < tokens[s].size(); ++i) {
      b.tokens.push_back(tokens[s][i]);
      b.positions.push_back(seqs[s].len + static_cast<int32_t>(i));
      b.seq_index.push_back(index);
    }
    b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
    b.block_tables.insert(b.block_tables.end(), seqs[s].blocks.begin(), seqs[s].blocks.end());
    b.table_begin.push_back(static_cast<int32_t>(b.block_tables.size()));
    seqs[s].len += static_cast<int32_t>(tokens[s].size());
    ++index;
  }
  return b;
}

std::vector<float> Host(Backend& b, const Tensor& t) {
  const Tensor h = b.ToHost(t);
  return {h.data<float>(), h.data<float>() + h.numel()};
}

TEST(DecodeGraphsTest, ReplaysEqualEagerStepsWithoutHostAccess) {
  TinyModelSpec spec;
  spec.layers = 3;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.hidden = 64;
  spec.intermediate = 96;
  spec.vocab = 257;
  spec.seed = 77;
  const ModelConfig config = *TinyModelConfig(spec);
  RandomWeightSource weights(config, spec.seed, DType::kF32);
  RecordingBackend backend;
  auto loaded = LlamaModel::Load(config, weights, backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  LlamaModel& model = **loaded;

  constexpr int kBlock = 4;
  constexpr int64_t kBlocks = 40;
  constexpr int32_t kPad = 7;  // in the middle: padding must not depend on its place
  PagedKvCache eager_cache = model.NewPagedCache(kBlock, kBlocks);
  PagedKvCache graph_cache = model.NewPagedCache(kBlock, kBlocks);
  std::vector<Seq> seqs(3);
  int32_t next_block = 0;
  auto tokens = [&](int n, int salt) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[i] = (i * 31 + salt * 17 + 1) % spec.vocab;
    return t;
  };
  const BatchInput prefill =
      MakeBatch(seqs, {tokens(9, 1), tokens(3, 2), tokens(6, 3)}, kBlock, next_block, kPad);
  ASSERT_TRUE(model.ForwardBatch(prefill, eager_cache).ok());
  ASSERT_TRUE(model.ForwardBatch(prefill, graph_cache).ok());

  DecodeGraphs graphs(model, graph_cache, {1, 2, 4}, /*max_blocks=*/8, kPad);
  ASSERT_TRUE(graphs.enabled());
  EXPECT_FALSE(graphs.Accepts(prefill));

  struct Step {
    std::vector<bool> in;
    int graphs_after;
  };
  const std::vector<Step> plan = {
      {{true, true, true}, 1},    // 3 sequences padded to 4: eager, then recorded
      {{true, true, true}, 1},    // replays with new tokens (and new blocks as they fill)
      {{true, true, true}, 1},
      {{true, false, true}, 2},   // a second size
      {{true, false, true}, 2},
      {{true, true, true}, 2},    // the first graph after the other
      {{false, true, false}, 3},  // size 1
      {{false, true, false}, 3},
  };
  for (size_t i = 0; i < plan.size(); ++i) {
    SCOPED_TRACE("decode step " + std::to_string(i));
    std::vector<std::vector<int32_t>> step(3);
    for (int s = 0; s < 3; ++s) {
      if (plan[i].in[s]) step[s] = {static_cast<int32_t>((i * 53 + s * 29 + 5) % spec.vocab)};
    }
    const BatchInput batch = MakeBatch(seqs, step, kBlock, next_block, kPad);
    ASSERT_TRUE(graphs.Accepts(batch));
    auto eager = model.ForwardBatch(batch, eager_cache);
    ASSERT_TRUE(eager.ok()) << eager.status();
    const std::vector<float> want = Host(backend, *eager);
    absl::StatusOr<Tensor> replayed;
    ASSERT_NO_THROW(replayed = graphs.Run(batch));
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    EXPECT_EQ(graphs.graphs(), plan[i].graphs_after);
    const std::vector<float> got = Host(backend, *replayed);
    ASSERT_EQ(got.size(), want.size());
    float scale = 1.0f, diff = 0.0f;
    for (size_t k = 0; k < want.size(); ++k) {
      scale = std::max(scale, std::abs(want[k]));
      diff = std::max(diff, std::abs(got[k] - want[k]));
    }
    EXPECT_LE(diff, 1e-5f * scale) << "replayed logits differ from the eager step's";
  }
  // The step's activations come from a workspace allocated before the capture.
  EXPECT_EQ(backend.allocations_while_recording, 0);

  // A table longer than max_blocks, a step with two tokens of one sequence, or a sequence whose
  // logits are not wanted is not a graph's step.
  std::vector<Seq> copy = seqs;
  int32_t nb = next_block;
  BatchInput two = MakeBatch(copy, {tokens(2, 9), {}, {}}, kBlock, nb, kPad);
  EXPECT_FALSE(graphs.Accepts(two));
  BatchInput quiet = MakeBatch(copy, {{1}, {2}, {}}, kBlock, nb, kPad);
  quiet.logit_rows.pop_back();
  EXPECT_FALSE(graphs.Accepts(quiet));
  Seq long_seq;
  long_seq.len = 40;  // 10 blocks of 4 > max_blocks 8
  std::vector<Seq> longs = {long_seq};
  BatchInput too_long = MakeBatch(longs, {{3}}, kBlock, nb, kPad);
  EXPECT_FALSE(graphs.Accepts(too_long));
}

// An op that throws while a graph is recorded (the first PagedAttention of the capture, through
// a FaultyBackend) must not leave the backend recording: DecodeGraphs aborts the capture, the
// exception reaches the caller, and the next steps of that size run, record and replay as usual
// (their logits equal eager steps on a cache that saw the same writes).
TEST(DecodeGraphsTest, OpFailingWhileRecordingAbortsTheCapture) {
  TinyModelSpec spec;
  spec.layers = 3;
  spec.hidden = 64;
  spec.intermediate = 96;
  spec.vocab = 131;
  spec.seed = 78;
  const ModelConfig config = *TinyModelConfig(spec);
  RandomWeightSource weights(config, spec.seed, DType::kF32);
  RecordingBackend recording;
  FaultyBackend backend(recording, /*rank=*/0);
  auto loaded = LlamaModel::Load(config, weights, backend);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  LlamaModel& model = **loaded;

  constexpr int kBlock = 4;
  constexpr int32_t kPad = 0;
  PagedKvCache eager_cache = model.NewPagedCache(kBlock, 16);
  PagedKvCache graph_cache = model.NewPagedCache(kBlock, 16);
  std::vector<Seq> seqs(2);
  int32_t next_block = 0;
  const BatchInput prefill = MakeBatch(seqs, {{5, 6, 7}, {8, 9}}, kBlock, next_block, kPad);
  ASSERT_TRUE(model.ForwardBatch(prefill, eager_cache).ok());
  ASSERT_TRUE(model.ForwardBatch(prefill, graph_cache).ok());
  DecodeGraphs graphs(model, graph_cache, {2}, /*max_blocks=*/4, kPad);
  ASSERT_TRUE(graphs.enabled());

  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE("decode step " + std::to_string(i));
    const BatchInput batch = MakeBatch(
        seqs, {{static_cast<int32_t>(11 + i)}, {static_cast<int32_t>(40 + 3 * i)}}, kBlock,
        next_block, kPad);
    auto eager = model.ForwardBatch(batch, eager_cache);
    ASSERT_TRUE(eager.ok()) << eager.status();
    const std::vector<float> want = Host(backend, *eager);
    if (i == 0) {
      // The first Run of a size makes one PagedAttention call per layer eagerly, then records:
      // call layers + 1 is the first one inside the capture.
      FaultSpec fault;
      fault.op = "PagedAttention";
      fault.call = spec.layers + 1;
      backend.Arm(fault);
      // The eager half of the Run wrote this step's K/V into graph_cache as the eager step did.
      EXPECT_THROW(static_cast<void>(graphs.Run(batch)), CheckFailure);
      EXPECT_EQ(backend.failed_op(), "PagedAttention");
      EXPECT_FALSE(recording.recording()) << "the failed capture was left open";
      EXPECT_EQ(recording.aborted, 1);
      EXPECT_EQ(graphs.graphs(), 0);
      continue;
    }
    absl::StatusOr<Tensor> replayed;
    ASSERT_NO_THROW(replayed = graphs.Run(batch));
    ASSERT_TRUE(replayed.ok()) << replayed.status();
    EXPECT_EQ(graphs.graphs(), 1);
    EXPECT_FALSE(recording.recording());
    const std::vector<float> got = Host(backend, *replayed);
    ASSERT_EQ(got.size(), want.size());
    float scale = 1.0f, diff = 0.0f;
    for (size_t k = 0; k < want.size(); ++k) {
      scale = std::max(scale, std::abs(want[k]));
      diff = std::max(diff, std::abs(got[k] - want[k]));
    }
    EXPECT_LE(diff, 1e-5f * scale) << "logits after the aborted capture differ from eager ones";
  }
  EXPECT_EQ(recording.aborted, 1);
}

}  // namespace
}  // namespace shardlm
