#include "formats/config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <charconv>
#include <cstdlib>
#include <exception>
#include <limits>
#include <string_view>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "formats/config_reader.h"

namespace shardlm {
namespace {

using nlohmann::json;
using config_internal::ConfigReader;
using config_internal::kMaxInt;
using config_internal::Sv;
using config_internal::ReadRope;


// HF's Qwen2Config default: layers at or above this index use the sliding window.
constexpr int64_t kQwen2DefaultMaxWindowLayers = 28;

struct ArchNames {
  Arch arch;
  std::string_view model_type;
  std::string_view architecture;
};
constexpr ArchNames kArchs[] = {
    {Arch::kLlama, "llama", "LlamaForCausalLM"},
    {Arch::kMistral, "mistral", "MistralForCausalLM"},
    {Arch::kQwen2, "qwen2", "Qwen2ForCausalLM"},
    {Arch::kQwen3, "qwen3", "Qwen3ForCausalLM"},
    {Arch::kGemma3, "gemma3_text", "Gemma3ForCausalLM"},
    {Arch::kPhi3, "phi3", "Phi3ForCausalLM"},
    {Arch::kGlm, "glm", "GlmForCausalLM"},
    {Arch::kGlm4, "glm4", "Glm4ForCausalLM"},
    {Arch::kMixtral, "mixtral", "MixtralForCausalLM"},
    {Arch::kQwen3Moe, "qwen3_moe", "Qwen3MoeForCausalLM"},
};
constexpr std::string_view kSupportedTypes =
    "one of \"llama\", \"mistral\", \"qwen2\", \"qwen3\", \"gemma3_text\", \"phi3\", \"glm\", "
    "\"glm4\", \"mixtral\", \"qwen3_moe\"";


std::string ErrnoMessage(int err) {
  return std::error_code(err, std::generic_category()).message();
}


// The shortest decimal that reads back as `f`, as a double: config.json then says 1e-05 rather
// than 9.999999747378752e-06, and ParseModelConfig's float cast recovers `f` exactly.
json FloatToJson(float f) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, f);
  if (ec == std::errc()) {
    double d = std::strtod(std::string(buf, end).c_str(), nullptr);
    // Reading the digits as a double and then rounding to float can, rarely, round twice to a
    // different float; the exact double value of `f` is always safe.
    if (static_cast<float>(d) == f) return d;
  }
  return static_cast<double>(f);
}


absl::StatusOr<Arch> ReadArch(const json& root, const ConfigReader& r) {
  if (const json* type = ConfigReader::Find(root, "model_type")) {
    if (type->is_string()) {
      const std::string& name = type->get_ref<const std::string&>();
      for (const ArchNames& a : kArchs) {
        if (name == a.model_type) return a.arch;
      }
      if (name == "gemma3") {
        return r.Problem("model_type", "\"gemma3\" is the multimodal Gemma 3 (text_config inside); "
                                       "only the text model (\"gemma3_text\") is supported");
      }
    }
    return r.Error("model_type", kSupportedTypes, *type);
  }
  // Some hand-written or older configs name only the class.
  if (const json* archs = ConfigReader::Find(root, "architectures")) {
    if (archs->is_array() && !archs->empty()) {
      const json& first = (*archs)[0];
      if (first.is_string()) {
        const std::string& name = first.get_ref<const std::string&>();
        for (const ArchNames& a : kArchs) {
          if (name == a.architecture) return a.arch;
        }
      }
      return r.Error("architectures[0]",
                     "one of \"LlamaForCausalLM\", \"MistralForCausalLM\", \"Qwen2ForCausalLM\", "
                     "\"Qwen3ForCausalLM\", \"Gemma3ForCausalLM\", \"Phi3ForCausalLM\", "
                     "\"GlmForCausalLM\", \"Glm4ForCausalLM\", \"MixtralForCausalLM\", "
                     "\"Qwen3MoeForCausalLM\"",
                     first);
    }
    return r.Error("architectures", "a non-empty list of class names", *archs);
  }
  return r.Missing("model_type", absl::StrCat(" (or 'architectures'); supported: ",
                                              Sv(kSupportedTypes)));
}


