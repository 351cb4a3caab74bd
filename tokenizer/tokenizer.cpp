#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

namespace shardlm {
namespace {

constexpr char kSpmSpace[] = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// Texts of end-of-generation tokens found in common vocabularies (llama.cpp's list).
constexpr const char* kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "_<EOT>", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "<|return|>", "<|call|>",
};

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

}  // namespace

void DetectEndOfTurnTokens(TokenizerVocab* vocab) {
  static constexpr const char* kEotTexts[] = {
      "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>",
      "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",  // DeepSeek
  };
  TokenizerVocab& v = *vocab;
  const auto find_text = [&](const char* text) -> int32_t {
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      if (v.tokens[i] == text) return static_cast<int32_t>(i);
    }
    return -1;
  };
  if (v.eot_id < 0) {
    for (const char* text : kEotTexts) {
      if (const int32_t id = find_text(text); id >= 0) {
        v.eot_id = id;
        break;
      }
    }
  }
  if (v.eom_id < 0) v.eom_id = find_text("<|eom_id|>");
  if (v.types.size() == v.tokens.size()) {
    for (int32_t id : {v.eot_id, v.eom_id}) {
      if (id >= 0) v.types[id] = TokenType::kControl;
    }
  }
}

// A byte trie of the special-token texts (control, unknown and user-defined tokens), and their
// matching priority: longer texts first, then lower ids (llama.cpp's order).
struct Tokenizer::SpecialMatcher {
  std::unordered_map<uint64_t, int32_t> edges;  // (node << 8 | byte) -> child node
  std::vector<int32_t> node_token{-1};          // node -> token id ending there
  std::vector<int32_t> by_rank;                 // rank -> token id
  std::unordered_map<int32_t, int32_t> rank;    // token id -> rank
  bool has_user_defined = false;                // matched even without parse_special

  void Add(const std::string& text, int32_t id) {
    int32_t node = 0;
    for (char c : text) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
      auto it = edges.find(key);
      if (it == edges.end()) {
        it = edges.emplace(key, static_cast<int32_t>(node_token.size())).first;
        node_token.push_back(-1);
      }
      node = it->second;
    }
    if (node_token[node] < 0) node_token[node] = id;
  }
};

Tokenizer::Tokenizer(TokenizerVocab vocab) : vocab_(std::move(vocab)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(TokenizerVocab vocab) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer(std::move(vocab)));
  if (absl::Status s = tokenizer->Init(); !s.ok()) return s;
  return tokenizer;
}

