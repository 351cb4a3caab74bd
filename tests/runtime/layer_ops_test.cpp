// What one decoder layer asks of the backend in a decode step, counted by a Backend decorator
// over the CPU backend (every op a CUDA backend turns into a kernel launch, cuBLAS call or
// stream-ordered allocation): with fused Q/K/V and gate/up projections a layer makes 9 op calls
// and allocates nothing (the step's activations are allocated once per step); a layer whose
// parts have different dtypes (as Q4_K_M files keep attn_v or ffn_up in Q6_K) loads them apart
// and falls back to the separate ops, with the same logits as the fused layer over the same
// values.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "base/dtype.h"
#include "formats/random_weights.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"

namespace shardlm {
namespace {

// Forwards every op to the CPU backend and counts the calls by op name.
class CountingBackend final : public Backend {
 public:
  std::map<std::string, int64_t> calls;

  template <class Body>
  decltype(auto) Count(const char* op, Body&& body) {
    ++calls[op];
    return body();
  }

  std::string_view name() const override { return "counting-cpu"; }
  Tensor Allocate(std::vector<int64_t> shape, DType dtype) override {
    return Count("Allocate", [&] { return cpu_->Allocate(std::move(shape), dtype); });
  }
  Tensor AllocateUninitialized(std::vector<int64_t> shape, DType dtype) override {
    return Count("AllocateUninitialized",
                 [&] { return cpu_->AllocateUninitialized(std::move(shape), dtype); });
  }
  Tensor ToDevice(const Tensor& h) override {
    return Count("ToDevice", [&] { return cpu_->ToDevice(h); });
  }
  Tensor ToHost(const Tensor& t) override {
    return Count("ToHost", [&] { return cpu_->ToHost(t); });
  }
  Tensor PrepareWeight(const Tensor& h) override { return cpu_->PrepareWeight(h); }
  Tensor PrepareWeightColumns(const Tensor& h, int64_t b, int64_t e) override {
    return cpu_->PrepareWeightColumns(h, b, e);
  }
  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    Count("Linear", [&] { cpu_->Linear(x, w, bias, y); });
  }
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    Count("RmsNorm", [&] { cpu_->RmsNorm(x, w, eps, y); });
  }
  Tensor UploadIndices(std::span<const int32_t> h) override {
    return Count("UploadIndices", [&] { return cpu_->UploadIndices(h); });
  }
  void WriteIndices(std::span<const int32_t> h, Tensor& d) override {
    Count("WriteIndices", [&] { cpu_->WriteIndices(h, d); });
  }
  void Copy(const Tensor& s, Tensor& d) override {
    Count("Copy", [&] { cpu_->Copy(s, d); });
  }
  void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps, Tensor& y) override {
    Count("AddRmsNorm", [&] { cpu_->AddRmsNorm(x, delta, w, eps, y); });
  }
  void Rope(Tensor& x, const Tensor& p, const RopeConfig& r) override {
    Count("Rope", [&] { cpu_->Rope(x, p, r); });
  }
  void RopeWriteKv(const Tensor& qkv, const Tensor& p, const RopeConfig& r, const Tensor& rows,
                   Tensor& kc, Tensor& vc, Tensor& q) override {
    Count("RopeWriteKv", [&] { cpu_->RopeWriteKv(qkv, p, r, rows, kc, vc, q); });
  }
  void Embedding(const Tensor& t, const Tensor& ids, Tensor& y) override {
    Count("Embedding", [&] { cpu_->Embedding(t, ids, y); });
  }
  void GluMul(const Tensor& g, const Tensor& u, Activation act, Tensor& y) override {
    Count("GluMul", [&] { cpu_->GluMul(g, u, act, y); });
  }
  void GluMulPacked(const Tensor& gu, Activation act, Tensor& y) override {
    Count("GluMulPacked", [&] { cpu_->GluMulPacked(gu, act, y); });
  }
  void Add(Tensor& x, const Tensor& y) override {
    Count("Add", [&] { cpu_->Add(x, y); });
  }
  void Scale(Tensor& x, float s) override {
    Count("Scale", [&] { cpu_->Scale(x, s); });
  }
  void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& qw, const Tensor& kw,
                   float eps) override {
    Count("HeadRmsNorm", [&] { cpu_->HeadRmsNorm(qkv, heads, kv_heads, qw, kw, eps); });
  }
  void Argmax(const Tensor& l, std::span<int32_t> out, std::span<float> v) override {
    Count("Argmax", [&] { cpu_->Argmax(l, out, v); });
  }
  void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& kc,
               Tensor& vc) override {
    Count("WriteKv", [&] { cpu_->WriteKv(k, v, rows, kc, vc); });
  }
  void PagedAttention(const Tensor& q, const Tensor& kc, const Tensor& vc, const PagedKvIndices& l,
                      const AttentionParams& a, Tensor& out) override {
    Count("PagedAttention", [&] { cpu_->PagedAttention(q, kc, vc, l, a, out); });
  }

 private:
  std::unique_ptr<Backend> cpu_ = CreateCpuBackend(1);
};

