// Reading config.json (formats/config.cpp and its parts, e.g. formats/config_rope.cpp): the
// field reader every part uses, so that each problem is one InvalidArgument naming the source,
// the field and expected vs got. Internal to formats/.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "formats/config.h"
#include "nlohmann/json.hpp"

namespace shardlm::config_internal {

using nlohmann::json;

// Integer fields feed `int` members (RopeConfig, AttentionParams) and int32 token ids downstream,
// so anything above int32 cannot be a sensible value and is rejected here rather than wrapping.
inline constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

// Debian's abseil is built with its own string_view type, which StrCat needs.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A bad value as it appears in the file, shortened: enough to recognise it in a one-line message.
inline std::string Got(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 60;
  if (text.size() > kMax) text = text.substr(0, kMax - 3) + "...";
  return text;
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

// The rope settings: rope_theta and rope_scaling (transformers < 5), or rope_parameters (v5; per
// layer type for Gemma 3); Gemma 3's sliding layers use rope_local_base_freq without scaling
// (formats/config_rope.cpp).
absl::Status ReadRope(const json& root, const ConfigReader& r, ModelConfig* c);

}  // namespace shardlm::config_internal