absl::Status ReadTorchDtype(const json& root, const ConfigReader& r, DType* dtype) {
  // transformers >= 4.56 writes "dtype" instead of "torch_dtype".
  std::string_view field = "torch_dtype";
  const json* value = ConfigReader::Find(root, "torch_dtype");
  if (value == nullptr) {
    value = ConfigReader::Find(root, "dtype");
    field = "dtype";
  }
  if (value == nullptr) return absl::OkStatus();
  if (value->is_string()) {
    const std::string& name = value->get_ref<const std::string&>();
    if (name == "float32") {
      *dtype = DType::kF32;
      return absl::OkStatus();
    }
    if (name == "bfloat16") {
      *dtype = DType::kBF16;
      return absl::OkStatus();
    }
    if (name == "float16") {
      *dtype = DType::kF16;
      return absl::OkStatus();
    }
  }
  return r.Error(field, "one of \"float32\", \"bfloat16\", \"float16\"", *value);
}

absl::Status ReadTokenIds(const json& root, const ConfigReader& r, ModelConfig* c) {
  SHARDLM_RETURN_IF_ERROR(r.Int(root, "bos_token_id", false, 0, &c->bos_token_id));
  const json* eos = ConfigReader::Find(root, "eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  const char* kExpected = "a non-negative integer or a list of them";
  auto read_one = [&](const json& v) -> absl::Status {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0) ||
        (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(kMaxInt))) {
      return r.Error("eos_token_id", kExpected, *eos);
    }
    c->eos_token_ids.push_back(v.get<int64_t>());
    return absl::OkStatus();
  };
  if (eos->is_array()) {
    for (const json& v : *eos) {
      SHARDLM_RETURN_IF_ERROR(read_one(v));
    }
    return absl::OkStatus();
  }
  return read_one(*eos);
}

// layer_types (transformers >= 4.56): "sliding_attention" or "full_attention" per layer.
absl::Status ReadLayerTypes(const json& types, const ConfigReader& r, ModelConfig* c) {
  const std::string expected =
      absl::StrCat("a list of ", c->num_layers, " \"sliding_attention\" / \"full_attention\"");
  if (!types.is_array() || static_cast<int64_t>(types.size()) != c->num_layers) {
    return r.Error("layer_types", expected, types);
  }
  c->sliding_layers.clear();
  for (const json& t : types) {
    if (t == "sliding_attention") {
      c->sliding_layers.push_back(true);
    } else if (t == "full_attention") {
      c->sliding_layers.push_back(false);
    } else {
      return r.Error("layer_types", expected, t);
    }
  }
  return absl::OkStatus();
}