// A RandomWeightSource whose matrices named in `as_bf16` are served as bf16 (mixed: the model
// then holds them in another dtype than their neighbours) or as f32 holding the bf16-rounded
// values (the same numbers in the dtype of the rest).
class RoundedWeights final : public WeightSource {
 public:
  RoundedWeights(const ModelConfig& config, uint64_t seed, std::vector<std::string> as_bf16,
                 bool keep_bf16)
      : inner_(config, seed, DType::kF32), as_bf16_(std::move(as_bf16)), keep_bf16_(keep_bf16) {}

  std::string Describe() const override { return "rounded " + inner_.Describe(); }
  std::vector<std::string> Names() const override { return inner_.Names(); }
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    absl::StatusOr<TensorInfo> info = inner_.Info(name);
    if (info.ok() && Rounded(name) && keep_bf16_) {
      info->dtype = DType::kBF16;
      info->size /= 2;
    }
    return info;
  }
  absl::StatusOr<Tensor> Load(std::string_view name) const override {
    return Round(name, inner_.Load(name));
  }
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t b, int64_t e) const override {
    return Round(name, inner_.LoadRows(name, b, e));
  }
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t b, int64_t e) const override {
    return Round(name, inner_.LoadColumns(name, b, e));
  }

 private:
  bool Rounded(std::string_view name) const {
    return std::any_of(as_bf16_.begin(), as_bf16_.end(),
                       [&](const std::string& s) { return name.find(s) != std::string::npos; });
  }
  absl::StatusOr<Tensor> Round(std::string_view name, absl::StatusOr<Tensor> t) const {
    if (!t.ok() || !Rounded(name)) return t;
    Tensor out = Tensor::Empty(t->shape(), keep_bf16_ ? DType::kBF16 : DType::kF32);
    for (int64_t i = 0; i < t->numel(); ++i) {
      const uint16_t bits = F32ToBf16(t->data<float>()[i]);
      if (keep_bf16_) {
        out.data<uint16_t>()[i] = bits;
      } else {
        out.data<float>()[i] = Bf16ToF32(bits);
      }
    }
    return out;
  }

  RandomWeightSource inner_;
  std::vector<std::string> as_bf16_;
  bool keep_bf16_;
};

constexpr int kBlock = 4;

// One sequence: `prompt` tokens from position 0, then `decode` more one at a time. Returns the
// last step's logits and leaves in `decode_calls` the op calls of the last step only.
std::vector<float> RunSequence(LlamaModel& model, CountingBackend& backend, int prompt, int decode,
                               std::map<std::string, int64_t>* decode_calls) {
  PagedKvCache cache = model.NewPagedCache(kBlock, 8);
  std::vector<float> logits;
  for (int step = 0, pos = 0; step <= decode; ++step) {
    BatchInput b;
    const int n = step == 0 ? prompt : 1;
    for (int i = 0; i < n; ++i, ++pos) {
      b.tokens.push_back((pos * 37 + 5) % static_cast<int>(model.config().vocab_size));
      b.positions.push_back(pos);
      b.seq_index.push_back(0);
    }
    b.table_begin = {0, 8};
    b.block_tables = {0, 1, 2, 3, 4, 5, 6, 7};
    b.logit_rows = {n - 1};
    backend.calls.clear();
    absl::StatusOr<Tensor> out = model.ForwardBatch(b, cache);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    const Tensor host = backend.ToHost(*out);
    logits.assign(host.data<float>(), host.data<float>() + host.numel());
  }
  if (decode_calls != nullptr) *decode_calls = backend.calls;
  return logits;
}

TinyModelSpec Spec(Arch arch, int64_t layers) {
  TinyModelSpec spec;
  spec.arch = arch;
  spec.layers = layers;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.hidden = 64;
  spec.intermediate = 96;
  spec.vocab = 200;
  spec.seed = 5;
  return spec;
}