absl::Status Tokenizer::Init() {
  TokenizerVocab& v = vocab_;
  const std::string where = v.source.empty() ? "tokenizer" : v.source;
  const size_t n = v.tokens.size();
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(where, ": the vocabulary is empty"));
  if (n > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": too many tokens (", n, ")"));
  }
  const auto check_size = [&](size_t size, const char* what) -> absl::Status {
    if (size != 0 && size != n) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", what, " has ", size,
                                                     " entries for ", n, " tokens"));
    }
    return absl::OkStatus();
  };
  if (auto s = check_size(v.scores.size(), "scores"); !s.ok()) return s;
  if (auto s = check_size(v.types.size(), "token types"); !s.ok()) return s;
  if (auto s = check_size(v.attrs.size(), "token attributes"); !s.ok()) return s;
  if (v.types.empty()) v.types.assign(n, TokenType::kNormal);
  if (v.attrs.empty()) v.attrs.assign(n, 0);
  const std::pair<const char*, int32_t*> ids[] = {{"bos", &v.bos_id}, {"eos", &v.eos_id},
                                                  {"unk", &v.unk_id}, {"pad", &v.pad_id},
                                                  {"eot", &v.eot_id}, {"eom", &v.eom_id}};
  for (const auto& [name, id] : ids) {
    if (*id < -1 || *id >= static_cast<int32_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", name, " token id ", *id,
                                                     " is outside the vocabulary of ", n));
    }
  }

  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!v.tokens[i].empty()) token_to_id_.emplace(v.tokens[i], static_cast<int32_t>(i));
  }
  merge_rank_.reserve(v.merges.size());
  for (size_t i = 0; i < v.merges.size(); ++i) {
    const auto& [left, right] = v.merges[i];
    merge_rank_.emplace(absl::StrCat(left, "\xFF", right), static_cast<int32_t>(i));
  }

  if (v.kind == TokenizerKind::kBpe || v.custom_pre) {
    std::vector<SplitRule> rules = v.pre_rules;
    if (!v.custom_pre) {
      auto spec = LookupPreTokenizer(v.pre);
      if (!spec.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": ", std::string(spec.status().message())));
      }
      rules = spec->rules;
    }
    auto pre = PreTokenizer::Create(rules);
    if (!pre.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", std::string(pre.status().message())));
    }
    pre_ = std::move(*pre);
  }

  if (v.kind == TokenizerKind::kSpm) {
    byte_token_.assign(256, -1);
    token_byte_.assign(n, -1);
    for (int b = 0; b < 256; ++b) {
      char text[8];
      std::snprintf(text, sizeof(text), "<0x%02X>", b);
      byte_token_[b] = TokenId(text);
    }
    for (size_t i = 0; i < n; ++i) {
      const std::string& t = v.tokens[i];
      if (v.types[i] == TokenType::kByte && t.size() == 6 && t.compare(0, 3, "<0x") == 0 &&
          t[5] == '>') {
        const int hi = HexDigit(t[3]), lo = HexDigit(t[4]);
        if (hi >= 0 && lo >= 0) token_byte_[i] = static_cast<int16_t>(hi * 16 + lo);
      }
    }
  }

  special_ = std::make_unique<SpecialMatcher>();
  for (size_t i = 0; i < n; ++i) {
    const TokenType t = v.types[i];
    if ((t == TokenType::kControl || t == TokenType::kUnknown || t == TokenType::kUserDefined) &&
        !v.tokens[i].empty()) {
      special_->by_rank.push_back(static_cast<int32_t>(i));
    }
  }
  std::stable_sort(special_->by_rank.begin(), special_->by_rank.end(),
                   [&](int32_t a, int32_t b) { return v.tokens[a].size() > v.tokens[b].size(); });
  for (size_t r = 0; r < special_->by_rank.size(); ++r) {
    const int32_t id = special_->by_rank[r];
    if (v.types[id] == TokenType::kUserDefined) special_->has_user_defined = true;
    special_->rank.emplace(id, static_cast<int32_t>(r));
    special_->Add(v.tokens[id], id);
  }

  eog_.assign(n, false);
  for (int32_t id : {v.eos_id, v.eot_id, v.eom_id}) {
    if (id >= 0) eog_[id] = true;
  }
  for (const char* text : kEogTexts) {
    const int32_t id = TokenId(text);
    if (id >= 0 && v.types[id] == TokenType::kControl) eog_[id] = true;
  }
  return absl::OkStatus();
}