absl::Status ReadSlidingWindow(const json& root, const ConfigReader& r, ModelConfig* c) {
  switch (c->arch) {
    case Arch::kLlama:
    case Arch::kGlm:
    case Arch::kGlm4:
      return absl::OkStatus();  // no sliding window; a stray field means nothing.
    case Arch::kMistral:
    case Arch::kMixtral:
    case Arch::kPhi3:
      // Every layer.
      return r.Int(root, "sliding_window", false, 1, &c->sliding_window);
    case Arch::kQwen2:
    case Arch::kQwen3:
    case Arch::kQwen3Moe: {
      bool use = false;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "use_sliding_window", &use));
      // Qwen configs carry a sliding_window value even when it is switched off.
      if (!use) return absl::OkStatus();
      int64_t window = 4096;  // HF's Qwen2Config default
      SHARDLM_RETURN_IF_ERROR(r.Int(root, "sliding_window", false, 1, &window));
      // In HF, layer i uses the window only when i >= max_window_layers.
      int64_t max_window_layers = kQwen2DefaultMaxWindowLayers;
      SHARDLM_RETURN_IF_ERROR(r.Int(root, "max_window_layers", false, 0, &max_window_layers));
      c->sliding_window = window;
      if (const json* types = ConfigReader::Find(root, "layer_types")) {
        return ReadLayerTypes(*types, r, c);
      }
      if (max_window_layers == 0) return absl::OkStatus();  // every layer
      c->sliding_layers.assign(static_cast<size_t>(c->num_layers), false);
      for (int64_t l = max_window_layers; l < c->num_layers; ++l) c->sliding_layers[l] = true;
      return absl::OkStatus();
    }
    case Arch::kGemma3: {
      c->sliding_window = 4096;  // HF's Gemma3TextConfig default
      SHARDLM_RETURN_IF_ERROR(r.Int(root, "sliding_window", false, 1, &c->sliding_window));
      if (const json* types = ConfigReader::Find(root, "layer_types")) {
        return ReadLayerTypes(*types, r, c);
      }
      // Older configs: every `pattern`-th layer is global, the others slide.
      int64_t pattern = 6;
      SHARDLM_RETURN_IF_ERROR(r.Int(root, "sliding_window_pattern", false, 1, &pattern));
      for (int64_t l = 0; l < c->num_layers; ++l) c->sliding_layers.push_back((l + 1) % pattern != 0);
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

// The mixture-of-experts fields of Mixtral and Qwen3-MoE.
absl::Status ReadMoe(const json& root, const ConfigReader& r, ModelConfig* c) {
  if (c->arch == Arch::kMixtral) {
    c->num_experts = 8;  // MixtralConfig's defaults
    c->experts_per_token = 2;
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "num_local_experts", false, 1, &c->num_experts));
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "num_experts_per_tok", false, 1, &c->experts_per_token));
    c->moe_intermediate_size = c->intermediate_size;
    c->norm_topk_prob = true;
  } else if (c->arch == Arch::kQwen3Moe) {
    c->num_experts = 128;  // Qwen3MoeConfig's defaults
    c->experts_per_token = 8;
    c->moe_intermediate_size = 768;
    c->norm_topk_prob = false;
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "num_experts", false, 0, &c->num_experts));
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "num_experts_per_tok", false, 1, &c->experts_per_token));
    SHARDLM_RETURN_IF_ERROR(
        r.Int(root, "moe_intermediate_size", false, 1, &c->moe_intermediate_size));
    SHARDLM_RETURN_IF_ERROR(r.Bool(root, "norm_topk_prob", &c->norm_topk_prob));
    // Layer l's MLP is the mixture unless l is in mlp_only_layers or (l + 1) is not a multiple
    // of decoder_sparse_step.
    int64_t step = 1;
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "decoder_sparse_step", false, 1, &step));
    std::vector<bool> dense(static_cast<size_t>(c->num_layers), false);
    if (const json* only = ConfigReader::Find(root, "mlp_only_layers")) {
      const std::string expected =
          absl::StrCat("a list of layer indices in [0, ", c->num_layers, ")");
      if (!only->is_array()) return r.Error("mlp_only_layers", expected, *only);
      for (const json& l : *only) {
        if (!l.is_number_integer() || l.get<int64_t>() < 0 || l.get<int64_t>() >= c->num_layers) {
          return r.Error("mlp_only_layers", expected, *only);
        }
        dense[static_cast<size_t>(l.get<int64_t>())] = true;
      }
    }
    bool mixed = false;
    for (int64_t l = 0; l < c->num_layers; ++l) {
      const bool moe = !dense[static_cast<size_t>(l)] && (l + 1) % step == 0;
      c->moe_layers.push_back(moe);
      mixed |= !moe;
    }
    if (!mixed) c->moe_layers.clear();
  } else {
    return absl::OkStatus();
  }
  if (c->num_experts > 0 && c->experts_per_token > c->num_experts) {
    return r.Problem("num_experts_per_tok",
                     absl::StrCat("expected at most the number of experts (", c->num_experts,
                                  "), got ", c->experts_per_token));
  }
  return absl::OkStatus();
}

