// Tokenizers: SentencePiece-style BPE with byte fallback (GGUF tokenizer.ggml.model "llama") and
// byte-level BPE ("gpt2") with the regex pre-tokenizer named by tokenizer.ggml.pre, plus
// special/added tokens, BOS/EOS flags, decoding, and streaming decoding that never emits half a
// UTF-8 character. Encoding follows llama.cpp (which the llama.cpp test vectors check, made with
// HF tokenizers):
//  * special-token text is cut out of the input first: user-defined tokens (type 4) always,
//    control and unknown tokens (3, 2) only with parse_special; longer tokens first;
//  * SPM: spaces become U+2581 (plus one in front of each text fragment that starts the input or
//    follows a special token, when add_space_prefix), then the adjacent pair whose concatenation
//    is the best-scoring vocabulary entry merges (ties: leftmost) until none is left; a leftover
//    symbol not in the vocabulary becomes its byte tokens <0xXX> (else unk);
//  * BPE: text is split by the pre-tokenizer's regexes, each piece's bytes are mapped through
//    the GPT-2 byte-to-unicode table, and merges apply lowest rank first within each piece.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/pretokenizer.h"

namespace shardlm {

class GgufFile;

enum class TokenizerKind {
  kSpm,  // "llama": SentencePiece-style, U+2581 for spaces, byte fallback
  kBpe,  // "gpt2": byte-level BPE
};

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int8_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// Per-token attributes beyond the type (from tokenizer.json added_tokens).
inline constexpr uint8_t kTokenLstrip = 1;  // matching it eats whitespace to its left
inline constexpr uint8_t kTokenRstrip = 2;  // ... and to its right

struct TokenizerVocab {
  TokenizerKind kind = TokenizerKind::kSpm;
  std::string source;  // the file it came from, for messages
  // Pre-tokenizer. GGUF: the table entry named by `pre` (tokenizer.ggml.pre; "default" when
  // absent), BPE only. With `custom_pre` (tokenizer.json), `pre_rules` as given (maybe none) for
  // either kind, and `pre` only names the matching table entry, or is "custom".
  std::string pre = "default";
  bool custom_pre = false;
  std::vector<SplitRule> pre_rules;
  std::vector<std::string> tokens;
  std::vector<float> scores;      // SPM merge priorities; empty: all 0
  std::vector<TokenType> types;   // empty: all normal
  std::vector<uint8_t> attrs;     // kToken* bits; empty: none
  // BPE merges, rank = index (GGUF "left right" strings split at the first space after the
  // first byte). SPM vocabularies from tokenizer.json rank pairs by these too, GGUF ones by score.
  std::vector<std::pair<std::string, std::string>> merges;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  int32_t eot_id = -1;  // end of turn (<|eot_id|>, <|im_end|>, ...)
  int32_t eom_id = -1;  // end of message (<|eom_id|>)
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SPM: U+2581 before the text; BPE (HF ByteLevel): a space
  // SPM: the prefix goes only before text at the very start of the input (HF Metaspace
  // prepend_scheme "first"), not also after each special token (llama.cpp, HF "always").
  bool space_prefix_first_only = false;
  // SPM: no prefix for text that starts with a space already (HF Metaspace).
  bool space_prefix_unless_space = false;
  bool ignore_merges = false;     // BPE: a piece that is itself a token is used whole
};

// A byte range [begin, end) of a text.
struct TextSpan {
  size_t begin = 0;
  size_t end = 0;
  bool operator==(const TextSpan&) const = default;
};

// Reads the tokenizer.ggml.* keys. Unsupported tokenizer.ggml.model values, missing required keys
// (tokens; merges for gpt2), arrays whose length differs from the token count, ids out of range
// and unknown pre-tokenizer names are errors naming the file and the key.
absl::StatusOr<TokenizerVocab> TokenizerVocabFromGguf(const GgufFile& gguf);

// Reads `dir`/tokenizer.json (model.type BPE; ByteLevel => byte-level BPE, otherwise SPM-style
// with byte_fallback) and, when present, `dir`/tokenizer_config.json (add_bos_token,
// add_eos_token, bos_token, eos_token, pad_token, unk_token). `dir` may also name tokenizer.json.
absl::StatusOr<TokenizerVocab> TokenizerVocabFromHfJson(const std::string& dir);

// When eot_id / eom_id are unset, sets them from well-known token texts (<|eot_id|>, <|im_end|>,
// <|end|>, <end_of_turn>, <|endoftext|>, <EOT>, DeepSeek's end of sentence; <|eom_id|>) and makes
// those tokens control tokens, as llama.cpp does.
void DetectEndOfTurnTokens(TokenizerVocab* vocab);

class Tokenizer {
 public:
  // Validates the vocabulary (array sizes, special ids) and compiles the pre-tokenizer; errors
  // name vocab.source. Encode/Decode are const and safe to call from several threads.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(TokenizerVocab vocab);
  // GGUF metadata straight to a tokenizer.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special: BOS first / EOS last as add_bos / add_eos say. parse_special: control and
  // unknown token text in the input maps to their ids (user-defined tokens always do). Invalid
  // UTF-8 is tolerated: SPM encodes the bytes as byte tokens, BPE sees U+FFFD for them.
  std::vector<int32_t> Encode(std::string_view text, bool add_special, bool parse_special) const;
  // As Encode, but invalid UTF-8 is InvalidArgument naming the byte offset.
  absl::StatusOr<std::vector<int32_t>> EncodeChecked(std::string_view text, bool add_special,
                                                     bool parse_special) const;
  // As Encode with parse_special off, except that control and unknown token text lying wholly
  // inside one of `special_spans` maps to its id: for a rendered chat, whose template markup may
  // hold special tokens and whose message contents may not. The text between special tokens is
  // encoded as one fragment whatever spans it crosses, as Encode does, so when no special-token
  // text lies outside the spans the ids are Encode(text, add_special, true)'s. Spans may come in
  // any order and overlap; parts past the end of `text` are ignored.
  std::vector<int32_t> EncodeWithSpecialSpans(std::string_view text, bool add_special,
                                              std::span<const TextSpan> special_spans) const;

