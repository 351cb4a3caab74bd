// libFuzzer harness: the tokenizer on arbitrary bytes, with a real vocabulary: SmolLM2's
// byte-level BPE (models/, fuzz_util.h ModelPathOrSkip) and, when SHARDLM_ASSETS holds it,
// llama.cpp's SentencePiece vocabulary ggml-vocab-llama-spm.gguf. The first input byte picks the
// tokenizer and the flags (parse_special, add_special, skip_special); the rest is the text, and
// read three bytes at a time, a list of ids (some out of range) to decode.
// Invariants: ids in range; EncodeChecked fails exactly on invalid UTF-8 and otherwise equals
// Encode; valid text without added BOS/EOS decodes back to itself; Decode's output is valid
// UTF-8; the streaming decoder's chunks concatenate to Decode.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/loader.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace shardlm::fuzz {
namespace {

std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static std::vector<std::unique_ptr<Tokenizer>> tokenizers;
  return tokenizers;
}

std::unique_ptr<Tokenizer> LoadOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizerFromPath(path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(),
                 std::string(tokenizer.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*tokenizer);
}

bool IsValidUtf8(std::string_view s) { return unicode::FindInvalidUtf8(s) == unicode::kValid; }

std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), c >= 0x20 && c < 0x7F && c != '\\' ? "%c" : "\\x%02X", c);
    out += buf;
  }
  return out;
}

void Check(const Tokenizer& tok, uint8_t flags, std::string_view text) {
  const bool parse_special = flags & 2;
  const bool add_special = flags & 4;
  const bool skip_special = flags & 8;
  const int32_t vocab = tok.vocab_size();

  const std::vector<int32_t> ids = tok.Encode(text, add_special, parse_special);
  for (int32_t id : ids) {
    SHARDLM_FUZZ_CHECK(id >= 0 && id < vocab, "Encode gave id %d, vocabulary %d", id, vocab);
  }
  const bool valid = IsValidUtf8(text);
  absl::StatusOr<std::vector<int32_t>> checked =
      tok.EncodeChecked(text, add_special, parse_special);
  SHARDLM_FUZZ_CHECK(checked.ok() == valid, "EncodeChecked %s on %s UTF-8",
                     checked.ok() ? "accepts" : "refuses", valid ? "valid" : "invalid");
  if (checked.ok()) SHARDLM_FUZZ_CHECK(*checked == ids, "EncodeChecked differs from Encode");

  const std::string decoded = tok.Decode(ids, /*skip_special=*/false);
  SHARDLM_FUZZ_CHECK(IsValidUtf8(decoded), "Decode gave invalid UTF-8");
  // Text comes back unless a character had no token and became the unknown token (SmolLM2's
  // vocabulary lacks some control bytes: "\x16" encodes to its unk, <|endoftext|>), or, for
  // SentencePiece, the text holds its space mark U+2581 (it decodes as a space) or a special
  // token (the text after it gets a space prefix of its own): as in sentencepiece and llama.cpp.
  const bool has_unk =
      tok.unk_id() >= 0 && std::find(ids.begin(), ids.end(), tok.unk_id()) != ids.end();
  bool spm_exception = false;
  if (tok.vocab().kind == TokenizerKind::kSpm) {
    spm_exception = text.find("\xE2\x96\x81") != std::string_view::npos;
    for (int32_t id : ids) {
      const TokenType type = tok.GetTokenType(id);
      spm_exception |= type == TokenType::kControl || type == TokenType::kUnknown ||
                       type == TokenType::kUserDefined;
    }
  }
  if (valid && !add_special && !has_unk && !spm_exception) {
    SHARDLM_FUZZ_CHECK(decoded == text, "round trip: \"%s\" decodes to \"%s\"",
                       Printable(text).c_str(), Printable(decoded).c_str());
  }

  // Arbitrary ids, some outside [0, vocab): Decode skips those.
  std::vector<int32_t> any;
  for (size_t i = 0; i + 3 <= text.size(); i += 3) {
    const uint32_t v = static_cast<uint8_t>(text[i]) | static_cast<uint8_t>(text[i + 1]) << 8 |
                       static_cast<uint32_t>(static_cast<uint8_t>(text[i + 2])) << 16;
    any.push_back(static_cast<int32_t>(v % (static_cast<uint32_t>(vocab) + 16)) - 8);
  }
  const std::vector<int32_t>* lists[] = {&ids, &any};
  for (const std::vector<int32_t>* list : lists) {
    const std::string whole = tok.Decode(*list, skip_special);
    SHARDLM_FUZZ_CHECK(IsValidUtf8(whole), "Decode gave invalid UTF-8");
    Tokenizer::StreamDecoder stream = tok.NewStream(skip_special, /*text_start=*/true);
    std::string streamed;
    for (int32_t id : *list) {
      const std::string chunk = stream.Push(id);
      SHARDLM_FUZZ_CHECK(IsValidUtf8(chunk), "StreamDecoder::Push gave invalid UTF-8");
      streamed += chunk;
    }
    streamed += stream.Flush();
    SHARDLM_FUZZ_CHECK(streamed == whole, "streamed \"%s\", Decode \"%s\"",
                       Printable(streamed).c_str(), Printable(whole).c_str());
    for (int32_t id : *list) (void)tok.TokenPiece(id);
  }
}

}  // namespace
}  // namespace shardlm::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace shardlm;
  fuzz::Tokenizers().push_back(fuzz::LoadOrDie(fuzz::ModelPathOrSkip()));
  std::string assets;
  if (const char* env = std::getenv("SHARDLM_ASSETS"); env != nullptr && *env != '\0') {
    assets = env;
  } else {
    assets = SHARDLM_ASSETS_DIR;
  }
  const std::string spm = assets + "/tokenizer-vectors/ggml-vocab-llama-spm.gguf";
  if (std::filesystem::exists(spm)) {
    fuzz::Tokenizers().push_back(fuzz::LoadOrDie(spm));
  } else {
    std::fprintf(stderr, "note: %s is absent: fuzzing the BPE tokenizer only\n", spm.c_str());
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  if (size == 0) return 0;
  const auto& tokenizers = fuzz::Tokenizers();
  const uint8_t flags = data[0];
  const Tokenizer& tok = *tokenizers[(flags & 1) % tokenizers.size()];
  fuzz::Check(tok, flags, std::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  return 0;
}