// Fields of a family that shardlm does not implement: an error naming the field when one is
// set to anything but its neutral value, never the wrong math.
absl::Status RejectUnsupported(const json& root, const ConfigReader& r, const ModelConfig& c) {
  if (c.arch == Arch::kGemma3) {
    for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping"}) {
      if (const json* v = ConfigReader::Find(root, key)) {
        return r.Error(key, "null (logit soft-capping is not implemented)", *v);
      }
    }
    if (const json* v = ConfigReader::Find(root, "use_bidirectional_attention");
        v != nullptr && *v != false) {
      return r.Error("use_bidirectional_attention", "false (only causal attention)", *v);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> Parse(const json& root, const std::string& source) {
  ConfigReader r(source);
  if (!root.is_object()) return r.TopLevel(root);
  ModelConfig c;

  absl::StatusOr<Arch> arch = ReadArch(root, r);
  if (!arch.ok()) return arch.status();
  c.arch = *arch;

  struct Required {
    std::string_view key;
    int64_t* out;
  };
  for (const Required& f :
       {Required{"vocab_size", &c.vocab_size}, Required{"hidden_size", &c.hidden_size},
        Required{"intermediate_size", &c.intermediate_size},
        Required{"num_hidden_layers", &c.num_layers},
        Required{"num_attention_heads", &c.num_heads}}) {
    SHARDLM_RETURN_IF_ERROR(r.Int(root, f.key, true, 1, f.out));
  }

  c.num_kv_heads = c.num_heads;
  SHARDLM_RETURN_IF_ERROR(r.Int(root, "num_key_value_heads", false, 1, &c.num_kv_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return r.Problem("num_key_value_heads",
                     absl::StrCat("expected a divisor of num_attention_heads (", c.num_heads,
                                  ") so query heads group evenly, got ", c.num_kv_heads));
  }

  // Families whose HF config class defaults head_dim to a constant rather than hidden / heads.
  const int64_t default_head_dim = c.arch == Arch::kGemma3 ? 256
                                   : c.arch == Arch::kQwen3 || c.arch == Arch::kGlm ||
                                           c.arch == Arch::kGlm4
                                       ? 128
                                       : 0;
  if (ConfigReader::Find(root, "head_dim") != nullptr) {
    SHARDLM_RETURN_IF_ERROR(r.Int(root, "head_dim", false, 1, &c.head_dim));
  } else if (default_head_dim > 0) {
    c.head_dim = default_head_dim;
  } else if (c.hidden_size % c.num_heads != 0) {
    return r.Missing("head_dim", absl::StrCat(": hidden_size (", c.hidden_size,
                                              ") is not divisible by num_attention_heads (",
                                              c.num_heads, "), so it cannot be derived"));
  } else {
    c.head_dim = c.hidden_size / c.num_heads;
  }

  if (c.head_dim % 2 != 0 && ConfigReader::Find(root, "partial_rotary_factor") == nullptr) {
    return r.Problem("head_dim", absl::StrCat("expected an even number (rotary embedding "
                                              "rotates pairs of features), got ",
                                              c.head_dim));
  }
  // Partial rotary (GLM: half of each head by default; Phi-4-mini 0.75): rope turns the first
  // rotary_dim features of each head, in pairs.
  float partial = c.arch == Arch::kGlm || c.arch == Arch::kGlm4 ? 0.5f : 1.0f;
  std::string partial_field = "partial_rotary_factor";
  const json* partial_at = &root;
  if (const json* params = ConfigReader::Find(root, "rope_parameters");
      params != nullptr && params->is_object() &&
      ConfigReader::Find(*params, "partial_rotary_factor") != nullptr) {
    partial_at = params;
    partial_field = "rope_parameters.partial_rotary_factor";
  }
  SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(*partial_at, partial_field, false, &partial));
  const double rotary = static_cast<double>(c.head_dim) * partial;
  c.rope = RopeConfig{};
  c.rope.rotary_dim = static_cast<int>(rotary);  // HF: int(head_dim * partial_rotary_factor)
  if (partial > 1.0f || c.rope.rotary_dim < 2 || c.rope.rotary_dim % 2 != 0) {
    return r.Problem(partial_field,
                     absl::StrCat("expected a factor in (0, 1] giving an even rotary dimension "
                                  "of head_dim ",
                                  c.head_dim, ", got ", partial, " (", rotary, " features)"));
  }

  SHARDLM_RETURN_IF_ERROR(
      r.Int(root, "max_position_embeddings", false, 1, &c.max_position_embeddings));
  SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(root, "rms_norm_eps", false, &c.rms_norm_eps));

  if (c.arch == Arch::kGemma3) c.rope.theta = 1000000.0f;  // Gemma3TextConfig's default
  SHARDLM_RETURN_IF_ERROR(ReadRope(root, r, &c));

  // Gemma 3 uses GeGLU (its field is hidden_activation); every other family SwiGLU. Another
  // activation would run and produce garbage.
  if (c.arch == Arch::kGemma3) {
    c.hidden_act = HiddenAct::kGeluTanh;
    for (const char* key : {"hidden_activation", "hidden_act"}) {
      const json* act = ConfigReader::Find(root, key);
      if (act != nullptr && *act != "gelu_pytorch_tanh") {
        return r.Error(key, "\"gelu_pytorch_tanh\"", *act);
      }
    }
  } else if (const json* act = ConfigReader::Find(root, "hidden_act")) {
    if (!act->is_string() || act->get_ref<const std::string&>() != "silu") {
      return r.Error("hidden_act", "\"silu\"", *act);
    }
  }

  c.tie_word_embeddings = c.arch == Arch::kGemma3;  // Gemma3TextConfig ties by default
  SHARDLM_RETURN_IF_ERROR(r.Bool(root, "tie_word_embeddings", &c.tie_word_embeddings));

  switch (c.arch) {
    case Arch::kLlama: {
      bool attention_bias = false;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "attention_bias", &attention_bias));
      c.qkv_bias = c.o_bias = attention_bias;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "mlp_bias", &c.mlp_bias));
      break;
    }
    case Arch::kMistral: {
      bool attention_bias = false;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "attention_bias", &attention_bias));
      c.qkv_bias = attention_bias;
      break;
    }
    case Arch::kQwen2:
      // Qwen2's q/k/v projections always carry a bias and o/MLP never do; the config has no
      // switch for it.
      c.qkv_bias = true;
      break;
    case Arch::kMixtral:
      break;  // no biases, no switches
    case Arch::kQwen3:
    case Arch::kQwen3Moe:
    case Arch::kGemma3: {
      // q, k, v and o all follow attention_bias.
      bool attention_bias = false;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "attention_bias", &attention_bias));
      c.qkv_bias = c.o_bias = attention_bias;
      c.qk_norm = true;
      if (c.arch == Arch::kGemma3) {
        c.norm_plus_one = c.post_norms = c.scale_embeddings = true;
        float scalar = 256.0f;  // query_pre_attn_scalar, HF's default
        SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(root, "query_pre_attn_scalar", false, &scalar));
        c.attention_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(scalar)));
      }
      break;
    }
    case Arch::kPhi3:
      c.fused_qkv_proj = c.fused_gate_up_proj = true;
      break;
    case Arch::kGlm:
    case Arch::kGlm4: {
      // q, k, v follow attention_bias (on by default); o never has one.
      bool attention_bias = true;
      SHARDLM_RETURN_IF_ERROR(r.Bool(root, "attention_bias", &attention_bias));
      c.qkv_bias = attention_bias;
      c.fused_gate_up_proj = true;
      c.post_norms = c.arch == Arch::kGlm4;
      c.rope.interleaved = true;  // GLM rotates adjacent pairs
      if (c.sliding_rope) c.sliding_rope->interleaved = true;
      break;
    }
  }
  SHARDLM_RETURN_IF_ERROR(ReadMoe(root, r, &c));
  SHARDLM_RETURN_IF_ERROR(RejectUnsupported(root, r, c));

  SHARDLM_RETURN_IF_ERROR(ReadSlidingWindow(root, r, &c));
  SHARDLM_RETURN_IF_ERROR(ReadTorchDtype(root, r, &c.torch_dtype));
  SHARDLM_RETURN_IF_ERROR(ReadTokenIds(root, r, &c));
  return c;
}

