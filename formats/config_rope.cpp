// The rope fields of config.json: rope_theta, rope_scaling / rope_parameters (default, linear,
// llama3, yarn, longrope), partial rotary factors and Gemma 3's local rope.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "base/status_macros.h"
#include "formats/config_reader.h"

namespace shardlm::config_internal {
namespace {

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

}  // namespace

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

}  // namespace shardlm::config_internal
