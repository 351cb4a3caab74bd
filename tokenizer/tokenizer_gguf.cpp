// TokenizerVocab from GGUF metadata (tokenizer.ggml.*), with llama.cpp's defaults.
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/gguf.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {
namespace {

constexpr char kModelKey[] = "tokenizer.ggml.model";
constexpr char kTokensKey[] = "tokenizer.ggml.tokens";
constexpr char kScoresKey[] = "tokenizer.ggml.scores";
constexpr char kTypesKey[] = "tokenizer.ggml.token_type";
constexpr char kMergesKey[] = "tokenizer.ggml.merges";
constexpr char kPreKey[] = "tokenizer.ggml.pre";

absl::Status Annotate(const absl::Status& s, const GgufFile& gguf, std::string_view key) {
  std::string message(s.message());
  if (message.find(std::string(key)) == std::string::npos) {
    message = absl::StrCat(gguf.path(), ": ", std::string(key), ": ", message);
  }
  return absl::Status(s.code(), message);
}

absl::Status Missing(const GgufFile& gguf, std::string_view key) {
  return absl::NotFoundError(
      absl::StrCat(gguf.path(), ": missing required key '", std::string(key), "'"));
}

// Reads an optional token id into *id; absent keys leave it unchanged.
absl::Status ReadId(const GgufFile& gguf, std::string_view key, size_t n_tokens, int32_t* id) {
  if (gguf.Find(key) == nullptr) return absl::OkStatus();
  auto value = gguf.GetInt(key);
  if (!value.ok()) return Annotate(value.status(), gguf, key);
  if (*value == -1 || *value == 0xFFFFFFFFll) {  // "none"
    *id = -1;
    return absl::OkStatus();
  }
  if (*value < 0 || *value >= static_cast<int64_t>(n_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", std::string(key), " = ",
                                                   *value, " is outside the vocabulary of ",
                                                   n_tokens, " tokens"));
  }
  *id = static_cast<int32_t>(*value);
  return absl::OkStatus();
}

absl::Status ReadBool(const GgufFile& gguf, std::string_view key, bool* out) {
  if (gguf.Find(key) == nullptr) return absl::OkStatus();
  auto value = gguf.GetBool(key);
  if (!value.ok()) return Annotate(value.status(), gguf, key);
  *out = *value;
  return absl::OkStatus();
}

absl::Status CheckLength(const GgufFile& gguf, std::string_view key, size_t size, size_t n) {
  if (size == n) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", std::string(key), " has ",
                                                 size, " entries but ", kTokensKey, " has ", n));
}

}  // namespace

absl::StatusOr<TokenizerVocab> TokenizerVocabFromGguf(const GgufFile& gguf) {
  TokenizerVocab v;
  v.source = gguf.path();
  if (gguf.Find(kModelKey) == nullptr) return Missing(gguf, kModelKey);
  auto model = gguf.GetString(kModelKey);
  if (!model.ok()) return Annotate(model.status(), gguf, kModelKey);
  if (*model == "llama") {
    v.kind = TokenizerKind::kSpm;
  } else if (*model == "gpt2") {
    v.kind = TokenizerKind::kBpe;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(gguf.path(), ": ", kModelKey, " = '", *model,
                     "' is not supported (supported: 'llama' (SentencePiece BPE), "
                     "'gpt2' (byte-level BPE))"));
  }

  if (gguf.Find(kTokensKey) == nullptr) return Missing(gguf, kTokensKey);
  auto tokens = gguf.GetStringArray(kTokensKey);
  if (!tokens.ok()) return Annotate(tokens.status(), gguf, kTokensKey);
  v.tokens = std::move(*tokens);
  const size_t n = v.tokens.size();
  if (n == 0) {
    return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", kTokensKey, " is empty"));
  }

  if (gguf.Find(kScoresKey) != nullptr) {
    auto scores = gguf.GetFloatArray(kScoresKey);
    if (!scores.ok()) return Annotate(scores.status(), gguf, kScoresKey);
    if (auto s = CheckLength(gguf, kScoresKey, scores->size(), n); !s.ok()) return s;
    v.scores.assign(scores->begin(), scores->end());
  }
  if (gguf.Find(kTypesKey) != nullptr) {
    auto types = gguf.GetIntArray(kTypesKey);
    if (!types.ok()) return Annotate(types.status(), gguf, kTypesKey);
    if (auto s = CheckLength(gguf, kTypesKey, types->size(), n); !s.ok()) return s;
    v.types.reserve(n);
    for (int64_t t : *types) {
      v.types.push_back(t >= 0 && t <= 6 ? static_cast<TokenType>(t) : TokenType::kUndefined);
    }
  } else {
    v.types.assign(n, TokenType::kNormal);
  }

  if (v.kind == TokenizerKind::kBpe) {
    if (gguf.Find(kMergesKey) == nullptr) return Missing(gguf, kMergesKey);
    auto merges = gguf.GetStringArray(kMergesKey);
    if (!merges.ok()) return Annotate(merges.status(), gguf, kMergesKey);
    v.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const std::string& m = (*merges)[i];
      const size_t space = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", kMergesKey, "[", i,
                                                       "] = '", m,
                                                       "' is not two tokens joined by a space"));
      }
      v.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
    }
    if (gguf.Find(kPreKey) != nullptr) {
      auto pre = gguf.GetString(kPreKey);
      if (!pre.ok()) return Annotate(pre.status(), gguf, kPreKey);
      v.pre = *pre;
    }
    auto spec = LookupPreTokenizer(v.pre);
    if (!spec.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(gguf.path(), ": ", kPreKey, ": ",
                                                     std::string(spec.status().message())));
    }
    v.ignore_merges = spec->ignore_merges;
    v.add_bos = spec->add_bos;
  } else {
    // SentencePiece defaults (llama.cpp's): <unk>=0, <s>=1, </s>=2, BOS added, space prefix.
    v.pre = "default";
    v.unk_id = n > 0 ? 0 : -1;
    v.bos_id = n > 1 ? 1 : -1;
    v.eos_id = n > 2 ? 2 : -1;
    v.add_bos = true;
    v.add_space_prefix = true;
  }

  const std::pair<const char*, int32_t*> ids[] = {
      {"tokenizer.ggml.bos_token_id", &v.bos_id},
      {"tokenizer.ggml.eos_token_id", &v.eos_id},
      {"tokenizer.ggml.unknown_token_id", &v.unk_id},
      {"tokenizer.ggml.padding_token_id", &v.pad_id},
      {"tokenizer.ggml.eot_token_id", &v.eot_id},
      {"tokenizer.ggml.eom_token_id", &v.eom_id},
  };
  for (const auto& [key, id] : ids) {
    if (auto s = ReadId(gguf, key, n, id); !s.ok()) return s;
  }
  if (auto s = ReadBool(gguf, "tokenizer.ggml.add_bos_token", &v.add_bos); !s.ok()) return s;
  if (auto s = ReadBool(gguf, "tokenizer.ggml.add_eos_token", &v.add_eos); !s.ok()) return s;
  if (v.kind == TokenizerKind::kSpm) {
    // llama.cpp reads it for every vocabulary but uses it only for SentencePiece ones.
    if (auto s = ReadBool(gguf, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix); !s.ok()) {
      return s;
    }
  }

  DetectEndOfTurnTokens(&v);
  return v;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  auto vocab = TokenizerVocabFromGguf(gguf);
  if (!vocab.ok()) return vocab.status();
  return Create(std::move(*vocab));
}

}  // namespace shardlm