// The whole file; NotFound when it does not exist, so callers can tell "absent" from "broken".
absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  const std::string what = "config.json ";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string message = absl::StrCat(what, path, ": cannot open: ", ErrnoMessage(err));
    return err == ENOENT || err == ENOTDIR ? absl::NotFoundError(message)
                                           : absl::InvalidArgumentError(message);
  }
  std::string text;
  struct stat st;
  absl::Status status;
  if (::fstat(fd, &st) != 0) {
    status = absl::InvalidArgumentError(
        absl::StrCat(what, path, ": cannot stat: ", ErrnoMessage(errno)));
  } else if (!S_ISREG(st.st_mode)) {
    status = absl::InvalidArgumentError(absl::StrCat(what, path, ": not a regular file"));
  } else {
    text.reserve(static_cast<size_t>(st.st_size));
    char buf[1 << 16];
    while (true) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = absl::InvalidArgumentError(
            absl::StrCat(what, path, ": read failed: ", ErrnoMessage(errno)));
        break;
      }
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  if (!status.ok()) return status;
  return text;
}

}  // namespace

LayerNormNames NormNamesOf(Arch arch) {
  switch (arch) {
    case Arch::kGemma3:
      return {"input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
              "post_feedforward_layernorm"};
    case Arch::kGlm4:
      return {"input_layernorm", "post_attention_layernorm", "post_self_attn_layernorm",
              "post_mlp_layernorm"};
    default:
      return {"input_layernorm", "post_attention_layernorm", nullptr, nullptr};
  }
}