int32_t Tokenizer::TokenId(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

const std::string& Tokenizer::TokenText(int32_t id) const {
  static const std::string* empty = new std::string();
  return id >= 0 && id < vocab_size() ? vocab_.tokens[id] : *empty;
}

TokenType Tokenizer::GetTokenType(int32_t id) const {
  return id >= 0 && id < vocab_size() ? vocab_.types[id] : TokenType::kUndefined;
}

bool Tokenizer::IsEog(int32_t id) const { return id >= 0 && id < vocab_size() && eog_[id]; }

int32_t Tokenizer::MergeRank(std::string_view left, std::string_view right) const {
  std::string key;
  key.reserve(left.size() + right.size() + 1);
  key.append(left).push_back('\xFF');
  key.append(right);
  auto it = merge_rank_.find(key);
  return it == merge_rank_.end() ? -1 : it->second;
}

std::vector<Tokenizer::Fragment> Tokenizer::Partition(
    std::string_view text, bool parse_special, std::span<const TextSpan> special_spans) const {
  const size_t n = text.size();
  if (n == 0) return {};
  const SpecialMatcher& m = *special_;
  // Every occurrence of every eligible special text, as (rank, position).
  std::vector<std::pair<int32_t, size_t>> found;
  if (parse_special || !special_spans.empty() ? !m.by_rank.empty() : m.has_user_defined) {
    size_t span = 0;  // the first of special_spans that ends after p
    for (size_t p = 0; p < n; ++p) {
      while (span < special_spans.size() && special_spans[span].end <= p) ++span;
      // Control and unknown tokens must end by here (0: none may start at p).
      const size_t special_end = parse_special ? n
                                 : span < special_spans.size() && special_spans[span].begin <= p
                                     ? special_spans[span].end
                                     : 0;
      int32_t node = 0;
      for (size_t q = p; q < n; ++q) {
        auto it = m.edges.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[q]));
        if (it == m.edges.end()) break;
        node = it->second;
        const int32_t id = m.node_token[node];
        if (id >= 0 && (q < special_end || vocab_.types[id] == TokenType::kUserDefined)) {
          found.emplace_back(m.rank.at(id), p);
        }
      }
    }
  }
  if (found.empty()) return {Fragment{0, n, -1}};

  // Tokens in priority order each take their leftmost non-overlapping occurrences that lie wholly
  // in text no earlier token took (what llama.cpp's fragment splitting amounts to).
  std::sort(found.begin(), found.end());
  enum : uint8_t { kRaw = 0, kTaken = 1, kStripped = 2 };
  std::vector<uint8_t> state(n, kRaw);
  std::vector<std::pair<size_t, int32_t>> taken;
  int32_t rank = -1;
  size_t last_end = 0;
  for (const auto& [r, pos] : found) {
    if (r != rank) {
      rank = r;
      last_end = 0;
    }
    const int32_t id = m.by_rank[r];
    const size_t len = vocab_.tokens[id].size();
    if (pos < last_end ||
        std::any_of(state.begin() + pos, state.begin() + pos + len, [](uint8_t s) { return s; })) {
      continue;
    }
    std::fill(state.begin() + pos, state.begin() + pos + len, kTaken);
    last_end = pos + len;
    taken.emplace_back(pos, id);
    if (vocab_.attrs[id] & kTokenLstrip) {
      for (size_t j = pos; j > 0 && state[j - 1] == kRaw && IsAsciiSpace(text[j - 1]); --j) {
        state[j - 1] = kStripped;
      }
    }
    if (vocab_.attrs[id] & kTokenRstrip) {
      for (size_t j = pos + len; j < n && state[j] == kRaw && IsAsciiSpace(text[j]); ++j) {
        state[j] = kStripped;
      }
    }
  }
  std::sort(taken.begin(), taken.end());
  std::vector<Fragment> fragments;
  size_t next_token = 0;
  size_t i = 0;
  while (i < n) {
    if (state[i] == kTaken) {
      const int32_t id = taken[next_token++].second;
      fragments.push_back(Fragment{i, i + vocab_.tokens[id].size(), id});
      i += vocab_.tokens[id].size();
    } else if (state[i] == kStripped) {
      ++i;
    } else {
      size_t j = i;
      while (j < n && state[j] == kRaw) ++j;
      fragments.push_back(Fragment{i, j, -1});
      i = j;
    }
  }
  return fragments;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  return EncodeFragments(text, add_special, Partition(text, parse_special));
}

