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

namespace shardlm {
namespace {

using nlohmann::json;

// Integer fields feed `int` members (RopeConfig, AttentionParams) and int32 token ids downstream,
// so anything above int32 cannot be a sensible value and is rejected here rather than wrapping.
constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

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

// Debian's abseil is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ErrnoMessage(int err) {
  return std::error_code(err, std::generic_category()).message();
}

// A bad value as it appears in the file, shortened: enough to recognise it in a one-line message.
std::string Got(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 60;
  if (text.size() > kMax) text = text.substr(0, kMax - 3) + "...";
  return text;
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

// Reads fields of one config.json, turning every problem into a one-line InvalidArgument that
// names the source, the field, and what was expected vs found.
class ConfigReader {
 public:
  explicit ConfigReader(const std::string& source) : source_(source) {}

  absl::Status Error(std::string_view field, std::string_view expected, const json& got) const {
    return absl::InvalidArgumentError(absl::StrCat("config.json ", source_, ": field '", Sv(field),
                                                   "': expected ", Sv(expected), ", got ",
                                                   Got(got)));
  }
  absl::Status Problem(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json ", source_, ": field '", Sv(field), "': ", Sv(what)));
  }
  absl::Status Missing(std::string_view field, std::string_view note = "") const {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json ", source_, ": missing required field '", Sv(field), "'", Sv(note)));
  }
  absl::Status TopLevel(const json& got) const {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json ", source_, ": expected a JSON object at the top level, got ", Got(got)));
  }

  // Absent and null both mean "not given": HF writes null for optional fields left unset.
  static const json* Find(const json& object, std::string_view key) {
    auto it = object.find(std::string(key));
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
  }

  // The key of `field` within its object: "rope_scaling.factor" -> "factor".
  static std::string_view Key(std::string_view field) { return field.substr(field.rfind('.') + 1); }

  // An integer in [min, kMaxInt]; `out` is left alone when the field is absent and not required.
  // `field` is the full name for messages; its last component is looked up in `object`.
  absl::Status Int(const json& object, std::string_view field, bool required, int64_t min,
                   int64_t* out) const {
    const json* value = Find(object, Key(field));
    if (value == nullptr) return required ? Missing(field) : absl::OkStatus();
    const char* expected = min > 0 ? "a positive integer" : "a non-negative integer";
    if (!value->is_number_integer()) return Error(field, expected, *value);
    const std::string at_most = absl::StrCat("an integer at most ", kMaxInt);
    // Read unsigned values as such: a huge one must not wrap into a small or negative int64.
    if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(kMaxInt)) {
      return Error(field, at_most, *value);
    }
    int64_t v = value->get<int64_t>();
    if (v < min) return Error(field, expected, *value);
    if (v > kMaxInt) return Error(field, at_most, *value);
    *out = v;
    return absl::OkStatus();
  }

  // A positive, finite number that fits a float.
  absl::Status PositiveFloat(const json& object, std::string_view field, bool required,
                             float* out) const {
    const json* value = Find(object, Key(field));
    if (value == nullptr) return required ? Missing(field) : absl::OkStatus();
    if (!value->is_number()) return Error(field, "a positive number", *value);
    double v = value->get<double>();
    // In float range both ways: a value below FLT_MIN (1e-50) would become 0 or a denormal as a
    // float, and an rms_norm_eps of 0 divides by zero on an all-zero row.
    if (!(v >= std::numeric_limits<float>::min()) || v > std::numeric_limits<float>::max()) {
      return Error(field, "a positive number in float range [1.2e-38, 3.4e38]", *value);
    }
    *out = static_cast<float>(v);
    return absl::OkStatus();
  }

  absl::Status Bool(const json& object, std::string_view key, bool* out) const {
    const json* value = Find(object, key);
    if (value == nullptr) return absl::OkStatus();
    if (!value->is_boolean()) return Error(key, "true or false", *value);
    *out = value->get<bool>();
    return absl::OkStatus();
  }

 private:
  const std::string& source_;
};

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

// A list of `n` positive floats (longrope's factors).
absl::Status ReadFactors(const json& object, const std::string& field, size_t n,
                         const ConfigReader& r, std::vector<float>* out) {
  const json* value = ConfigReader::Find(object, ConfigReader::Key(field));
  if (value == nullptr) return r.Missing(field);
  const std::string expected = absl::StrCat("a list of ", n, " positive numbers (rotary_dim / 2)");
  if (!value->is_array() || value->size() != n) return r.Error(field, expected, *value);
  out->clear();
  for (const json& v : *value) {
    if (!v.is_number() || !(v.get<double>() > 0) ||
        v.get<double>() > std::numeric_limits<float>::max()) {
      return r.Error(field, expected, *value);
    }
    out->push_back(static_cast<float>(v.get<double>()));
  }
  return absl::OkStatus();
}

// One rope scaling object, `scaling` at `prefix`: "rope_scaling", or in transformers v5 files
// "rope_parameters" (or "rope_parameters.full_attention" / ".sliding_attention"), which also holds
// rope_theta. `root` gives longrope's original_max_position_embeddings when the object does not.
absl::Status ReadRopeScaling(const json& scaling, const std::string& prefix, const json& root,
                             ModelConfig& c, const ConfigReader& r, RopeConfig* rope) {
  if (!scaling.is_object()) return r.Error(prefix, "an object or null", scaling);
  SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(scaling, prefix + ".rope_theta", false, &rope->theta));
  // Older configs spell the key "type"; "rope_type" wins when both are present, as in HF.
  std::string type_field = prefix + ".rope_type";
  const json* type = ConfigReader::Find(scaling, "rope_type");
  if (type == nullptr) {
    type = ConfigReader::Find(scaling, "type");
    if (type != nullptr) type_field = prefix + ".type";
  }
  if (type == nullptr) return r.Missing(type_field);
  const std::string_view kExpected =
      "one of \"llama3\", \"linear\", \"longrope\", \"su\", \"default\"";
  if (!type->is_string()) return r.Error(type_field, kExpected, *type);
  const std::string& name = type->get_ref<const std::string&>();
  auto field = [&](std::string_view key) { return absl::StrCat(prefix, ".", Sv(key)); };