std::string MoeTensorName(Arch arch, int64_t layer, int64_t expert, MoePart part) {
  const bool mixtral = arch == Arch::kMixtral;
  const std::string block =
      absl::StrCat("model.layers.", layer, mixtral ? ".block_sparse_moe." : ".mlp.");
  if (part == MoePart::kRouter) return block + "gate.weight";
  static constexpr const char* kMixtral[] = {"", "w1", "w3", "w2"};
  static constexpr const char* kQwen[] = {"", "gate_proj", "up_proj", "down_proj"};
  const int i = static_cast<int>(part);
  return absl::StrCat(block, "experts.", expert, ".", mixtral ? kMixtral[i] : kQwen[i], ".weight");
}

bool LayerIsMoe(const ModelConfig& config, int64_t layer) {
  if (config.num_experts <= 0) return false;
  if (config.moe_layers.empty()) return true;
  return layer >= 0 && layer < static_cast<int64_t>(config.moe_layers.size()) &&
         config.moe_layers[static_cast<size_t>(layer)];
}

bool LayerSlides(const ModelConfig& config, int64_t layer) {
  if (config.sliding_window <= 0) return false;
  if (config.sliding_layers.empty()) return true;
  return layer >= 0 && layer < static_cast<int64_t>(config.sliding_layers.size()) &&
         config.sliding_layers[static_cast<size_t>(layer)];
}

std::optional<Arch> ArchFromName(std::string_view name) {
  for (const ArchNames& a : kArchs) {
    if (name == a.model_type || name == a.architecture) return a.arch;
  }
  return std::nullopt;
}

