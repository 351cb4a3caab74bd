#include "model/llama.h"

#include <cmath>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace shardlm {

namespace {

// Fetches one weight, checks its shape (and, for matrices, its dtype against config.json's
// torch_dtype) and converts it to the backend's form.
class WeightLoader {
 public:
  WeightLoader(const ModelConfig& config, const WeightSource& weights, Backend& backend)
      : config_(config), weights_(weights), backend_(backend) {}

  absl::StatusOr<Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    auto info = weights_.Info(name);
    if (!info.ok()) return info.status();
    if (info->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", info->file, ": shape mismatch with config.json: expected ",
          ShapeString(shape), ", got ", ShapeString(info->shape)));
    }
    if (shape.size() == 2 && !config_.mixed_dtypes && info->dtype != config_.torch_dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in ", info->file,
          ": dtype mismatch with config.json torch_dtype: expected ",
          DTypeName(config_.torch_dtype), ", got ", DTypeName(info->dtype)));
    }
    auto host = weights_.Load(name);
    if (!host.ok()) return host.status();
    Tensor prepared = backend_.PrepareWeight(*host);
    bytes_ += prepared.nbytes();
    return prepared;
  }

  absl::StatusOr<std::optional<Tensor>> GetIf(bool present, const std::string& name,
                                              std::vector<int64_t> shape) {
    if (!present) return std::optional<Tensor>();
    auto t = Get(name, std::move(shape));
    if (!t.ok()) return t.status();
    return std::optional<Tensor>(std::move(*t));
  }

  uint64_t bytes() const { return bytes_; }

 private:
  const ModelConfig& config_;
  const WeightSource& weights_;
  Backend& backend_;
  uint64_t bytes_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const ModelConfig& config,
                                                             const WeightSource& weights,
                                                             Backend& backend) {
  std::unique_ptr<LlamaModel> m(new LlamaModel(config, backend));
  const int64_t h = config.hidden_size, v = config.vocab_size, inter = config.intermediate_size;
  const int64_t q_dim = config.num_heads * config.head_dim;
  const int64_t kv_dim = config.num_kv_heads * config.head_dim;
  WeightLoader w(config, weights, backend);

  SHARDLM_ASSIGN_OR_RETURN(m->embed_, w.Get("model.embed_tokens.weight", {v, h}));
  SHARDLM_ASSIGN_OR_RETURN(m->final_norm_, w.Get("model.norm.weight", {h}));
  if (config.tie_word_embeddings) {
    m->lm_head_ = m->embed_;
  } else {
    SHARDLM_ASSIGN_OR_RETURN(m->lm_head_, w.Get("lm_head.weight", {v, h}));
  }
  m->layers_.resize(config.num_layers);
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LlamaLayerWeights& lw = m->layers_[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    SHARDLM_ASSIGN_OR_RETURN(lw.attn_norm, w.Get(p + "input_layernorm.weight", {h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.wq, w.Get(p + "self_attn.q_proj.weight", {q_dim, h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.wk, w.Get(p + "self_attn.k_proj.weight", {kv_dim, h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.wv, w.Get(p + "self_attn.v_proj.weight", {kv_dim, h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.wo, w.Get(p + "self_attn.o_proj.weight", {h, q_dim}));
    SHARDLM_ASSIGN_OR_RETURN(lw.bq, w.GetIf(config.qkv_bias, p + "self_attn.q_proj.bias", {q_dim}));
    SHARDLM_ASSIGN_OR_RETURN(lw.bk, w.GetIf(config.qkv_bias, p + "self_attn.k_proj.bias", {kv_dim}));
    SHARDLM_ASSIGN_OR_RETURN(lw.bv, w.GetIf(config.qkv_bias, p + "self_attn.v_proj.bias", {kv_dim}));
    SHARDLM_ASSIGN_OR_RETURN(lw.bo, w.GetIf(config.o_bias, p + "self_attn.o_proj.bias", {h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.mlp_norm, w.Get(p + "post_attention_layernorm.weight", {h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.w_gate, w.Get(p + "mlp.gate_proj.weight", {inter, h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.w_up, w.Get(p + "mlp.up_proj.weight", {inter, h}));
    SHARDLM_ASSIGN_OR_RETURN(lw.w_down, w.Get(p + "mlp.down_proj.weight", {h, inter}));
    SHARDLM_ASSIGN_OR_RETURN(lw.b_gate, w.GetIf(config.mlp_bias, p + "mlp.gate_proj.bias", {inter}));
    SHARDLM_ASSIGN_OR_RETURN(lw.b_up, w.GetIf(config.mlp_bias, p + "mlp.up_proj.bias", {inter}));
    SHARDLM_ASSIGN_OR_RETURN(lw.b_down, w.GetIf(config.mlp_bias, p + "mlp.down_proj.bias", {h}));
  }
  m->weight_bytes_ = w.bytes();

  m->rope_ = config.rope;
  m->rope_.rotary_dim = static_cast<int>(config.head_dim);
  m->attn_.num_heads = static_cast<int>(config.num_heads);
  m->attn_.num_kv_heads = static_cast<int>(config.num_kv_heads);
  m->attn_.head_dim = static_cast<int>(config.head_dim);
  m->attn_.scale = 1.0f / std::sqrt(static_cast<float>(config.head_dim));
  m->attn_.sliding_window = static_cast<int>(config.sliding_window);
  return m;
}

KvCache LlamaModel::NewCache(int64_t max_seq) const {
  return KvCache::Create(backend_, config_.num_layers, max_seq, config_.num_kv_heads,
                         config_.head_dim);
}

static const Tensor* Opt(const std::optional<Tensor>& t) { return t ? &*t : nullptr; }

void LlamaModel::Layer(int64_t l, Tensor& x, std::span<const int32_t> positions, KvCache& cache) {
  const LlamaLayerWeights& lw = layers_[l];
  const int64_t n = x.dim(0), hd = config_.head_dim;
  const int64_t heads = config_.num_heads, kv_heads = config_.num_kv_heads;
  Backend& b = backend_;

  Tensor h = b.Allocate({n, config_.hidden_size});
  b.RmsNorm(x, lw.attn_norm, config_.rms_norm_eps, h);
  Tensor q = b.Allocate({n, heads * hd});
  Tensor k = b.Allocate({n, kv_heads * hd});
  Tensor v = b.Allocate({n, kv_heads * hd});
  b.Linear(h, lw.wq, Opt(lw.bq), q);
  b.Linear(h, lw.wk, Opt(lw.bk), k);
  b.Linear(h, lw.wv, Opt(lw.bv), v);
  Tensor q3 = q.Reshape({n, heads, hd});
  Tensor k3 = k.Reshape({n, kv_heads, hd});
  b.Rope(q3, positions, rope_);
  b.Rope(k3, positions, rope_);
  b.WriteKv(k3, v.Reshape({n, kv_heads, hd}), positions, cache.k[l], cache.v[l]);
  Tensor attn = b.Allocate({n, heads * hd});
  b.Attention(q3, cache.k[l], cache.v[l], positions, attn_, attn);
  b.Linear(attn, lw.wo, Opt(lw.bo), h);
  b.Add(x, h);

  b.RmsNorm(x, lw.mlp_norm, config_.rms_norm_eps, h);
  Tensor gate = b.Allocate({n, config_.intermediate_size});
  Tensor up = b.Allocate({n, config_.intermediate_size});
  b.Linear(h, lw.w_gate, Opt(lw.b_gate), gate);
  b.Linear(h, lw.w_up, Opt(lw.b_up), up);
  b.SiluMul(gate, up, gate);
  b.Linear(gate, lw.w_down, Opt(lw.b_down), h);
  b.Add(x, h);
}

absl::StatusOr<Tensor> LlamaModel::Forward(std::span<const int32_t> tokens, int64_t start_pos,
                                           KvCache& cache, bool all_logits) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return absl::InvalidArgumentError("Forward: no tokens");
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is out of range [0, vocab_size=",
                                                     config_.vocab_size, ")"));
    }
  }
  if (start_pos < 0 || start_pos + n > cache.max_seq) {
    return absl::OutOfRangeError(absl::StrCat("positions [", start_pos, ", ", start_pos + n,
                                              ") exceed the KV cache of ", cache.max_seq,
                                              " positions"));
  }
  std::vector<int32_t> positions(n);
  std::iota(positions.begin(), positions.end(), static_cast<int32_t>(start_pos));

  Tensor x = backend_.Allocate({n, config_.hidden_size});
  backend_.Embedding(embed_, tokens, x);
  for (int64_t l = 0; l < config_.num_layers; ++l) Layer(l, x, positions, cache);

  Tensor last = all_logits ? x : x.Rows(n - 1, n);
  Tensor normed = backend_.Allocate({last.dim(0), config_.hidden_size});
  backend_.RmsNorm(last, final_norm_, config_.rms_norm_eps, normed);
  Tensor logits = backend_.Allocate({last.dim(0), config_.vocab_size});
  backend_.Linear(normed, lm_head_, nullptr, logits);
  return logits;
}

}  // namespace shardlm
