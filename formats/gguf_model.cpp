#include "formats/gguf_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace shardlm {

namespace {

// HF suffix within a layer -> GGUF suffix.
constexpr std::pair<const char*, const char*> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};
constexpr std::pair<const char*, const char*> kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

absl::StatusOr<int64_t> PositiveInt(const GgufFile& g, const std::string& key) {
  SHARDLM_ASSIGN_OR_RETURN(int64_t v, g.GetInt(key));
  if (v <= 0 || v > (int64_t{1} << 31)) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": metadata key '", key,
                                                   "': expected a positive integer, got ", v));
  }
  return v;
}

}  // namespace

std::string GgufTensorName(std::string_view hf_name) {
  const std::string name(hf_name);
  for (const auto& [hf, gguf] : kGlobalNames) {
    if (name == hf) return gguf;
  }
  const std::string kPrefix = "model.layers.";
  if (!absl::StartsWith(name, kPrefix)) return "";
  const std::string rest = name.substr(kPrefix.size());
  const size_t dot = rest.find('.');
  int layer;
  if (dot == std::string::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer)) return "";
  const std::string suffix = rest.substr(dot + 1);
  for (const auto& [hf, gguf] : kLayerNames) {
    if (suffix == hf) return absl::StrCat("blk.", layer, ".", gguf);
  }
  return "";
}

std::string HfTensorName(std::string_view gguf_name) {
  for (const auto& [hf, gguf] : kGlobalNames) {
    if (gguf_name == gguf) return hf;
  }
  // "blk.<layer>.<suffix>", with the layer written as GgufTensorName writes it ("blk.01.x" has
  // no HF name: GgufTensorName of its candidate would give "blk.1.x").
  constexpr std::string_view kPrefix = "blk.";
  if (!gguf_name.starts_with(kPrefix)) return "";
  const std::string rest(gguf_name.substr(kPrefix.size()));
  const size_t dot = rest.find('.');
  int layer;
  if (dot == std::string::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer)) return "";
  const std::string suffix = rest.substr(dot + 1);
  for (const auto& [hf, gguf] : kLayerNames) {
    if (suffix != gguf) continue;
    std::string hf_name = absl::StrCat("model.layers.", layer, ".", hf);
    return GgufTensorName(hf_name) == gguf_name ? hf_name : "";
  }
  return "";
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& g) {
  SHARDLM_ASSIGN_OR_RETURN(std::string arch, g.GetString("general.architecture"));
  ModelConfig c;
  if (arch == "llama") {
    c.arch = Arch::kLlama;
    c.rope.interleaved = true;  // Q/K rows permuted by the converter
  } else if (arch == "qwen2") {
    c.arch = Arch::kQwen2;
    c.qkv_bias = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": metadata key 'general.architecture' is '",
                                                   arch, "': supported are llama, qwen2"));
  }
  const std::string a = arch + ".";
  SHARDLM_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(g, a + "embedding_length"));
  SHARDLM_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(g, a + "block_count"));
  SHARDLM_ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(g, a + "feed_forward_length"));
  SHARDLM_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(g, a + "attention.head_count"));
  c.num_kv_heads = c.num_heads;
  if (g.Find(a + "attention.head_count_kv")) {
    SHARDLM_ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(g, a + "attention.head_count_kv"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        g.path(), ": attention.head_count ", c.num_heads,
        " is not a multiple of attention.head_count_kv ", c.num_kv_heads));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  if (g.Find(a + "attention.key_length")) {
    SHARDLM_ASSIGN_OR_RETURN(c.head_dim, PositiveInt(g, a + "attention.key_length"));
  }
  if (g.Find(a + "context_length")) {
    SHARDLM_ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(g, a + "context_length"));
  }
  SHARDLM_ASSIGN_OR_RETURN(double eps, g.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  c.rms_norm_eps = static_cast<float>(eps);
  if (g.Find(a + "rope.freq_base")) {
    SHARDLM_ASSIGN_OR_RETURN(double theta, g.GetFloat(a + "rope.freq_base"));
    c.rope.theta = static_cast<float>(theta);
  }
  c.rope.rotary_dim = static_cast<int>(c.head_dim);
  if (g.Find(a + "rope.dimension_count")) {
    SHARDLM_ASSIGN_OR_RETURN(int64_t dims, PositiveInt(g, a + "rope.dimension_count"));
    c.rope.rotary_dim = static_cast<int>(dims);
  }
  if (const GgufValue* scaling = g.Find(a + "rope.scaling.type"); scaling && scaling->s != "none") {
    if (scaling->s != "linear") {
      return absl::InvalidArgumentError(absl::StrCat(
          g.path(), ": metadata key '", a, "rope.scaling.type' is '", scaling->s,
          "': supported are none, linear"));
    }
    SHARDLM_ASSIGN_OR_RETURN(double factor, g.GetFloat(a + "rope.scaling.factor"));
    c.rope.scaling = RopeConfig::Scaling::kLinear;
    c.rope.factor = static_cast<float>(factor);
  }
  if (g.Info("rope_freqs.weight").ok()) {
    return absl::UnimplementedError(absl::StrCat(
        g.path(), ": tensor 'rope_freqs.weight' (Llama 3.1 rope scaling factors) is not supported yet"));
  }

  SHARDLM_ASSIGN_OR_RETURN(TensorInfo embd, g.Info("token_embd.weight"));
  c.vocab_size = embd.shape[0];
  c.tie_word_embeddings = !g.Info("output.weight").ok();
  c.mixed_dtypes = true;
  c.torch_dtype = embd.dtype;
  if (g.Find("tokenizer.ggml.bos_token_id")) {
    SHARDLM_ASSIGN_OR_RETURN(c.bos_token_id, g.GetInt("tokenizer.ggml.bos_token_id"));
  }
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
    if (!g.Find(key)) continue;
    SHARDLM_ASSIGN_OR_RETURN(int64_t id, g.GetInt(key));
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
      c.eos_token_ids.push_back(id);
    }
  }
  return c;
}

absl::StatusOr<std::string> GgufHfView::Map(std::string_view hf_name) const {
  std::string name = GgufTensorName(hf_name);
  if (name.empty()) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(hf_name),
                                            "' has no GGUF counterpart (", gguf_.path(), ")"));
  }
  return name;
}

std::vector<std::string> GgufHfView::Names() const {
  // The HF names whose GGUF counterpart the file holds: what Info and Load accept (GGUF tensors
  // without an HF name, such as rope_freqs.weight, are left out).
  std::vector<std::string> names;
  for (const std::string& gguf_name : gguf_.Names()) {
    std::string hf_name = HfTensorName(gguf_name);
    if (!hf_name.empty()) names.push_back(std::move(hf_name));
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<TensorInfo> GgufHfView::Info(std::string_view name) const {
  SHARDLM_ASSIGN_OR_RETURN(std::string gguf_name, Map(name));
  return gguf_.Info(gguf_name);
}
absl::StatusOr<Tensor> GgufHfView::Load(std::string_view name) const {
  SHARDLM_ASSIGN_OR_RETURN(std::string gguf_name, Map(name));
  return gguf_.Load(gguf_name);
}
absl::StatusOr<Tensor> GgufHfView::LoadRows(std::string_view name, int64_t begin,
                                            int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(std::string gguf_name, Map(name));
  return gguf_.LoadRows(gguf_name, begin, end);
}
absl::StatusOr<Tensor> GgufHfView::LoadColumns(std::string_view name, int64_t begin,
                                               int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(std::string gguf_name, Map(name));
  return gguf_.LoadColumns(gguf_name, begin, end);
}

}  // namespace shardlm
