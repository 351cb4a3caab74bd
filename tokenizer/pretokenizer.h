// Regex pre-tokenizers for BPE vocabularies: text is cut into pieces by a sequence of split rules
// (PCRE2, UTF-8 with Unicode properties, JIT when available), each rule applied to every piece
// the previous rules left, as HF tokenizers' Sequence of Split pre-tokenizers does. BPE merges
// then never cross a piece boundary.
//
// The named pre-tokenizers are those of GGUF's tokenizer.ggml.pre (the names llama.cpp's
// converter writes), each a table entry: its split regexes plus a few tokenizer flags.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shardlm {

// What a rule does with its matches (HF SplitDelimiterBehavior). Zero-length matches are split
// points. Empty pieces are dropped.
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct SplitRule {
  std::string pattern;
  bool literal = false;  // pattern is a plain string, not a regex
  SplitBehavior behavior = SplitBehavior::kIsolated;

  bool operator==(const SplitRule&) const = default;
};

struct PreTokenizerSpec {
  std::string name;
  std::vector<SplitRule> rules;
  bool ignore_merges = false;  // a piece that is itself a token is used whole (llama3, tekken)
  bool add_bos = false;        // default for add_bos when the file does not say
};

// The spec for a tokenizer.ggml.pre name; InvalidArgument listing the known names otherwise.
absl::StatusOr<PreTokenizerSpec> LookupPreTokenizer(std::string_view name);
std::vector<std::string> KnownPreTokenizerNames();
// The first known name whose rules equal `rules` (\x{HHHH} escapes and the characters they
// stand for compare equal), or "" when none does.
std::string PreTokenizerNameForRules(const std::vector<SplitRule>& rules);
// The GPT-2 pattern (what HF's ByteLevel pre-tokenizer with use_regex applies).
const std::string& Gpt2Pattern();

class PreTokenizer {
 public:
  // InvalidArgument naming the pattern and the PCRE2 error for a pattern that does not compile.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(const std::vector<SplitRule>& rules);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Appends the pieces of `text` (views into it, in order) to *pieces. `text` must be valid
  // UTF-8. With no rules the text is one piece. Thread-safe.
  void Split(std::string_view text, std::vector<std::string_view>* pieces) const;

 private:
  struct Compiled;
  PreTokenizer() = default;
  static void SplitOne(const Compiled& rule, void* match_data, std::string_view piece,
                       std::vector<std::string_view>* out);
  std::vector<std::unique_ptr<Compiled>> rules_;
};

}  // namespace shardlm