  if (name == "default") return absl::OkStatus();  // HF's spelling of "no scaling"
  if (name == "linear") {
    rope->scaling = RopeConfig::Scaling::kLinear;
    return r.PositiveFloat(scaling, field("factor"), true, &rope->factor);
  }
  if (name == "llama3") {
    rope->scaling = RopeConfig::Scaling::kLlama3;
    // All four are required by HF's own validation; guessing any of them would silently change
    // the frequencies.
    SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(scaling, field("factor"), true, &rope->factor));
    SHARDLM_RETURN_IF_ERROR(
        r.PositiveFloat(scaling, field("low_freq_factor"), true, &rope->low_freq_factor));
    SHARDLM_RETURN_IF_ERROR(
        r.PositiveFloat(scaling, field("high_freq_factor"), true, &rope->high_freq_factor));
    int64_t original = 0;
    SHARDLM_RETURN_IF_ERROR(
        r.Int(scaling, field("original_max_position_embeddings"), true, 1, &original));
    rope->original_max_position = static_cast<int>(original);
    // The interpolation band divides by (high - low).
    if (!(rope->high_freq_factor > rope->low_freq_factor)) {
      return r.Problem(field("high_freq_factor"),
                       absl::StrCat("expected a value greater than low_freq_factor (",
                                    rope->low_freq_factor, "), got ", rope->high_freq_factor));
    }
    return absl::OkStatus();
  }
  if (name == "longrope" || name == "su") {
    // Phi-3: per-pair factors for short and long contexts, and cos/sin scaled by an attention
    // factor (given, or from max_position_embeddings / original_max_position_embeddings).
    rope->scaling = RopeConfig::Scaling::kLongRope;
    const size_t pairs = static_cast<size_t>(rope->rotary_dim / 2);
    std::vector<float> shorts, longs;
    SHARDLM_RETURN_IF_ERROR(ReadFactors(scaling, field("short_factor"), pairs, r, &shorts));
    SHARDLM_RETURN_IF_ERROR(ReadFactors(scaling, field("long_factor"), pairs, r, &longs));
    int64_t original = 0;
    if (ConfigReader::Find(scaling, "original_max_position_embeddings") != nullptr) {
      SHARDLM_RETURN_IF_ERROR(
          r.Int(scaling, field("original_max_position_embeddings"), true, 1, &original));
    } else if (ConfigReader::Find(root, "original_max_position_embeddings") != nullptr) {
      SHARDLM_RETURN_IF_ERROR(r.Int(root, "original_max_position_embeddings", true, 1, &original));
    } else if (c.max_position_embeddings > 0) {
      original = c.max_position_embeddings;
    } else {
      return r.Missing("original_max_position_embeddings", " (longrope needs it)");
    }
    rope->original_max_position = static_cast<int>(original);
    const bool long_context = c.max_position_embeddings > original;
    rope->freq_factors = long_context ? longs : shorts;
    c.longrope_short = std::move(shorts);
    c.longrope_long = std::move(longs);
    float factor = c.max_position_embeddings > 0
                       ? static_cast<float>(static_cast<double>(c.max_position_embeddings) /
                                            static_cast<double>(original))
                       : 1.0f;
    if (ConfigReader::Find(scaling, "factor") != nullptr &&
        c.max_position_embeddings <= 0) {
      SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(scaling, field("factor"), true, &factor));
    }
    rope->factor = factor;
    if (ConfigReader::Find(scaling, "attention_factor") != nullptr) {
      SHARDLM_RETURN_IF_ERROR(
          r.PositiveFloat(scaling, field("attention_factor"), true, &rope->attention_factor));
    } else {
      rope->attention_factor =
          factor <= 1.0f ? 1.0f
                         : static_cast<float>(std::sqrt(
                               1.0 + std::log(static_cast<double>(factor)) /
                                         std::log(static_cast<double>(original))));
    }
    return absl::OkStatus();
  }
  return r.Error(type_field, kExpected, *type);
}

