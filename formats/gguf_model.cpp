#include "formats/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <map>
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
  if (arch == Arch::kMixtral || arch == Arch::kQwen3Moe) {
    // The router; the experts are slices of 3-D tensors (GgufExpertName).
    const std::string router = MoeTensorName(arch, 0, 0, MoePart::kRouter);
    t.emplace_back(router.substr(std::string_view("model.layers.0.").size()),
                   "ffn_gate_inp.weight");
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

// "blk.<layer>.<suffix>" with the layer written as GgufTensorName writes it ("blk.01.x" is not
// one: GgufTensorName would give "blk.1.x").
bool SplitBlockName(std::string_view name, int64_t* layer, std::string* suffix) {
  constexpr std::string_view kPrefix = "blk.";
  if (!name.starts_with(kPrefix)) return false;
  const std::string rest(name.substr(kPrefix.size()));
  const size_t dot = rest.find('.');
  int l;
  if (dot == std::string::npos || !absl::SimpleAtoi(rest.substr(0, dot), &l) || l < 0) {
    return false;
  }
  *layer = l;
  *suffix = rest.substr(dot + 1);
  return absl::StrCat("blk.", l, ".", *suffix) == name;
}

// The GGUF suffix of each expert tensor, by MoePart (the router is not one of them).
constexpr std::pair<MoePart, const char*> kExpertSuffixes[] = {
    {MoePart::kGate, "ffn_gate_exps.weight"},
    {MoePart::kUp, "ffn_up_exps.weight"},
    {MoePart::kDown, "ffn_down_exps.weight"},
};
constexpr const char* kRouterSuffix = "ffn_gate_inp.weight";

bool IsMoeArch(Arch arch) { return arch == Arch::kMixtral || arch == Arch::kQwen3Moe; }

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
  int64_t layer;
  std::string suffix;
  if (!SplitBlockName(gguf_name, &layer, &suffix)) return "";
  for (const auto& [hf, gguf] : LayerNames(arch)) {
    if (suffix == gguf) return absl::StrCat("model.layers.", layer, ".", hf);
  }
  return "";
}

std::optional<GgufExpertSlice> GgufExpertName(std::string_view hf_name, Arch arch) {
  if (!IsMoeArch(arch)) return std::nullopt;
  // "model.layers.<L>.<block>.experts.<E>.<part>.weight": L and E parsed, then the name rebuilt
  // by MoeTensorName for each part must be hf_name exactly.
  constexpr std::string_view kPrefix = "model.layers.", kExperts = ".experts.";
  if (!hf_name.starts_with(kPrefix)) return std::nullopt;
  const std::string rest(hf_name.substr(kPrefix.size()));
  const size_t dot = rest.find('.'), at = rest.find(kExperts);
  if (dot == std::string::npos || at == std::string::npos) return std::nullopt;
  const size_t e_begin = at + kExperts.size(), e_end = rest.find('.', e_begin);
  int layer, expert;
  if (e_end == std::string::npos || !absl::SimpleAtoi(rest.substr(0, dot), &layer) ||
      !absl::SimpleAtoi(rest.substr(e_begin, e_end - e_begin), &expert) || layer < 0 ||
      expert < 0) {
    return std::nullopt;
  }
  for (const auto& [part, suffix] : kExpertSuffixes) {
    if (MoeTensorName(arch, layer, expert, part) == hf_name) {
      return GgufExpertSlice{absl::StrCat("blk.", layer, ".", suffix), layer, expert, part};
    }
  }
  return std::nullopt;
}

