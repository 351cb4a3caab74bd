// Tokenizer unit tests on small hand-made vocabularies (SPM merging by score, byte fallback,
// byte-level BPE by rank, special tokens, BOS/EOS, decoding, streaming) and the pre-tokenizer
// table and splitting rules.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "tests/formats/io_test_util.h"
#include "tokenizer_test_util.h"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::IsValidUtf8;
using ::testing::ElementsAre;
using Ids = std::vector<int32_t>;

std::string ByteToken(int b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
  return buf;
}

// SPM vocabulary: <unk> <s> </s>, 256 byte tokens (ids 3 + byte), then scored pieces.
constexpr int32_t kSpmSpace = 259, kSpmA = 260, kSpmB = 261, kSpmAA = 262, kSpmSpaceA = 263,
                  kSpmSpaceAA = 264, kSpmUser = 265, kSpmSep = 266;
TokenizerVocab SpmVocab() {
  TokenizerVocab v;
  v.kind = TokenizerKind::kSpm;
  v.source = "spm-test";
  const auto add = [&](std::string text, float score, TokenType type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0, TokenType::kUnknown);
  add("<s>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  for (int b = 0; b < 256; ++b) add(ByteToken(b), 0, TokenType::kByte);
  add("\xE2\x96\x81", -10, TokenType::kNormal);            // ▁
  add("a", -10, TokenType::kNormal);
  add("b", -10, TokenType::kNormal);
  add("aa", -1, TokenType::kNormal);
  add("\xE2\x96\x81" "a", -2, TokenType::kNormal);         // ▁a
  add("\xE2\x96\x81" "aa", -0.5, TokenType::kNormal);      // ▁aa
  add("<|user|>", 0, TokenType::kControl);
  add("<sep>", 0, TokenType::kUserDefined);
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

std::unique_ptr<Tokenizer> MustCreate(TokenizerVocab v) {
  auto tok = Tokenizer::Create(std::move(v));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(SpmTokenizerTest, MergesBestScoreFirstAndLeftmostOnTies) {
  auto tok = MustCreate(SpmVocab());
  ASSERT_NE(tok, nullptr);
  // "▁aaa": both "aa" pairs score -1 (best); the leftmost merges, then "▁aa" (-0.5) forms.
  EXPECT_EQ(tok->Encode("aaa", false, false), (Ids{kSpmSpaceAA, kSpmA}));
  EXPECT_EQ(tok->Encode("ab", false, false), (Ids{kSpmSpaceA, kSpmB}));
  EXPECT_EQ(tok->Encode("a b", false, false), (Ids{kSpmSpaceA, kSpmSpace, kSpmB}));
  EXPECT_EQ(tok->Encode("", false, false), Ids{});
}

TEST(SpmTokenizerTest, ByteFallbackAndUnknown) {
  auto tok = MustCreate(SpmVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("a\xC3\xA9", false, false), (Ids{kSpmSpaceA, 3 + 0xC3, 3 + 0xA9}));
  // Invalid UTF-8 still encodes, as its bytes.
  EXPECT_EQ(tok->Encode("a\xFF", false, false), (Ids{kSpmSpaceA, 3 + 0xFF}));
  // Without byte tokens an unknown character is <unk>.
  TokenizerVocab v = SpmVocab();
  for (int b = 0; b < 256; ++b) v.tokens[3 + b] = "unused" + std::to_string(b);
  auto no_bytes = MustCreate(std::move(v));
  ASSERT_NE(no_bytes, nullptr);
  EXPECT_EQ(no_bytes->Encode("a\xC3\xA9", false, false), (Ids{kSpmSpaceA, 0}));
}

TEST(SpmTokenizerTest, SpecialTokensAndBosEos) {
  TokenizerVocab v = SpmVocab();
  v.add_eos = true;
  auto tok = MustCreate(std::move(v));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("a", true, false), (Ids{1, kSpmSpaceA, 2}));
  EXPECT_EQ(tok->Encode("", true, false), (Ids{1, 2}));
  // User-defined tokens always split the text; the text after one gets a space prefix again.
  EXPECT_EQ(tok->Encode("a<sep>a", false, false), (Ids{kSpmSpaceA, kSpmSep, kSpmSpaceA}));
  // Control tokens only with parse_special.
  EXPECT_EQ(tok->Encode("a<|user|>b", false, true), (Ids{kSpmSpaceA, kSpmUser, kSpmSpace, kSpmB}));
  const Ids plain = tok->Encode("a<|user|>b", false, false);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(kSpmUser)));
  EXPECT_EQ(tok->Decode(plain, true), "a<|user|>b");
}