std::vector<int32_t> Tokenizer::EncodeWithSpecialSpans(
    std::string_view text, bool add_special, std::span<const TextSpan> special_spans) const {
  // Sorted, clamped to the text and merged, for Partition's single pass.
  std::vector<TextSpan> spans;
  for (TextSpan s : special_spans) {
    s.end = std::min(s.end, text.size());
    if (s.begin < s.end) spans.push_back(s);
  }
  std::sort(spans.begin(), spans.end(),
            [](const TextSpan& a, const TextSpan& b) { return a.begin < b.begin; });
  std::vector<TextSpan> merged;
  for (const TextSpan& s : spans) {
    if (!merged.empty() && s.begin <= merged.back().end) {
      merged.back().end = std::max(merged.back().end, s.end);
    } else {
      merged.push_back(s);
    }
  }
  return EncodeFragments(text, add_special, Partition(text, /*parse_special=*/false, merged));
}

std::vector<int32_t> Tokenizer::EncodeFragments(std::string_view text, bool add_special,
                                                const std::vector<Fragment>& fragments) const {
  std::vector<int32_t> out;
  if (add_special && vocab_.add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
  bool after_special = true;  // the start of the input counts as following a special token
  for (const Fragment& f : fragments) {
    if (f.id >= 0) {
      out.push_back(f.id);
      after_special = true;
      continue;
    }
    const std::string_view raw = text.substr(f.begin, f.end - f.begin);
    if (vocab_.kind == TokenizerKind::kSpm) {
      bool prefix = vocab_.space_prefix_first_only ? f.begin == 0 : after_special;
      if (vocab_.space_prefix_unless_space && !raw.empty() && raw[0] == ' ') prefix = false;
      EncodeSpm(raw, vocab_.add_space_prefix && prefix, &out);
    } else {
      EncodeBpe(raw, &out);
    }
    after_special = false;
  }
  if (add_special && vocab_.add_eos && vocab_.eos_id >= 0) out.push_back(vocab_.eos_id);
  return out;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeChecked(std::string_view text,
                                                              bool add_special,
                                                              bool parse_special) const {
  if (const size_t bad = unicode::FindInvalidUtf8(text); bad != unicode::kValid) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "0x%02X", static_cast<uint8_t>(text[bad]));
    return absl::InvalidArgumentError(absl::StrCat("text to encode is not valid UTF-8: byte ",
                                                   hex, " at offset ", bad));
  }
  return Encode(text, add_special, parse_special);
}

void Tokenizer::MergeWord(std::string_view word,
                          std::vector<std::pair<uint32_t, uint32_t>>* parts) const {
  struct Symbol {
    uint32_t begin, len;
    int32_t prev, next;
  };
  struct Bigram {
    double priority;  // higher merges first
    int32_t left, right;
    uint32_t size;
    bool operator<(const Bigram& o) const {
      return priority < o.priority || (priority == o.priority && left > o.left);
    }
  };
  std::vector<Symbol> symbols;
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min<size_t>(unicode::Utf8SeqLen(static_cast<uint8_t>(word[i])),
                                        word.size() - i);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{static_cast<uint32_t>(i), static_cast<uint32_t>(len), index - 1,
                             i + len == word.size() ? -1 : index + 1});
    i += len;
  }
  // SPM vocabularies from GGUF rank pairs by the score of the merged token; everything else by
  // merge rank.
  const bool by_score = vocab_.kind == TokenizerKind::kSpm && vocab_.merges.empty();
  std::priority_queue<Bigram> queue;
  const auto try_add = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    double priority;
    if (by_score) {
      const int32_t id = TokenId(word.substr(l.begin, l.len + r.len));
      if (id < 0) return;
      priority = vocab_.scores.empty() ? 0.0 : vocab_.scores[id];
    } else {
      const int32_t rank = MergeRank(word.substr(l.begin, l.len), word.substr(r.begin, r.len));
      if (rank < 0) return;
      priority = -static_cast<double>(rank);
    }
    queue.push(Bigram{priority, left, right, l.len + r.len});
  };
  for (size_t i = 1; i < symbols.size(); ++i) {
    try_add(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  }
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    if (l.len == 0 || r.len == 0 || l.next != b.right || l.len + r.len != b.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    parts->emplace_back(symbols[i].begin, symbols[i].begin + symbols[i].len);
  }
}

