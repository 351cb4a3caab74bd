// TokenizerVocab from a HF tokenizer.json (+ tokenizer_config.json).
#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using ::nlohmann::json;

constexpr char kSpmSpace[] = "\xE2\x96\x81";

absl::StatusOr<json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, " is not valid JSON"));
  return j;
}

absl::Status Unsupported(const std::string& path, const std::string& what, const json& node) {
  std::string type = node.is_object() && node.contains("type") && node["type"].is_string()
                         ? node["type"].get<std::string>()
                         : node.dump();
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": unsupported ", what, " '", type, "'"));
}

// Token text from a config entry: "<s>" or {"content": "<s>", ...}.
std::string TokenString(const json& node) {
  if (node.is_string()) return node.get<std::string>();
  if (node.is_object() && node.contains("content") && node["content"].is_string()) {
    return node["content"].get<std::string>();
  }
  return "";
}

SplitBehavior ParseBehavior(const json& node) {
  const std::string b = node.value("behavior", std::string("Isolated"));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return SplitBehavior::kIsolated;
}

struct PreState {
  std::vector<SplitRule> rules;
  bool byte_level = false;
  bool metaspace = false;
  bool prefix_space = false;
  bool prefix_first_only = false;
};

absl::Status ParsePreTokenizer(const std::string& path, const json& node, PreState* st) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = node.value("type", std::string());
  if (type == "Sequence") {
    for (const json& child : node.value("pretokenizers", json::array())) {
      if (auto s = ParsePreTokenizer(path, child, st); !s.ok()) return s;
    }
  } else if (type == "ByteLevel") {
    st->byte_level = true;
    if (node.value("use_regex", true)) st->rules.push_back(SplitRule{Gpt2Pattern()});
    if (node.value("add_prefix_space", false)) st->prefix_space = true;
  } else if (type == "Split") {
    const json& pattern = node.at("pattern");
    SplitRule rule;
    if (pattern.contains("Regex")) {
      rule.pattern = pattern["Regex"].get<std::string>();
    } else {
      rule.pattern = pattern.at("String").get<std::string>();
      rule.literal = true;
    }
    rule.behavior = ParseBehavior(node);
    if (node.value("invert", false) && rule.behavior != SplitBehavior::kIsolated) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": unsupported pre_tokenizer Split with invert and behavior ",
          node.value("behavior", std::string())));
    }
    st->rules.push_back(std::move(rule));
  } else if (type == "Digits") {
    st->rules.push_back(
        SplitRule{node.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+"});
  } else if (type == "Punctuation") {
    // HF's punctuation: Unicode P plus every ASCII punctuation character.
    st->rules.push_back(
        SplitRule{"[\\p{P}!-/:-@\\[-`{-~]", false, ParseBehavior(node)});
  } else if (type == "Metaspace") {
    st->metaspace = true;
    const std::string scheme = node.value("prepend_scheme", std::string("always"));
    if (node.value("add_prefix_space", true) && scheme != "never") st->prefix_space = true;
    st->prefix_first_only = scheme == "first";
    if (node.value("split", false)) {
      st->rules.push_back(SplitRule{kSpmSpace, true, SplitBehavior::kMergedWithNext});
    }
  } else {
    return Unsupported(path, "pre_tokenizer", node);
  }
  return absl::OkStatus();
}

// SentencePiece-style normalizers: Prepend("▁") and Replace(" ", "▁"). NFC is accepted and not
// applied (llama.cpp does not apply it either).
absl::Status ParseNormalizer(const std::string& path, const json& node, bool* prepend) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = node.value("type", std::string());
  if (type == "Sequence") {
    for (const json& child : node.value("normalizers", json::array())) {
      if (auto s = ParseNormalizer(path, child, prepend); !s.ok()) return s;
    }
  } else if (type == "Prepend" && node.value("prepend", std::string()) == kSpmSpace) {
    *prepend = true;
  } else if (type == "Replace" && node.at("pattern").value("String", std::string()) == " " &&
             node.value("content", std::string()) == kSpmSpace) {
    // Spaces become U+2581: what SPM encoding does anyway.
  } else if (type != "NFC") {
    return Unsupported(path, "normalizer", node);
  }
  return absl::OkStatus();
}

// BOS/EOS from a TemplateProcessing post-processor: a special token before / after $A.
void ParsePostProcessor(const json& node, std::string* bos, std::string* eos) {
  if (!node.is_object()) return;
  const std::string type = node.value("type", std::string());
  if (type == "Sequence") {
    for (const json& child : node.value("processors", json::array())) {
      ParsePostProcessor(child, bos, eos);
    }
    return;
  }
  if (type != "TemplateProcessing" || !node.contains("single")) return;
  const json& single = node["single"];
  if (!single.is_array() || single.empty()) return;
  if (single.front().contains("SpecialToken")) {
    *bos = single.front()["SpecialToken"].value("id", "");
  }
  if (single.size() > 1 && single.back().contains("SpecialToken")) {
    *eos = single.back()["SpecialToken"].value("id", "");
  }
}