// Chat prompts: control tokens count only inside the template's markup spans; the text between
// special tokens is one fragment across span boundaries, as in a plain encode.
TEST(SpmTokenizerTest, SpecialSpansLimitWhereControlTokensCount) {
  auto tok = MustCreate(SpmVocab());
  ASSERT_NE(tok, nullptr);
  const std::string text = "<|user|>a<|user|>b<sep>";  // markup "<|user|>", content the rest
  const std::vector<TextSpan> markup = {{0, 8}};
  const Ids ids = tok->EncodeWithSpecialSpans(text, false, markup);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), kSpmUser), 1) << testing::DescribeIds(*tok, ids);
  EXPECT_EQ(ids.front(), kSpmUser);
  EXPECT_EQ(ids.back(), kSpmSep);  // user-defined tokens count anywhere, as without parse_special
  // The rest is the content encoded as plain text (after a special token, so with a space prefix
  // as at the start of an input).
  Ids content = tok->Encode("a<|user|>b<sep>", false, /*parse_special=*/false);
  content.insert(content.begin(), kSpmUser);
  EXPECT_EQ(ids, content);
  // The content after the markup token gets the space prefix a plain encode gives it.
  EXPECT_EQ(tok->EncodeWithSpecialSpans("<|user|>a", true, markup),
            tok->Encode("<|user|>a", true, /*parse_special=*/true));
  // A token text only partly inside a span is plain text.
  EXPECT_EQ(tok->EncodeWithSpecialSpans("<|user|>", false, std::vector<TextSpan>{{0, 7}}),
            tok->Encode("<|user|>", false, /*parse_special=*/false));
  // Spans over everything (in any order, overlapping, past the end) parse as parse_special does.
  EXPECT_EQ(tok->EncodeWithSpecialSpans(text, true, std::vector<TextSpan>{{9, 100}, {0, 10}}),
            tok->Encode(text, true, /*parse_special=*/true));
  // No spans: parse_special off.
  EXPECT_EQ(tok->EncodeWithSpecialSpans(text, true, {}), tok->Encode(text, true, false));
  // A span boundary inside plain text changes nothing: "aa" merges across it.
  EXPECT_EQ(tok->EncodeWithSpecialSpans("aa", false, std::vector<TextSpan>{{0, 1}}),
            (Ids{kSpmSpaceAA}));
}

TEST(SpmTokenizerTest, StripAttributesEatWhitespace) {
  TokenizerVocab v = SpmVocab();
  v.attrs.assign(v.tokens.size(), 0);
  v.attrs[kSpmSep] = kTokenLstrip | kTokenRstrip;
  auto tok = MustCreate(std::move(v));
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("a  <sep>  b", false, false),
            (Ids{kSpmSpaceA, kSpmSep, kSpmSpace, kSpmB}));
}

TEST(SpmTokenizerTest, DecodeDropsTheAddedSpaceOnce) {
  auto tok = MustCreate(SpmVocab());
  ASSERT_NE(tok, nullptr);
  const Ids ids{1, kSpmSpaceA, kSpmSpaceA, 2};
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/true), "a a");
  EXPECT_EQ(tok->Decode(ids, /*skip_special=*/false), "<s> a a</s>");
  EXPECT_EQ(tok->Decode(tok->Encode("  a b", true, false), true), "  a b");
  EXPECT_EQ(tok->TokenPiece(kSpmSpaceA), " a");
  EXPECT_EQ(tok->TokenPiece(3 + 'x'), "x");
  EXPECT_EQ(tok->TokenPiece(-1), "");
  EXPECT_EQ(tok->Decode(Ids{-5, 100000, kSpmA}, true), "a");  // out of range: skipped
  // A lone byte that is not UTF-8 decodes as U+FFFD.
  EXPECT_EQ(tok->Decode(Ids{kSpmA, 3 + 0xF0}, true), "a\xEF\xBF\xBD");
}