namespace {
constexpr std::pair<const char*, Arch> kGgufArchs[] = {
    {"llama", Arch::kLlama},   {"qwen2", Arch::kQwen2},       {"qwen3", Arch::kQwen3},
    {"gemma3", Arch::kGemma3}, {"phi3", Arch::kPhi3},         {"glm4", Arch::kGlm4},
    {"chatglm", Arch::kGlm},   {"qwen3moe", Arch::kQwen3Moe},
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

// The experts, top-k and routing of a mixture (`a`: "llama." or "qwen3moe."), checked against
// the tensors: which blocks have a router (the others are dense), and each one's expert tensors.
// Any expert-like tensor of a layout we do not read is an error naming it, for every family: a
// dense read of it would be silently wrong.
absl::Status ReadMixture(const GgufFile& g, const std::string& a, ModelConfig* c) {
  auto error = [&](absl::StatusCode code, auto&&... pieces) {
    return absl::Status(code, absl::StrCat(g.path(), ": ", pieces...));
  };
  auto unsupported = [&](auto&&... pieces) {
    return error(absl::StatusCode::kUnimplemented, pieces...);
  };
  auto invalid = [&](auto&&... pieces) {
    return error(absl::StatusCode::kInvalidArgument, pieces...);
  };
  // Routers and expert tensors by layer; GGUF names are unique, so each is seen once.
  std::map<int64_t, std::string> routers;
  std::map<int64_t, std::vector<std::string>> experts;
  const std::vector<std::string> names = g.Names();
  for (const std::string& name : names) {
    int64_t layer;
    std::string suffix;
    if (!SplitBlockName(name, &layer, &suffix)) continue;
    const bool expert_like =
        absl::StartsWith(suffix, "ffn_gate_inp") || absl::StrContains(suffix, "_exps") ||
        absl::StrContains(suffix, "_shexp") || absl::StartsWith(suffix, "exp_probs_b");
    std::vector<std::string> parts = absl::StrSplit(suffix, '.');
    int expert_number;
    if (parts.size() == 3 &&
        (parts[0] == "ffn_gate" || parts[0] == "ffn_up" || parts[0] == "ffn_down") &&
        absl::SimpleAtoi(parts[1], &expert_number)) {
      return unsupported("tensor '", name,
                         "': one tensor per expert is an old Mixtral GGUF layout, not supported: "
                         "convert the model again with a current llama.cpp (ffn_*_exps tensors)");
    }
    if (!expert_like) continue;
    if (absl::StrContains(suffix, "_shexp")) {
      return unsupported("tensor '", name, "': shared experts are not supported");
    }
    if (suffix == kRouterSuffix) {
      routers[layer] = name;
      continue;
    }
    bool known = false;
    for (const auto& [part, s] : kExpertSuffixes) known |= suffix == s;
    if (!known) {
      return unsupported("tensor '", name,
                         "': not part of a mixture we implement (a router ffn_gate_inp.weight "
                         "and experts ffn_{gate,up,down}_exps.weight, without biases)");
    }
    experts[layer].push_back(name);
  }
  const std::string count_key = a + "expert_count";
  int64_t num_experts = 0;
  if (c->arch == Arch::kMixtral || c->arch == Arch::kQwen3Moe) {
    SHARDLM_ASSIGN_OR_RETURN(num_experts, PositiveInt(g, count_key));
  }
  if (num_experts == 0) {
    if (!routers.empty() || !experts.empty()) {
      return invalid("tensor '",
                     !routers.empty() ? routers.begin()->second : experts.begin()->second.front(),
                     "' belongs to a mixture of experts, but a '", GgufArchName(c->arch),
                     "' file without ", count_key, " is dense");
    }
    return absl::OkStatus();
  }
  for (const std::string key : {"expert_shared_count", "expert_group_count"}) {
    if (g.Find(a + key) == nullptr) continue;
    SHARDLM_ASSIGN_OR_RETURN(int64_t n, g.GetInt(a + key));
    if (n > 0) {
      return unsupported("metadata key '", a, key, "' is ", n,
                         ": shared experts and expert groups are not supported");
    }
  }
  if (g.Find(a + "expert_gating_func") != nullptr) {
    // llama.cpp's numbering: 0 unset (the family's own), 1 softmax, 2 sigmoid, 3 softmax_weight.
    SHARDLM_ASSIGN_OR_RETURN(int64_t gating, g.GetInt(a + "expert_gating_func"));
    if (gating != 0 && gating != 1) {
      const char* what = gating == 2 ? " (sigmoid)" : gating == 3 ? " (softmax_weight)" : "";
      return unsupported("metadata key '", a, "expert_gating_func' is ", gating, what,
                         ": only 1 (softmax) is implemented");
    }
  }
  if (g.Find(a + "expert_weights_scale") != nullptr) {
    // 0 (unset) and 1 leave the weights as they are, in llama.cpp too.
    SHARDLM_ASSIGN_OR_RETURN(double scale, g.GetFloat(a + "expert_weights_scale"));
    if (scale != 0.0 && scale != 1.0) {
      return unsupported("metadata key '", a, "expert_weights_scale' is ", scale,
                         ": scaled routing weights are not implemented");
    }
  }
  c->num_experts = num_experts;
  SHARDLM_ASSIGN_OR_RETURN(c->experts_per_token, PositiveInt(g, a + "expert_used_count"));
  if (c->experts_per_token > num_experts) {
    return invalid("metadata key '", a, "expert_used_count' is ", c->experts_per_token,
                   ": expected at most ", count_key, " (", num_experts, ")");
  }
  c->norm_topk_prob = true;
  if (g.Find(a + "expert_weights_norm") != nullptr) {
    SHARDLM_ASSIGN_OR_RETURN(c->norm_topk_prob, g.GetBool(a + "expert_weights_norm"));
  }
  if (g.Find(a + "expert_feed_forward_length") != nullptr) {
    SHARDLM_ASSIGN_OR_RETURN(c->moe_intermediate_size,
                             PositiveInt(g, a + "expert_feed_forward_length"));
  } else {
    c->moe_intermediate_size = c->arch == Arch::kMixtral
                                   ? c->intermediate_size
                                   : c->intermediate_size / c->experts_per_token;
  }
  if (routers.empty()) {
    return invalid("metadata key '", count_key, "' is ", num_experts,
                   " but no block has a router (blk.N.", kRouterSuffix, ")");
  }
  // Each router's block holds the three expert tensors, and only those blocks do.
  for (const auto& [layer, tensors] : experts) {
    if (!routers.contains(layer)) {
      return invalid("tensor '", tensors.front(), "' has no router blk.", layer, ".", kRouterSuffix,
                     " in its block");
    }
  }
  const int64_t e = num_experts, h = c->hidden_size, ff = c->moe_intermediate_size;
  for (const auto& [layer, router] : routers) {
    if (layer >= c->num_layers) {
      return invalid("tensor '", router, "' is in block ", layer, ", but ", a, "block_count is ",
                     c->num_layers);
    }
    std::vector<std::pair<std::string, std::vector<int64_t>>> want = {{router, {e, h}}};
    for (const auto& [part, suffix] : kExpertSuffixes) {
      want.emplace_back(
          absl::StrCat("blk.", layer, ".", suffix),
          part == MoePart::kDown ? std::vector<int64_t>{e, h, ff} : std::vector<int64_t>{e, ff, h});
    }
    for (const auto& [name, shape] : want) {
      absl::StatusOr<TensorInfo> info = g.Info(name);
      if (!info.ok()) {
        return invalid("tensor '", name, "' is missing: ", router,
                       " makes its block a mixture of experts");
      }
      if (info->shape != shape) {
        return invalid("tensor '", name, "' has shape ", ShapeString(info->shape), ", expected ",
                       ShapeString(shape), " (", count_key, " ", e, ", embedding_length ", h,
                       ", expert n_ff ", ff, ")");
      }
    }
  }
  if (static_cast<int64_t>(routers.size()) == c->num_layers) return absl::OkStatus();
  // Some blocks are dense. Mixtral has none; Qwen3-MoE's are its mlp_only_layers.
  int64_t dense = 0;
  while (routers.contains(dense)) ++dense;
  if (c->arch == Arch::kMixtral) {
    return invalid("tensor 'blk.", dense, ".", kRouterSuffix,
                   "' is missing: every block of a Mixtral (llama with ", count_key,
                   ") is a mixture of experts");
  }
  // A dense block holds tensors too: a block_count beyond the tensor count is a lie, which must
  // not size this vector.
  if (c->num_layers > static_cast<int64_t>(names.size())) {
    return invalid(a, "block_count ", c->num_layers, " but the file holds only ", names.size(),
                   " tensors");
  }
  c->moe_layers.assign(static_cast<size_t>(c->num_layers), false);
  for (const auto& [layer, router] : routers) c->moe_layers[static_cast<size_t>(layer)] = true;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Arch> ArchFromGguf(const GgufFile& g) {
  SHARDLM_ASSIGN_OR_RETURN(std::string arch, g.GetString("general.architecture"));
  for (const auto& [name, value] : kGgufArchs) {
    if (arch != name) continue;
    // llama.cpp's converter writes Mixtral as `llama` with experts.
    if (value == Arch::kLlama && g.Find("llama.expert_count") != nullptr) {
      SHARDLM_ASSIGN_OR_RETURN(int64_t experts, g.GetInt("llama.expert_count"));
      if (experts > 0) return Arch::kMixtral;
    }
    return value;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(g.path(), ": metadata key 'general.architecture' is '", arch,
                   "': supported are llama, qwen2, qwen3, qwen3moe, gemma3, phi3, glm4, chatglm"));
}

std::string GgufArchName(Arch arch) {
  for (const auto& [name, value] : kGgufArchs) {
    if (arch == value) return name;
  }
  return arch == Arch::kMistral || arch == Arch::kMixtral ? "llama" : "";
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
    case Arch::kMixtral:
      c.rope.interleaved = true;  // Q/K rows permuted by the converter
      break;
    case Arch::kQwen3:
    case Arch::kQwen3Moe:
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

  SHARDLM_RETURN_IF_ERROR(ReadMixture(g, a, &c));

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

absl::StatusOr<TensorInfo> GgufHfView::Resolve(std::string_view hf_name) const {
  if (std::optional<GgufExpertSlice> slice = GgufExpertName(hf_name, arch_)) {
    SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, gguf_.SliceInfo(slice->name, slice->expert));
    if (info.shape.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(gguf_.path(), ": tensor '", slice->name,
                                                     "' is not 3-D (n_expert matrices)"));
    }
    return info;
  }
  std::string name = GgufTensorName(hf_name, arch_);
  if (name.empty()) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(hf_name),
                                            "' has no GGUF counterpart (", gguf_.path(), ")"));
  }
  return gguf_.Info(name);
}