absl::StatusOr<TokenizerVocab> ParseTokenizerJson(const std::string& path, const json& tj,
                                                  const json& config) {
  TokenizerVocab v;
  v.source = path;
  const json& model = tj.at("model");
  const std::string model_type = model.value("type", std::string("BPE"));
  if (model_type != "BPE") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": model.type = '", model_type,
                                                   "' is not supported (supported: 'BPE')"));
  }

  PreState pre;
  if (auto s = ParsePreTokenizer(path, tj.value("pre_tokenizer", json()), &pre); !s.ok()) return s;
  bool prepend = false;
  if (auto s = ParseNormalizer(path, tj.value("normalizer", json()), &prepend); !s.ok()) return s;
  const json decoder = tj.value("decoder", json());
  if (!pre.byte_level && decoder.is_object() && decoder.value("type", "") == "ByteLevel") {
    pre.byte_level = true;
  }
  v.kind = pre.byte_level ? TokenizerKind::kBpe : TokenizerKind::kSpm;
  v.add_space_prefix = pre.prefix_space || prepend;
  v.space_prefix_first_only = pre.prefix_first_only && !prepend;
  v.space_prefix_unless_space = pre.metaspace && !prepend;
  v.custom_pre = true;
  v.pre_rules = pre.rules;
  v.pre = PreTokenizerNameForRules(pre.rules);
  if (v.pre.empty()) v.pre = "custom";
  v.ignore_merges = model.value("ignore_merges", false);

  // Vocabulary, then added tokens (which may extend it).
  std::vector<std::pair<int64_t, std::string>> entries;
  int64_t max_id = -1;
  for (const auto& [text, id] : model.at("vocab").items()) {
    entries.emplace_back(id.get<int64_t>(), text);
    max_id = std::max(max_id, entries.back().first);
  }
  const json added = tj.value("added_tokens", json::array());
  for (const json& a : added) max_id = std::max(max_id, a.at("id").get<int64_t>());
  if (max_id < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": model.vocab is empty"));
  const size_t listed = entries.size() + added.size();
  if (max_id >= INT32_MAX || static_cast<size_t>(max_id) > 2 * listed + 1024) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": token id ", max_id,
                                                   " is too large for ", listed, " tokens"));
  }
  const size_t n = static_cast<size_t>(max_id) + 1;
  v.tokens.assign(n, "");
  v.types.assign(n, TokenType::kUnused);
  v.attrs.assign(n, 0);
  for (auto& [id, text] : entries) {
    if (id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": model.vocab gives '", text, "' the id ", id));
    }
    v.types[id] = TokenType::kNormal;
    v.tokens[id] = std::move(text);
  }
  const bool byte_fallback = model.value("byte_fallback", false);
  if (byte_fallback) {
    for (size_t i = 0; i < n; ++i) {
      const std::string& t = v.tokens[i];
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        v.types[i] = TokenType::kByte;
      }
    }
  }
  for (const json& a : added) {
    const int64_t id = a.at("id").get<int64_t>();
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat(path, ": added token id ", id));
    v.tokens[id] = a.at("content").get<std::string>();
    v.types[id] = a.value("special", false) ? TokenType::kControl : TokenType::kUserDefined;
    v.attrs[id] = (a.value("lstrip", false) ? kTokenLstrip : 0) |
                  (a.value("rstrip", false) ? kTokenRstrip : 0);
  }

  for (const json& m : model.value("merges", json::array())) {
    if (m.is_array() && m.size() == 2) {
      v.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    const std::string s = m.get<std::string>();
    const size_t space = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": model.merges entry '", s, "' is not two tokens"));
    }
    v.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
  }

  const auto id_of = [&](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    for (size_t i = 0; i < n; ++i) {
      if (v.tokens[i] == text) return static_cast<int32_t>(i);
    }
    return -1;
  };
  const json& model_unk = model.value("unk_token", json());
  if (model_unk.is_string()) v.unk_id = id_of(model_unk.get<std::string>());
  std::string bos_text, eos_text;
  ParsePostProcessor(tj.value("post_processor", json()), &bos_text, &eos_text);
  const bool post_bos = !bos_text.empty();
  const bool post_eos = !eos_text.empty();
  if (config.is_object()) {
    if (config.contains("bos_token")) bos_text = TokenString(config["bos_token"]);
    if (config.contains("eos_token")) eos_text = TokenString(config["eos_token"]);
    if (config.contains("unk_token") && !config["unk_token"].is_null()) {
      v.unk_id = id_of(TokenString(config["unk_token"]));
    }
    if (config.contains("pad_token") && !config["pad_token"].is_null()) {
      v.pad_id = id_of(TokenString(config["pad_token"]));
    }
  }
  v.bos_id = id_of(bos_text);
  v.eos_id = id_of(eos_text);
  if (v.unk_id >= 0 && v.types[v.unk_id] == TokenType::kNormal) {
    v.types[v.unk_id] = TokenType::kUnknown;
  }
  // add_bos/add_eos: tokenizer_config.json, else the post-processor template.
  const auto config_flag = [&](const char* key, bool fallback) {
    return config.is_object() && config.contains(key) && config[key].is_boolean()
               ? config[key].get<bool>()
               : fallback;
  };
  v.add_bos = config_flag("add_bos_token", post_bos);
  v.add_eos = config_flag("add_eos_token", post_eos);
  DetectEndOfTurnTokens(&v);
  return v;
}

}  // namespace

absl::StatusOr<TokenizerVocab> TokenizerVocabFromHfJson(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool is_dir = fs::is_directory(dir, ec);
  const std::string base = is_dir ? dir : fs::path(dir).parent_path().string();
  const std::string path = is_dir ? (fs::path(dir) / "tokenizer.json").string() : dir;
  auto tj = ReadJson(path);
  if (!tj.ok()) return tj.status();
  json config;
  const std::string config_path = (fs::path(base) / "tokenizer_config.json").string();
  if (fs::exists(config_path, ec)) {
    auto c = ReadJson(config_path);
    if (!c.ok()) return c.status();
    config = std::move(*c);
  }
  try {
    return ParseTokenizerJson(path, *tj, config);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unexpected structure: ", e.what()));
  }
}

}  // namespace shardlm
