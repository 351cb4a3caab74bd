#include "formats/random_weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "base/status_macros.h"
#include "formats/safetensors.h"

namespace shardlm {

namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Exact in binary32: a 24-bit integer times a power of two, in [-1, 1).
float UniformSigned(uint64_t& state) {
  int32_t k = static_cast<int32_t>(SplitMix64(state) >> 40) - (1 << 23);
  return static_cast<float>(k) * (1.0f / 8388608.0f);
}

// How each tensor is drawn: value = offset + half_width * u, u uniform in [-1, 1).
struct Draw {
  float offset;
  float half_width;
};

Draw DrawFor(absl::string_view name, const std::vector<int64_t>& shape) {
  if (absl::EndsWith(name, "norm.weight")) return {1.0f, 0.5f};  // gains in [0.5, 1.5)
  if (absl::EndsWith(name, ".bias")) return {0.0f, 0.5f};
  if (name == "model.embed_tokens.weight") return {0.0f, 1.7320508f};  // unit variance
  // Matrices [out, in]: variance 1/in keeps each projection's output near unit size.
  // sqrt and division are correctly rounded in IEEE arithmetic, so this is the same everywhere.
  return {0.0f, std::sqrt(3.0f / static_cast<float>(shape.back()))};
}

void StoreAs(DType dtype, const std::vector<float>& src, Tensor& dst) {
  for (size_t i = 0; i < src.size(); ++i) {
    switch (dtype) {
      case DType::kF32: dst.data<float>()[i] = src[i]; break;
      case DType::kF16: dst.data<uint16_t>()[i] = F32ToF16(src[i]); break;
      case DType::kBF16: dst.data<uint16_t>()[i] = F32ToBf16(src[i]); break;
      default: throw std::invalid_argument("random weights: quantized dtypes are not generated");
    }
  }
}

}  // namespace

std::map<std::string, std::vector<int64_t>> CheckpointTensorShapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> s;
  const int64_t h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  const LayerNormNames norms = NormNamesOf(c.arch);
  s["model.embed_tokens.weight"] = {c.vocab_size, h};
  s["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) s["lm_head.weight"] = {c.vocab_size, h};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    for (const char* norm : {norms.attn, norms.mlp}) s[p + norm + ".weight"] = {h};
    if (c.post_norms) {
      for (const char* norm : {norms.post_attn, norms.post_mlp}) s[p + norm + ".weight"] = {h};
    }
    if (c.fused_qkv_proj) {
      s[p + "self_attn.qkv_proj.weight"] = {q + 2 * kv, h};
    } else {
      s[p + "self_attn.q_proj.weight"] = {q, h};
      s[p + "self_attn.k_proj.weight"] = {kv, h};
      s[p + "self_attn.v_proj.weight"] = {kv, h};
    }
    if (c.qk_norm) {
      s[p + "self_attn.q_norm.weight"] = {c.head_dim};
      s[p + "self_attn.k_norm.weight"] = {c.head_dim};
    }
    s[p + "self_attn.o_proj.weight"] = {h, q};
    if (c.qkv_bias) {
      s[p + "self_attn.q_proj.bias"] = {q};
      s[p + "self_attn.k_proj.bias"] = {kv};
      s[p + "self_attn.v_proj.bias"] = {kv};
    }
    if (c.o_bias) s[p + "self_attn.o_proj.bias"] = {h};
    if (LayerIsMoe(c, l)) {
      const int64_t moe = c.moe_intermediate_size;
      s[MoeTensorName(c.arch, l, 0, MoePart::kRouter)] = {c.num_experts, h};
      for (int64_t e = 0; e < c.num_experts; ++e) {
        s[MoeTensorName(c.arch, l, e, MoePart::kGate)] = {moe, h};
        s[MoeTensorName(c.arch, l, e, MoePart::kUp)] = {moe, h};
        s[MoeTensorName(c.arch, l, e, MoePart::kDown)] = {h, moe};
      }
      continue;
    }
    if (c.fused_gate_up_proj) {
      s[p + "mlp.gate_up_proj.weight"] = {2 * inter, h};
    } else {
      s[p + "mlp.gate_proj.weight"] = {inter, h};
      s[p + "mlp.up_proj.weight"] = {inter, h};
    }
    s[p + "mlp.down_proj.weight"] = {h, inter};
    if (c.mlp_bias) {
      s[p + "mlp.gate_proj.bias"] = {inter};
      s[p + "mlp.up_proj.bias"] = {inter};
      s[p + "mlp.down_proj.bias"] = {h};
    }
  }
  return s;
}

RandomWeightSource::RandomWeightSource(const ModelConfig& config, uint64_t seed, DType dtype)
    : seed_(seed), dtype_(dtype) {
  if (config.scale_embeddings) {
    embed_width_ /= std::sqrt(static_cast<float>(config.hidden_size));
  }
  for (auto& [name, shape] : CheckpointTensorShapes(config)) shapes_.emplace(name, shape);
}