  // The text of `ids`: invalid UTF-8 from byte tokens becomes U+FFFD; with skip_special,
  // control and unknown tokens are left out (otherwise their text is written). For SPM with
  // add_space_prefix, the leading space of the first text is dropped (the one Encode added).
  // Ids out of range are skipped.
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const;

  // The bytes one token stands for (special tokens as their text, no space dropped; may be part
  // of a UTF-8 character). "" for ids out of range.
  std::string TokenPiece(int32_t id) const;
  // The vocabulary string of a token, as stored ("▁Hello", "Ġworld", "<0x0A>"); "" out of range.
  const std::string& TokenText(int32_t id) const;
  // The id whose vocabulary string is `text`, or -1.
  int32_t TokenId(std::string_view text) const;
  TokenType GetTokenType(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.tokens.size()); }
  int32_t bos_id() const { return vocab_.bos_id; }
  int32_t eos_id() const { return vocab_.eos_id; }
  int32_t eot_id() const { return vocab_.eot_id; }
  int32_t unk_id() const { return vocab_.unk_id; }
  int32_t pad_id() const { return vocab_.pad_id; }
  bool add_bos() const { return vocab_.add_bos; }
  bool add_eos() const { return vocab_.add_eos; }
  // End of generation: EOS, EOT, EOM and the usual end-of-turn tokens present in the vocabulary.
  bool IsEog(int32_t id) const;
  const TokenizerVocab& vocab() const { return vocab_; }

  // Incremental detokenization. Push(id) returns the text that became complete, never part of a
  // UTF-8 character: incomplete bytes are held back until later tokens complete them (SPM byte
  // tokens <0xF0><0x9F><0x98><0x81> come out as one emoji on the last push). Flush() returns
  // what is still held, incomplete sequences as U+FFFD. The concatenation of all the chunks is
  // the Decode() of the ids when `text_start` is set: then, as in Decode, the leading space of
  // the first SPM text is dropped. Leave `text_start` false when the ids continue earlier text
  // (tokens generated after a prompt): every piece is then kept as it is, as llama.cpp's
  // token_to_piece does.
  // It refers to the tokenizer, which must outlive it; one per stream, not thread-safe.
  class StreamDecoder {
   public:
    StreamDecoder(const Tokenizer& tokenizer, bool skip_special, bool text_start);
    std::string Push(int32_t id);
    std::string Flush();

   private:
    const Tokenizer* tokenizer_;
    bool skip_special_;
    bool strip_space_;  // drop the leading space of the next text piece
    std::string pending_;  // bytes of an incomplete UTF-8 sequence
  };
  StreamDecoder NewStream(bool skip_special = true, bool text_start = false) const {
    return StreamDecoder(*this, skip_special, text_start);
  }

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;
  struct SpecialMatcher;
  struct Fragment {
    size_t begin = 0, end = 0;  // raw text [begin, end) when id < 0
    int32_t id = -1;
  };

  explicit Tokenizer(TokenizerVocab vocab);
  absl::Status Init();
  // Cuts the special tokens out of `text`: user-defined ones anywhere, control and unknown ones
  // anywhere with parse_special, else only wholly inside one of `special_spans` (sorted and
  // disjoint).
  std::vector<Fragment> Partition(std::string_view text, bool parse_special,
                                  std::span<const TextSpan> special_spans = {}) const;
  std::vector<int32_t> EncodeFragments(std::string_view text, bool add_special,
                                       const std::vector<Fragment>& fragments) const;
  void EncodeSpm(std::string_view text, bool space_prefix, std::vector<int32_t>* out) const;
  void EncodeBpe(std::string_view text, std::vector<int32_t>* out) const;
  // Merges the UTF-8 characters of `word` (SPM: by score or merge rank; BPE: by rank) and
  // appends the resulting symbols' [begin, end) byte ranges.
  void MergeWord(std::string_view word, std::vector<std::pair<uint32_t, uint32_t>>* parts) const;
  void EmitSpmSymbol(std::string_view symbol, std::vector<int32_t>* out) const;
  int32_t MergeRank(std::string_view left, std::string_view right) const;
  // Piece bytes for decoding; `render_special` false leaves control/unknown tokens out.
  void AppendPiece(int32_t id, bool render_special, std::string* out) const;

  TokenizerVocab vocab_;
  StringMap token_to_id_;
  StringMap merge_rank_;  // "left\xFFright" -> rank
  std::vector<int32_t> byte_token_;  // SPM: byte value -> <0xXX> id, -1 when absent
  std::vector<int16_t> token_byte_;  // SPM: id -> byte value of a byte token, -1 otherwise
  std::vector<bool> eog_;
  std::unique_ptr<PreTokenizer> pre_;
  std::unique_ptr<SpecialMatcher> special_;
};

}  // namespace shardlm