TEST(SpmTokenizerTest, StreamAssemblesByteTokensIntoCharacters) {
  auto tok = MustCreate(SpmVocab());
  ASSERT_NE(tok, nullptr);
  auto stream = tok->NewStream(/*skip_special=*/true, /*text_start=*/true);
  EXPECT_EQ(stream.Push(kSpmSpaceA), "a");  // the first text's space goes, as in Decode
  EXPECT_EQ(stream.Push(3 + 0xF0), "");
  EXPECT_EQ(stream.Push(3 + 0x9F), "");
  EXPECT_EQ(stream.Push(3 + 0x98), "");
  EXPECT_EQ(stream.Push(3 + 0x81), "\xF0\x9F\x98\x81");  // 😁
  EXPECT_EQ(stream.Push(2), "");                         // </s> skipped
  EXPECT_EQ(stream.Push(kSpmSpaceA), " a");
  EXPECT_EQ(stream.Push(3 + 0xE4), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");  // an incomplete character at the end

  // A continuation of earlier text keeps every space; a broken sequence becomes U+FFFD at once.
  auto more = tok->NewStream(/*skip_special=*/false, /*text_start=*/false);
  EXPECT_EQ(more.Push(kSpmSpaceA), " a");
  EXPECT_EQ(more.Push(3 + 0xE4), "");
  EXPECT_EQ(more.Push(kSpmA), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(more.Push(1), "<s>");
  EXPECT_EQ(more.Flush(), "");
}

// Byte-level BPE: tokens 0..255 are the GPT-2 characters of bytes 0..255, then merges.
constexpr int32_t kBpeHe = 256, kBpeLl = 257, kBpeHell = 258, kBpeHello = 259, kBpeXyz = 260,
                  kBpeEot = 261, kBpeLo = 262;
TokenizerVocab BpeVocab() {
  TokenizerVocab v;
  v.kind = TokenizerKind::kBpe;
  v.source = "bpe-test";
  v.pre = "gpt-2";
  for (int b = 0; b < 256; ++b) v.tokens.push_back(unicode::ByteToUnicode(b));
  v.tokens.insert(v.tokens.end(), {"he", "ll", "hell", "hello", "xyz", "<|endoftext|>", "lo"});
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[kBpeEot] = TokenType::kControl;
  v.merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"x", "y"}, {"l", "o"}};
  v.bos_id = v.eos_id = kBpeEot;
  return v;
}

TEST(BpeTokenizerTest, MergesLowestRankFirst) {
  auto tok = MustCreate(BpeVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("hello", false, false), Ids{kBpeHello});
  // "llo": (l,l) has rank 1, (l,o) rank 5: "ll" wins, "llo" is no merge.
  EXPECT_EQ(tok->Encode("llo", false, false), (Ids{kBpeLl, 'o'}));
  // " hello": the GPT-2 pattern keeps the space with the word; "Ġ" + "hello" is no merge.
  EXPECT_EQ(tok->Encode(" hello", false, false), (Ids{' ', kBpeHello}));
  // "xy" merges into a string that is not a token: its characters are used.
  EXPECT_EQ(tok->Encode("xyz", false, false), (Ids{'x', 'y', 'z'}));
  TokenizerVocab v = BpeVocab();
  v.ignore_merges = true;
  auto ignoring = MustCreate(std::move(v));
  ASSERT_NE(ignoring, nullptr);
  EXPECT_EQ(ignoring->Encode("xyz", false, false), Ids{kBpeXyz});
}

