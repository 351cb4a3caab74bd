#include "formats/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"

namespace shardlm {

namespace {

// HF suffix within a layer -> GGUF suffix, for `arch`: the norms' names depend on the family
// (config.h NormNamesOf), and fused gate_up_proj takes ffn_up's name.
std::vector<std::pair<std::string, std::string>> LayerNames(Arch arch) {
  const LayerNormNames norms = NormNamesOf(arch);
  std::vector<std::pair<std::string, std::string>> t = {
      {std::string(norms.attn) + ".weight", "attn_norm.weight"},
      {std::string(norms.mlp) + ".weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.qkv_proj.weight", "attn_qkv.weight"},
      {"self_attn.qkv_proj.bias", "attn_qkv.bias"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (norms.post_attn != nullptr) {
    t.emplace_back(std::string(norms.post_attn) + ".weight", "post_attention_norm.weight");
    t.emplace_back(std::string(norms.post_mlp) + ".weight", "post_ffw_norm.weight");
  }
  if (arch == Arch::kPhi3 || arch == Arch::kGlm || arch == Arch::kGlm4) {
    t.emplace_back("mlp.gate_up_proj.weight", "ffn_up.weight");
  } else {
    t.emplace_back("mlp.gate_proj.weight", "ffn_gate.weight");
    t.emplace_back("mlp.up_proj.weight", "ffn_up.weight");
  }
  return t;
}
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

std::string GgufTensorName(std::string_view hf_name, Arch arch) {
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
  for (const auto& [hf, gguf] : LayerNames(arch)) {
    if (suffix == hf) return absl::StrCat("blk.", layer, ".", gguf);
  }
  return "";
}

std::string HfTensorName(std::string_view gguf_name, Arch arch) {
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
  for (const auto& [hf, gguf] : LayerNames(arch)) {
    if (suffix != gguf) continue;
    std::string hf_name = absl::StrCat("model.layers.", layer, ".", hf);
    return GgufTensorName(hf_name, arch) == gguf_name ? hf_name : "";
  }
  return "";
}

namespace {
constexpr std::pair<const char*, Arch> kGgufArchs[] = {
    {"llama", Arch::kLlama}, {"qwen2", Arch::kQwen2}, {"qwen3", Arch::kQwen3},
    {"gemma3", Arch::kGemma3}, {"phi3", Arch::kPhi3},  {"glm4", Arch::kGlm4},
    {"chatglm", Arch::kGlm},
};

// A float vector tensor of the file (phi3's rope factors), as f32.
absl::StatusOr<std::vector<float>> FloatTensor(const GgufFile& g, const std::string& name,
                                               int64_t n) {
  SHARDLM_ASSIGN_OR_RETURN(Tensor t, g.Load(name));
  if (t.numel() != n || IsQuantized(t.dtype())) {
    return absl::InvalidArgumentError(absl::StrCat(g.path(), ": tensor '", name, "' is ",
                                                   t.ShapeString(), " ", DTypeName(t.dtype()),
                                                   ", expected ", n, " floats (rotary_dim / 2)"));
  }
  std::vector<float> v(static_cast<size_t>(n));
  ConvertToF32(t.dtype(), t.raw(), v.data(), v.size());
  return v;
}
}  // namespace

absl::StatusOr<Arch> ArchFromGguf(const GgufFile& g) {
  SHARDLM_ASSIGN_OR_RETURN(std::string arch, g.GetString("general.architecture"));
  for (const auto& [name, value] : kGgufArchs) {
    if (arch == name) return value;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(g.path(), ": metadata key 'general.architecture' is '", arch,
                   "': supported are llama, qwen2, qwen3, gemma3, phi3, glm4, chatglm"));
}

std::string GgufArchName(Arch arch) {
  for (const auto& [name, value] : kGgufArchs) {
    if (arch == value) return name;
  }
  return arch == Arch::kMistral ? "llama" : "";
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& g) {
  SHARDLM_ASSIGN_OR_RETURN(Arch family, ArchFromGguf(g));
  ModelConfig c;
  c.arch = family;
  // Biases, where a family has them, are seen in the file.
  c.qkv_bias = g.Info("blk.0.attn_q.bias").ok() || g.Info("blk.0.attn_qkv.bias").ok();
  c.o_bias = g.Info("blk.0.attn_output.bias").ok();
  switch (family) {
    case Arch::kLlama:
      c.rope.interleaved = true;  // Q/K rows permuted by the converter
      break;
    case Arch::kQwen3:
      c.qk_norm = true;
      break;
    case Arch::kGemma3:
      c.qk_norm = c.post_norms = c.scale_embeddings = true;
      c.hidden_act = HiddenAct::kGeluTanh;
      break;
    case Arch::kPhi3:
      c.fused_qkv_proj = c.fused_gate_up_proj = true;
      break;
    case Arch::kGlm4:
      c.fused_gate_up_proj = c.post_norms = true;
      break;
    case Arch::kGlm:
      // `chatglm` (GLM-4-9B): one attn_qkv [q; k; v] with its bias, and ffn_up [gate; up].
      c.fused_qkv_proj = c.fused_gate_up_proj = true;
      break;
    default:
      break;
  }
  const std::string a = GgufArchName(family) + ".";
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
  const bool sliding = family == Arch::kGemma3 || family == Arch::kPhi3;
  if (sliding && g.Find(a + "attention.sliding_window")) {
    SHARDLM_ASSIGN_OR_RETURN(c.sliding_window, PositiveInt(g, a + "attention.sliding_window"));
  }
  // As HF's GLM: adjacent pairs.
  if (family == Arch::kGlm || family == Arch::kGlm4) c.rope.interleaved = true;
  if (family == Arch::kGemma3) {
    // llama.cpp: 5 sliding layers of every 6 (a file may say otherwise), whose rope has theta
    // 10000 and no scaling; the attention scale is 1 / sqrt(head_dim), but for the 27B model
    // (62 layers) 1 / sqrt(hidden / heads), as its query_pre_attn_scalar says.
    int64_t pattern = 6;
    if (g.Find(a + "attention.sliding_window_pattern")) {
      SHARDLM_ASSIGN_OR_RETURN(pattern, PositiveInt(g, a + "attention.sliding_window_pattern"));
    }
    for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layers.push_back((l + 1) % pattern != 0);
    if (c.sliding_window == 0) c.sliding_window = 4096;
    RopeConfig local;
    local.rotary_dim = c.rope.rotary_dim;
    local.theta = 10000.0f;
    c.sliding_rope = local;
    const double scalar = c.num_layers == 62 ? static_cast<double>(c.hidden_size / c.num_heads)
                                             : static_cast<double>(c.head_dim);
    c.attention_scale = static_cast<float>(1.0 / std::sqrt(scalar));
    if (g.Find(a + "attention.scale")) {
      SHARDLM_ASSIGN_OR_RETURN(double scale, g.GetFloat(a + "attention.scale"));
      c.attention_scale = static_cast<float>(scale);
    }
  }
  if (family == Arch::kPhi3 && g.Info("rope_factors_long.weight").ok()) {
    const int64_t pairs = c.rope.rotary_dim / 2;
    SHARDLM_ASSIGN_OR_RETURN(c.longrope_long, FloatTensor(g, "rope_factors_long.weight", pairs));
    SHARDLM_ASSIGN_OR_RETURN(c.longrope_short, FloatTensor(g, "rope_factors_short.weight", pairs));
    SHARDLM_ASSIGN_OR_RETURN(int64_t original,
                             PositiveInt(g, a + "rope.scaling.original_context_length"));
    c.rope.scaling = RopeConfig::Scaling::kLongRope;
    c.rope.original_max_position = static_cast<int>(original);
    // As ParseModelConfig: the long factors when the context exceeds the original one.
    c.rope.freq_factors =
        c.max_position_embeddings > original ? c.longrope_long : c.longrope_short;
    c.rope.factor = static_cast<float>(static_cast<double>(c.max_position_embeddings) / original);
    if (g.Find(a + "rope.scaling.attn_factor")) {
      SHARDLM_ASSIGN_OR_RETURN(double factor, g.GetFloat(a + "rope.scaling.attn_factor"));
      c.rope.attention_factor = static_cast<float>(factor);
    } else if (c.rope.factor > 1.0f) {
      c.rope.attention_factor = static_cast<float>(
          std::sqrt(1.0 + std::log(static_cast<double>(c.rope.factor)) / std::log(double(original))));
    }
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
  std::string name = GgufTensorName(hf_name, arch_);
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
    std::string hf_name = HfTensorName(gguf_name, arch_);
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