std::string RandomWeightSource::Describe() const {
  return absl::StrCat("random weights (seed ", seed_, ")");
}

std::vector<std::string> RandomWeightSource::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, shape] : shapes_) names.push_back(name);
  return names;
}

absl::StatusOr<TensorInfo> RandomWeightSource::Info(std::string_view name) const {
  auto it = shapes_.find(name);
  if (it == shapes_.end()) {
    return absl::NotFoundError(absl::StrCat("tensor '", std::string(name), "' not found in ", Describe()));
  }
  TensorInfo info;
  info.name = it->first;
  info.dtype = dtype_;
  info.shape = it->second;
  info.file = Describe();
  int64_t n = 1;
  for (int64_t d : it->second) n *= d;
  info.size = static_cast<uint64_t>(n) * DTypeSize(dtype_);
  return info;
}

absl::StatusOr<Tensor> RandomWeightSource::Load(std::string_view name) const {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  Tensor t = Tensor::Empty(info.shape, dtype_);
  Draw draw = DrawFor(std::string(name), info.shape);
  if (name == "model.embed_tokens.weight") draw.half_width = embed_width_;
  uint64_t state = seed_ * 0x2545f4914f6cdd1dull ^ Fnv1a64(name);
  std::vector<float> values(static_cast<size_t>(t.numel()));
  for (float& x : values) x = draw.offset + draw.half_width * UniformSigned(state);
  StoreAs(dtype_, values, t);
  return t;
}

absl::StatusOr<Tensor> RandomWeightSource::LoadRows(std::string_view name, int64_t begin,
                                                    int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(Tensor t, Load(name));
  if (begin < 0 || end > t.dim(0) || begin > end) {
    return absl::InvalidArgumentError(absl::StrCat("rows [", begin, ", ", end, ") of tensor '",
                                                   std::string(name), "' ", t.ShapeString()));
  }
  return t.Rows(begin, end);
}

absl::StatusOr<Tensor> RandomWeightSource::LoadColumns(std::string_view name, int64_t begin,
                                                       int64_t end) const {
  SHARDLM_ASSIGN_OR_RETURN(Tensor t, Load(name));
  if (t.rank() != 2 || begin < 0 || end > t.dim(1) || begin > end) {
    return absl::InvalidArgumentError(absl::StrCat("columns [", begin, ", ", end,
                                                   ") of tensor '", std::string(name), "' ",
                                                   t.ShapeString()));
  }
  Tensor out = Tensor::Empty({t.dim(0), end - begin}, t.dtype());
  const size_t es = DTypeSize(t.dtype());
  for (int64_t r = 0; r < t.dim(0); ++r) {
    std::memcpy(static_cast<char*>(out.raw()) + r * (end - begin) * es,
                static_cast<const char*>(t.raw()) + (r * t.dim(1) + begin) * es,
                (end - begin) * es);
  }
  return out;
}