TEST(BpeTokenizerTest, SpecialTokensDecodeAndStream) {
  auto tok = MustCreate(BpeVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->Encode("hello<|endoftext|>", false, true), (Ids{kBpeHello, kBpeEot}));
  const Ids plain = tok->Encode("hello<|endoftext|>", false, false);
  EXPECT_THAT(plain, ::testing::Not(::testing::Contains(kBpeEot)));
  EXPECT_EQ(tok->Decode(plain, true), "hello<|endoftext|>");
  EXPECT_EQ(tok->Decode(Ids{kBpeHello, kBpeEot}, true), "hello");
  EXPECT_EQ(tok->Decode(Ids{kBpeHello, kBpeEot}, false), "hello<|endoftext|>");
  EXPECT_TRUE(tok->IsEog(kBpeEot));
  EXPECT_FALSE(tok->IsEog(kBpeHello));

  const std::string text = "h\xF0\x9F\xA6\x99 \xE4\xBD\xA0\xE5\xA5\xBD!";  // h🦙 你好!
  const Ids ids = tok->Encode(text, false, false);
  EXPECT_EQ(tok->Decode(ids, true), text);
  auto stream = tok->NewStream(true, true);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string chunk = stream.Push(id);
    EXPECT_TRUE(IsValidUtf8(chunk)) << ::shardlm::testing::Escape(chunk);
    streamed += chunk;
  }
  EXPECT_EQ(streamed + stream.Flush(), text);
}

TEST(TokenizerTest, EncodeCheckedRejectsInvalidUtf8) {
  auto tok = MustCreate(BpeVocab());
  ASSERT_NE(tok, nullptr);
  EXPECT_TRUE(IsErrorWith(tok->EncodeChecked("ab\xC3(", false, false).status(),
                          StatusCode::kInvalidArgument, {"UTF-8", "offset 2", "0xC3"}));
  EXPECT_TRUE(IsErrorWith(tok->EncodeChecked("hello\xF0\x9F", false, false).status(),
                          StatusCode::kInvalidArgument, {"offset 5"}));
  auto ok = tok->EncodeChecked("hello", false, false);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, Ids{kBpeHello});
  // Unchecked, invalid bytes are U+FFFD for BPE and nothing breaks.
  EXPECT_EQ(tok->Decode(tok->Encode("a\xFF" "b", false, false), true), "a\xEF\xBF\xBD" "b");
}

TEST(TokenizerTest, CreateRejectsInconsistentVocab) {
  TokenizerVocab v = SpmVocab();
  v.scores.pop_back();
  EXPECT_TRUE(IsErrorWith(Tokenizer::Create(v).status(), StatusCode::kInvalidArgument,
                          {"spm-test", "scores"}));
  v = SpmVocab();
  v.bos_id = 5000;
  EXPECT_TRUE(IsErrorWith(Tokenizer::Create(v).status(), StatusCode::kInvalidArgument,
                          {"bos", "5000"}));
  v = BpeVocab();
  v.pre = "no-such-pre";
  EXPECT_TRUE(IsErrorWith(Tokenizer::Create(v).status(), StatusCode::kInvalidArgument,
                          {"no-such-pre", "llama3", "gpt-2"}));
  EXPECT_TRUE(IsErrorWith(Tokenizer::Create(TokenizerVocab{}).status(),
                          StatusCode::kInvalidArgument, {"empty"}));
}

// ---- pre-tokenizers ----

std::vector<std::string> SplitWith(const std::vector<SplitRule>& rules, std::string_view text) {
  auto pre = PreTokenizer::Create(rules);
  EXPECT_TRUE(pre.ok()) << pre.status();
  if (!pre.ok()) return {};
  std::vector<std::string_view> pieces;
  (*pre)->Split(text, &pieces);
  return std::vector<std::string>(pieces.begin(), pieces.end());
}

std::vector<std::string> SplitNamed(std::string_view name, std::string_view text) {
  auto spec = LookupPreTokenizer(name);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? SplitWith(spec->rules, text) : std::vector<std::string>{};
}

TEST(PreTokenizerTest, Gpt2Pattern) {
  EXPECT_THAT(SplitNamed("gpt-2", "Hello world  foo's 123\n\n bar"),
              ElementsAre("Hello", " world", " ", " foo", "'s", " 123", "\n\n", " bar"));
  EXPECT_THAT(SplitNamed("gpt-2", "a\t\tb  "), ElementsAre("a", "\t", "\t", "b", "  "));
  EXPECT_THAT(SplitNamed("gpt-2", ""), ElementsAre());
}

TEST(PreTokenizerTest, Llama3Pattern) {
  EXPECT_THAT(SplitNamed("llama3", "I'M 12345 ok\n\n  x"),
              ElementsAre("I", "'M", " ", "123", "45", " ok", "\n\n", " ", " x"));
  // Unicode letters and numbers: \p{L} and \p{N} need PCRE2_UCP.
  EXPECT_THAT(SplitNamed("llama3", "\xC3\xA9t\xC3\xA9 \xD9\xA3\xD9\xA4"),  // été ٣٤
              ElementsAre("\xC3\xA9t\xC3\xA9", " ", "\xD9\xA3\xD9\xA4"));
}