std::vector<std::string> GgufHfView::Names() const {
  // The HF names whose GGUF counterpart the file holds: what Info and Load accept (GGUF tensors
  // without an HF name, such as rope_freqs.weight, are left out). A 3-D expert tensor holds one
  // HF tensor per expert.
  std::vector<std::string> names;
  for (const std::string& gguf_name : gguf_.Names()) {
    std::string hf_name = HfTensorName(gguf_name, arch_);
    if (!hf_name.empty()) {
      names.push_back(std::move(hf_name));
      continue;
    }
    int64_t layer;
    std::string suffix;
    if (!IsMoeArch(arch_) || !SplitBlockName(gguf_name, &layer, &suffix)) continue;
    for (const auto& [part, expert_suffix] : kExpertSuffixes) {
      if (suffix != expert_suffix) continue;
      absl::StatusOr<TensorInfo> info = gguf_.Info(gguf_name);
      if (!info.ok() || info->shape.size() != 3) break;
      for (int64_t e = 0; e < info->shape[0]; ++e) {
        names.push_back(MoeTensorName(arch_, layer, e, part));
      }
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<TensorInfo> GgufHfView::Info(std::string_view name) const { return Resolve(name); }
absl::StatusOr<Tensor> GgufHfView::Load(std::string_view name) const {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Resolve(name));
  return gguf_.LoadInfo(info);
}
absl::StatusOr<Tensor> GgufHfView::LoadRows(std::string_view name, int64_t begin,
                                            int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Resolve(name));
  return gguf_.LoadRowsOf(info, begin, end);
}
absl::StatusOr<Tensor> GgufHfView::LoadColumns(std::string_view name, int64_t begin,
                                               int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Resolve(name));
  return gguf_.LoadColumnsOf(info, begin, end);
}

}  // namespace shardlm