absl::StatusOr<ModelConfig> TinyModelConfig(const TinyModelSpec& spec) {
  auto positive = [](int64_t v, const char* flag) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected a positive integer, got ", v));
  };
  SHARDLM_RETURN_IF_ERROR(positive(spec.layers, "--layers"));
  SHARDLM_RETURN_IF_ERROR(positive(spec.hidden, "--hidden"));
  SHARDLM_RETURN_IF_ERROR(positive(spec.heads, "--heads"));
  SHARDLM_RETURN_IF_ERROR(positive(spec.kv_heads, "--kv-heads"));
  SHARDLM_RETURN_IF_ERROR(positive(spec.intermediate, "--intermediate"));
  SHARDLM_RETURN_IF_ERROR(positive(spec.vocab, "--vocab"));
  if (spec.head_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--head-dim: expected a positive integer (or 0: hidden / heads), got ",
                     spec.head_dim));
  }
  if (spec.head_dim == 0 && spec.hidden % spec.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--hidden ", spec.hidden,
                                                   " is not a multiple of --heads ", spec.heads));
  }
  const int64_t head_dim = spec.head_dim > 0 ? spec.head_dim : spec.hidden / spec.heads;
  // GLM turns half of each head, in pairs.
  const int64_t rotary_quantum = spec.arch == Arch::kGlm || spec.arch == Arch::kGlm4 ? 4 : 2;
  if (head_dim % rotary_quantum != 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", head_dim, " must be a multiple of ",
                                                   rotary_quantum, " for RoPE"));
  }
  if (spec.heads % spec.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--heads ", spec.heads,
                                                   " is not a multiple of --kv-heads ",
                                                   spec.kv_heads));
  }
  ModelConfig c;
  c.arch = spec.arch;
  c.vocab_size = spec.vocab;
  c.hidden_size = spec.hidden;
  c.intermediate_size = spec.intermediate;
  c.num_layers = spec.layers;
  c.num_heads = spec.heads;
  c.num_kv_heads = spec.kv_heads;
  c.head_dim = head_dim;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5f;
  c.rope.theta = 10000.0f;
  c.rope.rotary_dim = static_cast<int>(c.head_dim);
  c.tie_word_embeddings = spec.tie_embeddings;
  c.torch_dtype = spec.dtype;
  switch (spec.arch) {
    case Arch::kLlama:
      c.rope.theta = 500000.0f;
      break;
    case Arch::kMistral:
      c.sliding_window = 6;
      c.rope.theta = 1000000.0f;
      break;
    case Arch::kQwen2:
      c.qkv_bias = true;
      c.rms_norm_eps = 1e-6f;
      c.rope.theta = 1000000.0f;
      break;
    case Arch::kMixtral:
      c.rope.theta = 1000000.0f;
      c.num_experts = 4;
      c.experts_per_token = 2;
      c.moe_intermediate_size = spec.intermediate;
      break;
    case Arch::kQwen3Moe:
      c.qk_norm = true;
      c.rms_norm_eps = 1e-6f;
      c.rope.theta = 1000000.0f;
      c.num_experts = 6;
      c.experts_per_token = 3;
      c.moe_intermediate_size = spec.intermediate / 2;
      c.norm_topk_prob = false;
      // The last layer dense (mlp_only_layers), so that both kinds are exercised.
      for (int64_t l = 0; l < c.num_layers; ++l) c.moe_layers.push_back(l + 1 < c.num_layers);
      if (c.num_layers == 1) c.moe_layers.clear();
      break;
    case Arch::kQwen3:
      c.qk_norm = true;
      c.rms_norm_eps = 1e-6f;
      c.rope.theta = 1000000.0f;
      break;
    case Arch::kGemma3: {
      c.hidden_act = HiddenAct::kGeluTanh;
      c.qk_norm = c.norm_plus_one = c.post_norms = c.scale_embeddings = true;
      c.tie_word_embeddings = true;
      c.rms_norm_eps = 1e-6f;
      c.rope.theta = 1000000.0f;
      RopeConfig local = c.rope;
      local.theta = 10000.0f;
      c.sliding_rope = local;
      c.sliding_window = 4;
      for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layers.push_back(l % 2 == 0);
      // query_pre_attn_scalar = 1.5 x head_dim: a scale other than 1 / sqrt(head_dim).
      c.attention_scale = static_cast<float>(1.0 / std::sqrt(1.5 * static_cast<double>(head_dim)));
      break;
    }
    case Arch::kPhi3: {
      c.fused_qkv_proj = c.fused_gate_up_proj = true;
      c.sliding_window = 6;
      // longrope with an original context of 4: every prompt of the tests is longer, so HF and
      // shardlm both use the long factors (and the attention factor of 512 / 4).
      c.rope.scaling = RopeConfig::Scaling::kLongRope;
      c.rope.original_max_position = 4;
      for (int64_t k = 0; k < head_dim / 2; ++k) {
        c.longrope_short.push_back(1.0f + 0.125f * static_cast<float>(k));
        c.longrope_long.push_back(1.0f + 0.5f * static_cast<float>(k));
      }
      c.rope.freq_factors = c.longrope_long;
      c.rope.factor = 128.0f;
      c.rope.attention_factor =
          static_cast<float>(std::sqrt(1.0 + std::log(128.0) / std::log(4.0)));
      break;
    }
    case Arch::kGlm:
    case Arch::kGlm4:
      c.qkv_bias = true;
      c.fused_gate_up_proj = true;
      c.post_norms = spec.arch == Arch::kGlm4;
      c.rope.rotary_dim = static_cast<int>(head_dim / 2);
      c.rope.interleaved = true;
      break;
  }
  return c;
}

absl::Status WriteTinyModel(const TinyModelSpec& spec, const std::string& dir) {
  SHARDLM_ASSIGN_OR_RETURN(ModelConfig config, TinyModelConfig(spec));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create directory ", dir, ": ", ec.message()));
  }
  const std::string config_path = dir + "/config.json";
  {
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << ModelConfigToJson(config).dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", config_path));
  }
  RandomWeightSource source(config, spec.seed, spec.dtype);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : source.Names()) {
    SHARDLM_ASSIGN_OR_RETURN(Tensor t, source.Load(name));
    tensors.emplace_back(name, std::move(t));
  }
  return WriteSafetensors(dir + "/model.safetensors", tensors,
                          {{"format", "pt"}, {"generator", "shardlm make-tiny-model"}});
}

}  // namespace shardlm