TEST(PreTokenizerTest, SequencesOfRules) {
  EXPECT_THAT(SplitNamed("deepseek-llm", "Hi\n3.14"), ElementsAre("Hi", "\n", "3", ".", "14"));
  EXPECT_THAT(SplitNamed("qwen2", "x 2024"), ElementsAre("x", " ", "2", "0", "2", "4"));
  EXPECT_THAT(SplitNamed("starcoder", "v12 ab"), ElementsAre("v", "1", "2", " ab"));
  // A zero-length match is a split point.
  EXPECT_THAT(SplitNamed("superbpe", "1234567"), ElementsAre("1", "234", "567"));
}

TEST(PreTokenizerTest, SplitBehaviors) {
  const auto split = [](SplitBehavior b) {
    return SplitWith({SplitRule{"-", /*literal=*/true, b}}, "the-final--countdown");
  };
  EXPECT_THAT(split(SplitBehavior::kIsolated),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kRemoved), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kMergedWithPrevious),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kMergedWithNext),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(split(SplitBehavior::kContiguous),
              ElementsAre("the", "-", "final", "--", "countdown"));
  EXPECT_TRUE(IsErrorWith(PreTokenizer::Create({SplitRule{"(unclosed"}}).status(),
                          StatusCode::kInvalidArgument, {"(unclosed"}));
}

TEST(PreTokenizerTest, EveryNamedPreTokenizerCompiles) {
  for (const char* name :
       {"default", "gpt-2", "llama3", "llama-bpe", "qwen2", "deepseek-llm", "deepseek-coder",
        "deepseek-v3", "falcon", "mpt", "starcoder", "refact", "smollm", "command-r", "olmo",
        "dbrx", "smaug-bpe", "poro-chat", "jina-v2-code", "jina-v2-es", "viking", "jais",
        "tekken", "chatglm-bpe", "bloom", "gpt3-finnish", "exaone", "phi-2", "stablelm2",
        "codeshell", "chameleon", "minerva-7b", "gpt-4o", "llama4", "seed-coder", "bailingmoe"}) {
    SCOPED_TRACE(name);
    auto spec = LookupPreTokenizer(name);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_FALSE(spec->rules.empty());
    auto pre = PreTokenizer::Create(spec->rules);
    ASSERT_TRUE(pre.ok()) << pre.status();
    std::vector<std::string_view> pieces;
    const std::string text = "Hello, y'all! 3.14159 \xE6\x88\x91\xE6\x83\xB3 \xF0\x9F\x98\x81\n\n";
    (*pre)->Split(text, &pieces);
    std::string joined;
    for (std::string_view p : pieces) joined += p;
    EXPECT_EQ(joined, text);  // these pre-tokenizers drop nothing
  }
  EXPECT_TRUE(LookupPreTokenizer("llama3")->ignore_merges);
  EXPECT_EQ(PreTokenizerNameForRules({SplitRule{Gpt2Pattern()}}), "gpt-2");
  // tokenizer.json spells characters out where the table has \x{...} escapes.
  EXPECT_EQ(PreTokenizerNameForRules(
                {SplitRule{"[\r\n]"}, SplitRule{R"(\s?\p{L}+)"}, SplitRule{R"(\s?\p{P}+)"},
                 SplitRule{"[\xE4\xB8\x80-\xE9\xBE\xA5\xE0\xA0\x80-\xE4\xB8\x80"
                           "\xEA\xB0\x80-\xED\x9F\xBF]+"},
                 SplitRule{R"(\p{N})"}}),
            "deepseek-coder");
  EXPECT_EQ(PreTokenizerNameForRules({SplitRule{"x"}}), "");
  EXPECT_TRUE(IsErrorWith(LookupPreTokenizer("nope").status(), StatusCode::kInvalidArgument,
                          {"'nope'", "llama3", "deepseek-coder", "smollm"}));
}

}  // namespace
}  // namespace shardlm
