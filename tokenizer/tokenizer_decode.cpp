// Decoding: token pieces, Decode and the streaming decoder.
#include <string>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace shardlm {
namespace {

constexpr char kSpmSpace[] = "\xE2\x96\x81";  // U+2581

}  // namespace

void Tokenizer::AppendPiece(int32_t id, bool render_special, std::string* out) const {
  if (id < 0 || id >= vocab_size()) return;
  const std::string& text = vocab_.tokens[id];
  switch (vocab_.types[id]) {
    case TokenType::kControl:
    case TokenType::kUnknown:
      if (render_special) out->append(text);
      return;
    case TokenType::kUserDefined:
      out->append(text);
      return;
    case TokenType::kUnused:
      return;
    case TokenType::kByte:
      if (vocab_.kind == TokenizerKind::kSpm && token_byte_[id] >= 0) {
        out->push_back(static_cast<char>(token_byte_[id]));
        return;
      }
      break;
    case TokenType::kNormal:
    case TokenType::kUndefined:
      break;
  }
  if (vocab_.kind == TokenizerKind::kSpm) {
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, 3, kSpmSpace) == 0) {
        out->push_back(' ');
        i += 3;
      } else {
        out->push_back(text[i++]);
      }
    }
    return;
  }
  for (size_t i = 0; i < text.size();) {
    const size_t start = i;
    const uint32_t cp = unicode::DecodeUtf8(text, &i);
    const int byte = unicode::UnicodeToByte(cp);
    if (byte >= 0) {
      out->push_back(static_cast<char>(byte));
    } else {
      out->append(text, start, i - start);  // not from the byte map: kept as it is
    }
  }
}

std::string Tokenizer::TokenPiece(int32_t id) const {
  std::string piece;
  AppendPiece(id, /*render_special=*/true, &piece);
  return piece;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string raw;
  bool strip = vocab_.kind == TokenizerKind::kSpm && vocab_.add_space_prefix;
  for (int32_t id : ids) {
    const size_t before = raw.size();
    AppendPiece(id, !skip_special, &raw);
    if (strip && raw.size() > before) {
      if (raw[before] == ' ') raw.erase(before, 1);
      strip = false;
    }
  }
  std::string text;
  text.reserve(raw.size());
  unicode::AppendSanitizedUtf8(raw, /*final=*/true, &text);
  return text;
}

Tokenizer::StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special,
                                        bool text_start)
    : tokenizer_(&tokenizer),
      skip_special_(skip_special),
      strip_space_(text_start && tokenizer.vocab_.kind == TokenizerKind::kSpm &&
                   tokenizer.vocab_.add_space_prefix) {}

std::string Tokenizer::StreamDecoder::Push(int32_t id) {
  const size_t before = pending_.size();
  tokenizer_->AppendPiece(id, !skip_special_, &pending_);
  if (pending_.size() == before) return "";
  if (strip_space_) {
    if (pending_[before] == ' ') pending_.erase(before, 1);
    strip_space_ = false;
  }
  std::string out;
  const size_t used = unicode::AppendSanitizedUtf8(pending_, /*final=*/false, &out);
  pending_.erase(0, used);
  return out;
}

std::string Tokenizer::StreamDecoder::Flush() {
  std::string out;
  unicode::AppendSanitizedUtf8(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace shardlm