// The rope settings: rope_theta and rope_scaling (transformers < 5), or rope_parameters (v5; per
// layer type for Gemma 3); Gemma 3's sliding layers use rope_local_base_freq without scaling.
absl::Status ReadRope(const json& root, const ConfigReader& r, ModelConfig* c) {
  RopeConfig& rope = c->rope;
  const int rotary_dim = rope.rotary_dim;
  if (const json* params = ConfigReader::Find(root, "rope_parameters")) {
    if (!params->is_object()) return r.Error("rope_parameters", "an object or null", *params);
    const json* global = ConfigReader::Find(*params, "full_attention");
    const json* local = ConfigReader::Find(*params, "sliding_attention");
    if (global == nullptr && local == nullptr) {
      return ReadRopeScaling(*params, "rope_parameters", root, *c, r, &rope);
    }
    if (global != nullptr) {
      SHARDLM_RETURN_IF_ERROR(
          ReadRopeScaling(*global, "rope_parameters.full_attention", root, *c, r, &rope));
    }
    if (local != nullptr) {
      RopeConfig sliding;
      sliding.rotary_dim = rotary_dim;
      SHARDLM_RETURN_IF_ERROR(
          ReadRopeScaling(*local, "rope_parameters.sliding_attention", root, *c, r, &sliding));
      c->sliding_rope = sliding;
    }
    return absl::OkStatus();
  }
  SHARDLM_RETURN_IF_ERROR(r.PositiveFloat(root, "rope_theta", false, &rope.theta));
  if (const json* scaling = ConfigReader::Find(root, "rope_scaling")) {
    SHARDLM_RETURN_IF_ERROR(ReadRopeScaling(*scaling, "rope_scaling", root, *c, r, &rope));
  }
  if (c->arch == Arch::kGemma3) {
    RopeConfig sliding;
    sliding.rotary_dim = rotary_dim;
    SHARDLM_RETURN_IF_ERROR(
        r.PositiveFloat(root, "rope_local_base_freq", false, &sliding.theta));
    c->sliding_rope = sliding;
  }
  return absl::OkStatus();
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