std::string_view ArchName(Arch arch) {
  for (const ArchNames& a : kArchs) {
    if (a.arch == arch) return a.model_type;
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json,
                                             const std::string& source) {
  // nlohmann throws on misuse (and std::bad_alloc exists); callers get a Status, never a throw.
  try {
    return Parse(json, source);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json ", source, ": cannot read: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadConfigFile(path);
  if (!text.ok()) return text.status();
  json parsed;
  try {
    parsed = json::parse(*text);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json ", path, ": not valid JSON: ", e.what()));
  }
  return ParseModelConfig(parsed, path);
}

nlohmann::json ModelConfigToJson(const ModelConfig& c) {
  json j = json::object();
  for (const ArchNames& a : kArchs) {
    if (a.arch == c.arch) {
      j["architectures"] = json::array({std::string(a.architecture)});
      j["model_type"] = std::string(a.model_type);
    }
  }
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  if (c.max_position_embeddings > 0) j["max_position_embeddings"] = c.max_position_embeddings;
  if (c.hidden_act == HiddenAct::kGeluTanh) {
    j["hidden_activation"] = "gelu_pytorch_tanh";
  } else {
    j["hidden_act"] = "silu";
  }
  j["rms_norm_eps"] = FloatToJson(c.rms_norm_eps);
  j["rope_theta"] = FloatToJson(c.rope.theta);
  if (c.rope.rotary_dim != c.head_dim) {
    j["partial_rotary_factor"] =
        static_cast<double>(c.rope.rotary_dim) / static_cast<double>(c.head_dim);
  }
  switch (c.rope.scaling) {
    case RopeConfig::Scaling::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeConfig::Scaling::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", FloatToJson(c.rope.factor)}};
      break;
    case RopeConfig::Scaling::kLlama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", FloatToJson(c.rope.factor)},
          {"low_freq_factor", FloatToJson(c.rope.low_freq_factor)},
          {"high_freq_factor", FloatToJson(c.rope.high_freq_factor)},
          {"original_max_position_embeddings", c.rope.original_max_position},
      };
      break;
    case RopeConfig::Scaling::kLongRope: {
      json shorts = json::array(), longs = json::array();
      for (float f : c.longrope_short) shorts.push_back(FloatToJson(f));
      for (float f : c.longrope_long) longs.push_back(FloatToJson(f));
      j["rope_scaling"] = {{"rope_type", "longrope"},
                           {"short_factor", shorts},
                           {"long_factor", longs}};
      j["original_max_position_embeddings"] = c.rope.original_max_position;
      break;
    }
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  // Phi-3's and GLM's config classes default pad_token_id to an id of their real vocabularies.
  if (c.arch == Arch::kPhi3 || c.arch == Arch::kGlm || c.arch == Arch::kGlm4) {
    j["pad_token_id"] = nullptr;
  }
  auto layer_types = [&] {
    json types = json::array();
    for (int64_t l = 0; l < c.num_layers; ++l) {
      types.push_back(LayerSlides(c, l) ? "sliding_attention" : "full_attention");
    }
    return types;
  };
  switch (c.arch) {
    case Arch::kLlama:
      j["attention_bias"] = c.qkv_bias;
      j["mlp_bias"] = c.mlp_bias;
      break;
    case Arch::kMistral:
    case Arch::kMixtral:
    case Arch::kPhi3:
      if (c.arch == Arch::kMistral) j["attention_bias"] = c.qkv_bias;
      if (c.arch == Arch::kMixtral) {
        j["num_local_experts"] = c.num_experts;
        j["num_experts_per_tok"] = c.experts_per_token;
      }
      j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
      break;
    case Arch::kQwen2:
    case Arch::kQwen3:
    case Arch::kQwen3Moe:
      if (c.arch != Arch::kQwen2) j["attention_bias"] = c.qkv_bias;
      if (c.arch == Arch::kQwen3Moe) {
        j["num_experts"] = c.num_experts;
        j["num_experts_per_tok"] = c.experts_per_token;
        j["moe_intermediate_size"] = c.moe_intermediate_size;
        j["norm_topk_prob"] = c.norm_topk_prob;
        j["decoder_sparse_step"] = 1;
        json dense = json::array();
        for (int64_t l = 0; l < c.num_layers; ++l) {
          if (!LayerIsMoe(c, l)) dense.push_back(l);
        }
        j["mlp_only_layers"] = dense;
      }
      j["use_sliding_window"] = c.sliding_window > 0;
      j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
      if (c.sliding_window > 0) {
        // 0: every layer uses the window; a mix is written per layer.
        j["max_window_layers"] = 0;
        if (!c.sliding_layers.empty()) j["layer_types"] = layer_types();
      }
      break;
    case Arch::kGemma3:
      j["attention_bias"] = c.qkv_bias;
      j["sliding_window"] = c.sliding_window;
      j["layer_types"] = layer_types();
      j["rope_local_base_freq"] = FloatToJson(c.sliding_rope ? c.sliding_rope->theta : 10000.0f);
      // An integer in HF's config class: the scale is scalar^-0.5 of a whole number.
      j["query_pre_attn_scalar"] =
          c.attention_scale > 0
              ? std::llround(1.0 / (static_cast<double>(c.attention_scale) * c.attention_scale))
              : c.head_dim;
      j["final_logit_softcapping"] = nullptr;
      j["attn_logit_softcapping"] = nullptr;
      break;
    case Arch::kGlm:
    case Arch::kGlm4:
      j["attention_bias"] = c.qkv_bias;
      break;
  }
  j["torch_dtype"] = c.torch_dtype == DType::kBF16  ? "bfloat16"
                     : c.torch_dtype == DType::kF16 ? "float16"
                                                    : "float32";
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else if (!c.eos_token_ids.empty()) {
    j["eos_token_id"] = c.eos_token_ids;
  }
  return j;
}

}  // namespace shardlm