// Op calls per layer of a decode step: the difference between a 4-layer and a 2-layer model, / 2.
std::map<std::string, int64_t> CallsPerLayer(Arch arch, const std::vector<std::string>& as_bf16) {
  std::map<std::string, int64_t> calls[2];
  for (int i = 0; i < 2; ++i) {
    const TinyModelSpec spec = Spec(arch, 2 + 2 * i);
    ModelConfig config = *TinyModelConfig(spec);
    config.mixed_dtypes = true;
    RoundedWeights weights(config, spec.seed, as_bf16, /*keep_bf16=*/true);
    CountingBackend backend;
    auto model = LlamaModel::Load(config, weights, backend);
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    RunSequence(**model, backend, 5, 2, &calls[i]);
  }
  std::map<std::string, int64_t> per_layer;
  for (const auto& [op, count] : calls[1]) {
    const int64_t extra = count - calls[0][op];
    EXPECT_EQ(extra % 2, 0) << op;
    if (extra != 0) per_layer[op] = extra / 2;
  }
  return per_layer;
}

std::string Show(const std::map<std::string, int64_t>& calls) {
  std::string s;
  for (const auto& [op, count] : calls) s += op + " " + std::to_string(count) + ", ";
  return s;
}

TEST(LayerOpsTest, FusedDecodeLayerMakesNineOpCallsAndNoAllocation) {
  // Norms (the first layer's plain RmsNorm is once per stage), QKV, O, gate/up and down.
  const std::map<std::string, int64_t> want = {{"AddRmsNorm", 2},
                                               {"Linear", 4},
                                               {"RopeWriteKv", 1},
                                               {"PagedAttention", 1},
                                               {"GluMulPacked", 1}};
  const std::map<std::string, int64_t> got = CallsPerLayer(Arch::kLlama, {});
  EXPECT_EQ(got, want) << "per layer: " << Show(got);
}

TEST(LayerOpsTest, MixedDtypesFallBackToSeparateOps) {
  // V and up in bf16 beside f32 Q, K and gate: neither projection can stack.
  const std::map<std::string, int64_t> want = {{"AddRmsNorm", 2},     {"Linear", 7},
                                               {"Rope", 2},           {"WriteKv", 1},
                                               {"PagedAttention", 1}, {"GluMul", 1}};
  const std::map<std::string, int64_t> got =
      CallsPerLayer(Arch::kLlama, {"v_proj.weight", "up_proj.weight"});
  EXPECT_EQ(got, want) << "per layer: " << Show(got);
}

TEST(LayerOpsTest, FallbackGivesTheFusedLayersLogits) {
  // Qwen2: with the q/k/v biases, stacked (fused) or apart (fallback).
  for (Arch arch : {Arch::kLlama, Arch::kQwen2}) {
    SCOPED_TRACE(arch == Arch::kLlama ? "llama" : "qwen2");
    const TinyModelSpec spec = Spec(arch, 3);
    ModelConfig config = *TinyModelConfig(spec);
    config.mixed_dtypes = true;
    const std::vector<std::string> names = {"v_proj.weight", "up_proj.weight"};
    RoundedWeights mixed(config, spec.seed, names, /*keep_bf16=*/true);
    RoundedWeights same(config, spec.seed, names, /*keep_bf16=*/false);
    CountingBackend b1, b2;
    auto fallback = LlamaModel::Load(config, mixed, b1);
    auto fused = LlamaModel::Load(config, same, b2);
    ASSERT_TRUE(fallback.ok()) << fallback.status();
    ASSERT_TRUE(fused.ok()) << fused.status();
    std::map<std::string, int64_t> fallback_calls, fused_calls;
    const std::vector<float> want = RunSequence(**fused, b2, 6, 3, &fused_calls);
    const std::vector<float> got = RunSequence(**fallback, b1, 6, 3, &fallback_calls);
    EXPECT_EQ(fused_calls["RopeWriteKv"], 3);  // the paths differ
    EXPECT_EQ(fallback_calls["RopeWriteKv"], 0);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_FALSE(want.empty());
    float scale = 1.0f, diff = 0.0f;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::abs(want[i]));
      diff = std::max(diff, std::abs(got[i] - want[i]));
    }
    EXPECT_LE(diff, 1e-5f * scale) << "fallback logits differ from the fused layers'";
  }
}

}  // namespace
}  // namespace shardlm