void Tokenizer::EmitSpmSymbol(std::string_view symbol, std::vector<int32_t>* out) const {
  if (const int32_t id = TokenId(symbol); id >= 0) {
    out->push_back(id);
    return;
  }
  bool all_bytes = true;
  for (char c : symbol) all_bytes = all_bytes && byte_token_[static_cast<uint8_t>(c)] >= 0;
  if (all_bytes) {
    for (char c : symbol) out->push_back(byte_token_[static_cast<uint8_t>(c)]);
  } else if (vocab_.unk_id >= 0) {
    out->push_back(vocab_.unk_id);
  }
}

void Tokenizer::EncodeSpm(std::string_view text, bool space_prefix,
                          std::vector<int32_t>* out) const {
  std::string escaped;
  escaped.reserve(text.size() + 8);
  if (space_prefix) escaped += kSpmSpace;
  for (char c : text) {
    if (c == ' ') {
      escaped += kSpmSpace;
    } else {
      escaped.push_back(c);
    }
  }
  std::vector<std::string_view> words;
  std::string clean;
  if (pre_ != nullptr) {
    if (unicode::FindInvalidUtf8(escaped) != unicode::kValid) {
      unicode::AppendSanitizedUtf8(escaped, true, &clean);
      escaped.swap(clean);
    }
    pre_->Split(escaped, &words);
  } else if (!escaped.empty()) {
    words.push_back(escaped);
  }
  std::vector<std::pair<uint32_t, uint32_t>> parts;
  for (std::string_view word : words) {
    parts.clear();
    MergeWord(word, &parts);
    for (const auto& [begin, end] : parts) EmitSpmSymbol(word.substr(begin, end - begin), out);
  }
}

void Tokenizer::EncodeBpe(std::string_view text, std::vector<int32_t>* out) const {
  std::string clean;
  if (vocab_.add_space_prefix && (text.empty() || text[0] != ' ')) clean = " ";
  if (unicode::FindInvalidUtf8(text) != unicode::kValid) {
    unicode::AppendSanitizedUtf8(text, true, &clean);  // what llama.cpp does: U+FFFD
  } else if (!clean.empty()) {
    clean.append(text);
  }
  if (!clean.empty()) text = clean;

  std::vector<std::string_view> pieces;
  pre_->Split(text, &pieces);
  std::string encoded;
  std::vector<std::pair<uint32_t, uint32_t>> parts;
  for (std::string_view piece : pieces) {
    encoded.clear();
    for (char c : piece) encoded += unicode::ByteToUnicode(static_cast<uint8_t>(c));
    if (vocab_.ignore_merges) {
      if (const int32_t id = TokenId(encoded); id >= 0) {
        out->push_back(id);
        continue;
      }
    }
    parts.clear();
    MergeWord(encoded, &parts);
    for (const auto& [begin, end] : parts) {
      const std::string_view symbol = std::string_view(encoded).substr(begin, end - begin);
      if (const int32_t id = TokenId(symbol); id >= 0) {
        out->push_back(id);
        continue;
      }
      // Not a token (merges and vocabulary disagree): its characters one by one.
      for (size_t i = 0; i < symbol.size();) {
        const size_t len = std::min<size_t>(
            unicode::Utf8SeqLen(static_cast<uint8_t>(symbol[i])), symbol.size() - i);
        const int32_t id = TokenId(symbol.substr(i, len));
        if (id >= 0) {
          out->push_back(id);
        } else if (vocab_.unk_id >= 0) {
          out->push_back(vocab_.unk_id);
        }
        i += len;
      }
    }
  }
}

}  // namespace shardlm
