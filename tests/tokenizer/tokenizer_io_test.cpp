// Tokenizer vocabularies from GGUF metadata and from HF tokenizer.json: defaults, flags, every
// bad input's error naming the file and key; tokenizer.json versions of the test-vector
// vocabularies (which must give the same ids); the SmolLM2 model's tokenizer when it is there.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/loader.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "nlohmann/json.hpp"
#include "tests/formats/io_test_util.h"
#include "tokenizer_test_util.h"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::nlohmann::json;
using ::shardlm::testing::AssetsDir;
using ::shardlm::testing::DescribeIds;
using ::shardlm::testing::Escape;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::ParseVectorOutputs;
using ::shardlm::testing::ReadFileBytes;
using ::shardlm::testing::SplitVectorInputs;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::WriteBytes;
using Ids = std::vector<int32_t>;
using Metadata = std::vector<std::pair<std::string, GgufValue>>;

GgufValue Int32s(const std::vector<int>& v) {
  std::vector<GgufValue> e;
  for (int x : v) e.push_back(GgufInt(GgufType::kInt32, x));
  return GgufArray(GgufType::kInt32, std::move(e));
}
GgufValue Floats(const std::vector<double>& v) {
  std::vector<GgufValue> e;
  for (double x : v) e.push_back(GgufFloat(GgufType::kFloat32, x));
  return GgufArray(GgufType::kFloat32, std::move(e));
}
GgufValue U32(int64_t v) { return GgufInt(GgufType::kUint32, v); }

class GgufVocabTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  absl::StatusOr<TokenizerVocab> Read(const Metadata& metadata) {
    const absl::Status written = WriteGguf(path_, metadata, {});
    EXPECT_TRUE(written.ok()) << written;
    auto gguf = GgufFile::Open(path_);
    if (!gguf.ok()) return gguf.status();
    return TokenizerVocabFromGguf(**gguf);
  }
  static Metadata Spm() {
    return {{"tokenizer.ggml.model", GgufString("llama")},
            {"tokenizer.ggml.tokens",
             GgufStringArray({"<unk>", "<s>", "</s>", "\xE2\x96\x81" "a", "a"})},
            {"tokenizer.ggml.scores", Floats({0, 0, 0, -1, -2})},
            {"tokenizer.ggml.token_type", Int32s({2, 3, 3, 1, 1})}};
  }
  static Metadata Gpt2() {
    return {{"tokenizer.ggml.model", GgufString("gpt2")},
            {"tokenizer.ggml.tokens", GgufStringArray({"h", "e", "he", "<|end|>"})},
            {"tokenizer.ggml.token_type", Int32s({1, 1, 1, 4})},
            {"tokenizer.ggml.merges", GgufStringArray({"h e"})}};
  }
  TempDir dir_;
  const std::string path_ = dir_.File("vocab.gguf");
};

TEST_F(GgufVocabTest, SpmDefaults) {
  auto v = Read(Spm());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->kind, TokenizerKind::kSpm);
  EXPECT_EQ(v->source, path_);
  EXPECT_EQ(v->tokens.size(), 5u);
  EXPECT_EQ(v->scores[3], -1.0f);
  EXPECT_EQ(v->types[1], TokenType::kControl);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_TRUE(v->add_bos);
  EXPECT_FALSE(v->add_eos);
  EXPECT_TRUE(v->add_space_prefix);

  Metadata m = Spm();
  m.push_back({"tokenizer.ggml.add_space_prefix", GgufBool(false)});
  m.push_back({"tokenizer.ggml.add_bos_token", GgufBool(false)});
  m.push_back({"tokenizer.ggml.add_eos_token", GgufBool(true)});
  m.push_back({"tokenizer.ggml.eos_token_id", U32(4)});
  v = Read(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->add_space_prefix);
  EXPECT_FALSE(v->add_bos);
  EXPECT_TRUE(v->add_eos);
  EXPECT_EQ(v->eos_id, 4);
  auto tok = Tokenizer::Create(*v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("a", true, false), (Ids{4, 4}));  // "a" then EOS (also "a")
}

TEST_F(GgufVocabTest, Gpt2ReadsMergesPreAndFlags) {
  Metadata m = Gpt2();
  m.push_back({"tokenizer.ggml.pre", GgufString("llama-bpe")});
  auto v = Read(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->kind, TokenizerKind::kBpe);
  EXPECT_EQ(v->pre, "llama-bpe");
  EXPECT_TRUE(v->ignore_merges);  // llama3 family
  EXPECT_TRUE(v->add_bos);        // ... whose default is to add BOS
  EXPECT_FALSE(v->add_space_prefix);
  EXPECT_EQ(v->bos_id, -1);
  EXPECT_EQ(v->eot_id, 3);  // <|end|> found by its text, and made a control token
  EXPECT_EQ(v->types[3], TokenType::kControl);
  ASSERT_EQ(v->merges.size(), 1u);
  EXPECT_EQ(v->merges[0], (std::pair<std::string, std::string>("h", "e")));

  m.push_back({"tokenizer.ggml.add_bos_token", GgufBool(false)});
  m.push_back({"tokenizer.ggml.bos_token_id", U32(3)});
  v = Read(m);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->add_bos);
  EXPECT_EQ(v->bos_id, 3);
  auto tok = Tokenizer::Create(*v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("he", true, false), Ids{2});
  EXPECT_TRUE((*tok)->IsEog(3));

  v = Read(Gpt2());  // no tokenizer.ggml.pre: "default"
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->pre, "default");
}

TEST_F(GgufVocabTest, UnsupportedModelNamesFileKeyValueAndSupported) {
  Metadata m = Spm();
  m[0].second = GgufString("bert");
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.model", "'bert'", "'llama'", "'gpt2'"}));
}

TEST_F(GgufVocabTest, MissingKeys) {
  Metadata m = Spm();
  m.erase(m.begin() + 1);  // tokens
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kNotFound,
                          {path_, "tokenizer.ggml.tokens"}));
  m = Spm();
  m.erase(m.begin());  // model
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kNotFound,
                          {path_, "tokenizer.ggml.model"}));
  m = Gpt2();
  m.pop_back();  // merges
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kNotFound,
                          {path_, "tokenizer.ggml.merges"}));
}

TEST_F(GgufVocabTest, BadValues) {
  Metadata m = Gpt2();
  m.push_back({"tokenizer.ggml.pre", GgufString("qwerty")});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.pre", "'qwerty'", "llama3", "deepseek-llm"}));
  m = Spm();
  m[2].second = Floats({0, 0, 0});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.scores", "3", "5"}));
  m = Spm();
  m[3].second = Int32s({1, 1});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.token_type"}));
  m = Spm();
  m.push_back({"tokenizer.ggml.bos_token_id", U32(99)});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.bos_token_id", "99"}));
  m = Spm();
  m[1].second = GgufString("not an array");
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.tokens"}));
  m = Gpt2();
  m[3].second = GgufStringArray({"nospace"});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.merges[0]", "'nospace'"}));
  m = Spm();
  m[1].second = GgufArray(GgufType::kString, {});
  EXPECT_TRUE(IsErrorWith(Read(m).status(), StatusCode::kInvalidArgument,
                          {path_, "tokenizer.ggml.tokens", "empty"}));
}

// The chat template: tokenizer.chat_template when present; without it Gemma's for the gemma
// architectures (Gemma 3 270M's GGUF has none), and for others NotFound naming the key.
TEST_F(GgufVocabTest, ChatTemplateFromMetadataElseGemmaArchitecture) {
  auto read = [&](const Metadata& m) -> absl::StatusOr<ChatTemplate> {
    const absl::Status written = WriteGguf(path_, m, {});
    EXPECT_TRUE(written.ok()) << written;
    auto gguf = GgufFile::OpenMetadata(path_);
    if (!gguf.ok()) return gguf.status();
    return ChatTemplateFromGguf(**gguf, path_);
  };
  for (const char* arch : {"gemma", "gemma2", "gemma3"}) {
    Metadata m = Spm();
    m.push_back({"general.architecture", GgufString(arch)});
    auto t = read(m);
    ASSERT_TRUE(t.ok()) << arch << ": " << t.status();
    EXPECT_EQ(t->kind(), ChatTemplate::Kind::kGemma) << arch;
    // The file's own template wins.
    m.push_back({"tokenizer.chat_template", GgufString("{{ '<|im_start|>' + role }}")});
    t = read(m);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(t->kind(), ChatTemplate::Kind::kChatml) << arch;
  }
  Metadata m = Spm();
  EXPECT_TRUE(IsErrorWith(read(m).status(), StatusCode::kNotFound,
                          {path_, "tokenizer.chat_template", "--chat-template"}));
  m.push_back({"general.architecture", GgufString("llama")});
  EXPECT_TRUE(IsErrorWith(read(m).status(), StatusCode::kNotFound,
                          {path_, "tokenizer.chat_template", "--chat-template"}));
}

// ---- tokenizer.json ----

class HfVocabTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  void Write(const json& tokenizer, const json& config = json()) {
    WriteBytes(dir_.File("tokenizer.json"), tokenizer.dump());
    if (!config.is_null()) WriteBytes(dir_.File("tokenizer_config.json"), config.dump());
  }
  // A SentencePiece-style BPE: byte fallback, "▁" for spaces, merges ranked.
  static json SpmJson() {
    json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
      vocab[buf] = 3 + b;
    }
    vocab["\xE2\x96\x81"] = 259;
    vocab["a"] = 260;
    vocab["b"] = 261;
    vocab["\xE2\x96\x81" "a"] = 262;
    vocab["\xE2\x96\x81" "b"] = 263;
    return {
        {"added_tokens",
         {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
          {{"id", 1}, {"content", "<s>"}, {"special", true}},
          {{"id", 2}, {"content", "</s>"}, {"special", true}},
          {{"id", 264}, {"content", "<tool>"}, {"special", false}, {"rstrip", true}}}},
        {"normalizer",
         {{"type", "Sequence"},
          {"normalizers",
           {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
            {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
        {"pre_tokenizer", nullptr},
        {"model",
         {{"type", "BPE"},
          {"byte_fallback", true},
          {"unk_token", "<unk>"},
          {"vocab", vocab},
          {"merges", {"\xE2\x96\x81 a", json::array({"\xE2\x96\x81", "b"})}}}}};
  }
  TempDir dir_;
};

TEST_F(HfVocabTest, SentencePieceStyle) {
  Write(SpmJson(), {{"add_bos_token", true}, {"add_eos_token", false},
                    {"bos_token", {{"content", "<s>"}}}, {"eos_token", "</s>"}});
  auto v = TokenizerVocabFromHfJson(dir_.path());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->kind, TokenizerKind::kSpm);
  EXPECT_TRUE(v->add_space_prefix);
  EXPECT_TRUE(v->add_bos);
  EXPECT_EQ(v->bos_id, 1);
  EXPECT_EQ(v->eos_id, 2);
  EXPECT_EQ(v->unk_id, 0);
  EXPECT_EQ(v->types[3], TokenType::kByte);
  EXPECT_EQ(v->types[264], TokenType::kUserDefined);
  auto tok = Tokenizer::Create(std::move(*v));
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  EXPECT_EQ(t.Encode("a b", true, false), (Ids{1, 262, 263}));
  EXPECT_EQ(t.Encode("b\xC3\xA9", false, false), (Ids{263, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.Encode("a<tool>  b", false, false), (Ids{262, 264, 263}));  // rstrip
  EXPECT_EQ(t.Decode(t.Encode("a b\xC3\xA9", true, false), true), "a b\xC3\xA9");
  // The file path works as well as its folder.
  EXPECT_TRUE(TokenizerVocabFromHfJson(dir_.File("tokenizer.json")).ok());
}

// HF's Metaspace pre-tokenizer: "first" prefixes only the start of the input, "always" every
// segment; neither adds "▁" before text that starts with a space (the Prepend normalizer does).
TEST_F(HfVocabTest, MetaspacePrependSchemes) {
  const auto encode = [&](const std::string& scheme, const std::string& text) {
    json j = SpmJson();
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                          {"prepend_scheme", scheme}, {"split", false}};
    Write(j);
    auto v = TokenizerVocabFromHfJson(dir_.path());
    EXPECT_TRUE(v.ok()) << v.status();
    if (!v.ok()) return Ids{};
    EXPECT_EQ(v->kind, TokenizerKind::kSpm);
    auto tok = Tokenizer::Create(std::move(*v));
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? (*tok)->Encode(text, false, /*parse_special=*/true) : Ids{};
  };
  EXPECT_EQ(encode("first", "a<s>a b"), (Ids{262, 1, 260, 263}));
  EXPECT_EQ(encode("always", "a<s>a b"), (Ids{262, 1, 262, 263}));
  EXPECT_EQ(encode("always", " a"), Ids{262});
  EXPECT_EQ(encode("never", "a"), Ids{260});
  Write(SpmJson());  // Prepend normalizer
  auto tok = Tokenizer::Create(*TokenizerVocabFromHfJson(dir_.path()));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode(" a", false, false), (Ids{259, 262}));
}

TEST_F(HfVocabTest, ByteLevelWithTemplateBos) {
  json vocab;
  for (int b = 0; b < 256; ++b) vocab[unicode::ByteToUnicode(b)] = b;
  vocab["he"] = 256;
  Write({{"added_tokens", {{{"id", 257}, {"content", "<|begin|>"}, {"special", true}}}},
         {"pre_tokenizer",
          {{"type", "Sequence"},
           {"pretokenizers",
            {{{"type", "Split"},
              {"pattern", {{"Regex", LookupPreTokenizer("llama3")->rules[0].pattern}}},
              {"behavior", "Isolated"}},
             {{"type", "ByteLevel"}, {"use_regex", false}}}}}},
         {"post_processor",
          {{"type", "TemplateProcessing"},
           {"single", {{{"SpecialToken", {{"id", "<|begin|>"}}}}, {{"Sequence", {{"id", "A"}}}}}}}},
         {"model",
          {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", {"h e"}}}}});
  auto v = TokenizerVocabFromHfJson(dir_.path());
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->kind, TokenizerKind::kBpe);
  EXPECT_EQ(v->pre, "llama3");  // recognized by its regex
  EXPECT_TRUE(v->ignore_merges);
  EXPECT_TRUE(v->add_bos);
  EXPECT_EQ(v->bos_id, 257);
  auto tok = Tokenizer::Create(std::move(*v));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("he 12345", true, false),
            (Ids{257, 256, ' ', '1', '2', '3', '4', '5'}));
  EXPECT_EQ((*tok)->Encode("<|begin|>", false, true), Ids{257});
}

TEST_F(HfVocabTest, Errors) {
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(), StatusCode::kNotFound,
                          {dir_.File("tokenizer.json")}));
  WriteBytes(dir_.File("tokenizer.json"), "{\"model\": ");
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {"tokenizer.json", "not valid JSON"}));
  json j = SpmJson();
  j["model"]["type"] = "WordPiece";
  Write(j);
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {"tokenizer.json", "'WordPiece'"}));
  j = SpmJson();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  Write(j);
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {"pre_tokenizer", "'Whitespace'"}));
  j = SpmJson();
  j["normalizer"] = {{"type", "Lowercase"}};
  Write(j);
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {"normalizer", "'Lowercase'"}));
  j = SpmJson();
  j["model"]["vocab"] = "oops";
  Write(j);
  EXPECT_TRUE(IsErrorWith(TokenizerVocabFromHfJson(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {"tokenizer.json"}));
}

// ---- the test-vector vocabularies as tokenizer.json ----

// What HF's converters write for a GGUF vocabulary: byte-level ones with ByteLevel plus the
// split rules, SentencePiece ones with Prepend/Replace normalizers and merges made from the
// scores (each piece's splits into two tokens, best-scoring piece first).
json HfJsonFromVocab(const TokenizerVocab& v) {
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    vocab[v.tokens[i]] = i;
    if (v.types[i] == TokenType::kControl || v.types[i] == TokenType::kUserDefined ||
        v.types[i] == TokenType::kUnknown) {
      added.push_back({{"id", i},
                       {"content", v.tokens[i]},
                       {"special", v.types[i] != TokenType::kUserDefined}});
    }
  }
  json model = {{"type", "BPE"}, {"vocab", vocab}, {"ignore_merges", v.ignore_merges}};
  json merges = json::array();
  json out;
  if (v.kind == TokenizerKind::kBpe) {
    for (const auto& [l, r] : v.merges) merges.push_back(json::array({l, r}));
    json pres = json::array();
    const PreTokenizerSpec spec = *LookupPreTokenizer(v.pre);
    for (const SplitRule& rule : spec.rules) {
      pres.push_back({{"type", "Split"}, {"pattern", {{"Regex", rule.pattern}}},
                      {"behavior", "Isolated"}});
    }
    pres.push_back({{"type", "ByteLevel"}, {"use_regex", false}});
    out["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", pres}};
  } else {
    std::vector<std::tuple<float, int32_t, int32_t, int32_t>> scored;  // -score, piece, l, r
    std::unordered_map<std::string, int32_t> ids;
    for (size_t i = 0; i < v.tokens.size(); ++i) ids.emplace(v.tokens[i], i);
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      if (v.types[i] != TokenType::kNormal) continue;
      const std::string& t = v.tokens[i];
      for (size_t k = 1; k < t.size(); ++k) {
        if ((static_cast<uint8_t>(t[k]) & 0xC0) == 0x80) continue;  // inside a character
        auto l = ids.find(t.substr(0, k));
        auto r = ids.find(t.substr(k));
        if (l != ids.end() && r != ids.end()) {
          scored.emplace_back(-v.scores[i], static_cast<int32_t>(i), l->second, r->second);
        }
      }
    }
    std::stable_sort(scored.begin(), scored.end());
    for (const auto& [s, piece, l, r] : scored) {
      merges.push_back(json::array({v.tokens[l], v.tokens[r]}));
    }
    model["byte_fallback"] = true;
    out["normalizer"] = {
        {"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}};
  }
  model["merges"] = merges;
  out["model"] = model;
  out["added_tokens"] = added;
  return out;
}

TEST(HfFromVectorsTest, SameIdsAsTheGgufVocabularies) {
  namespace fs = std::filesystem;
  const std::string dir = AssetsDir() + "/tokenizer-vectors";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) GTEST_SKIP() << "no tokenizer test vectors in " << dir;
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string path = entry.path().string();
    if (entry.path().extension() != ".gguf" || !fs::exists(path + ".inp", ec)) continue;
    SCOPED_TRACE(path);
    auto gguf = GgufFile::Open(path);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto gv = TokenizerVocabFromGguf(**gguf);
    if (!gv.ok()) continue;  // the vectors test reports it
    TempDir tmp;
    ASSERT_TRUE(tmp.ok());
    WriteBytes(tmp.File("tokenizer.json"), HfJsonFromVocab(*gv).dump());
    auto hv = TokenizerVocabFromHfJson(tmp.path());
    ASSERT_TRUE(hv.ok()) << hv.status();
    EXPECT_EQ(hv->kind, gv->kind);
    if (gv->kind == TokenizerKind::kBpe) {
      EXPECT_EQ(hv->pre, PreTokenizerNameForRules(LookupPreTokenizer(gv->pre)->rules));
    }
    auto tok = Tokenizer::Create(std::move(*hv));
    ASSERT_TRUE(tok.ok()) << tok.status();
    const auto inputs = SplitVectorInputs(ReadFileBytes(path + ".inp"));
    const auto outputs = ParseVectorOutputs(ReadFileBytes(path + ".out"));
    ASSERT_EQ(inputs.size(), outputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Ids got = (*tok)->Encode(inputs[i], false, false);
      EXPECT_EQ(got, outputs[i]) << Escape(inputs[i]) << "\n  expected "
                                 << DescribeIds(**tok, outputs[i]) << "\n  got      "
                                 << DescribeIds(**tok, got);
    }
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// ---- SmolLM2 ----

TEST(SmolLm2TokenizerTest, FromTheModelGguf) {
  const std::string path =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) GTEST_SKIP() << path << " is absent";
  auto gguf = GgufFile::Open(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok_or = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok_or.ok()) << tok_or.status();
  const Tokenizer& tok = **tok_or;
  EXPECT_EQ(tok.vocab().kind, TokenizerKind::kBpe);
  EXPECT_EQ(tok.vocab().pre, "smollm");
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_TRUE(tok.IsEog(2));  // <|im_end|>
  EXPECT_TRUE(tok.IsEog(0));  // <|endoftext|>

  const Ids hello = tok.Encode("Hello world", true, false);
  ASSERT_EQ(hello.size(), 2u);
  EXPECT_EQ(tok.TokenText(hello[0]), "Hello");
  EXPECT_EQ(tok.TokenText(hello[1]), "\xC4\xA0world");  // Ġworld
  EXPECT_EQ(tok.Encode("12345", false, false).size(), 5u);  // digits one by one

  for (const std::string text :
       {"The quick brown fox jumps over the lazy dog.", "  leading spaces\n\n\ttabs  ",
        "Unicode: na\xC3\xAFve caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\xA6\x99",
        "def f(x):\n    return x ** 2  # comment", "3.14159 + 2,718 = 5.85959"}) {
    const Ids ids = tok.Encode(text, false, false);
    EXPECT_EQ(tok.Decode(ids, true), text) << DescribeIds(tok, ids);
  }
  const std::string chat = "<|im_start|>user\nHi there<|im_end|>\n";
  const Ids ids = tok.Encode(chat, false, /*parse_special=*/true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  EXPECT_THAT(ids, ::testing::Contains(2));
  EXPECT_EQ(tok.Decode(ids, /*skip_special=*/false), chat);
  EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true), "user\nHi there\n");
  EXPECT_THAT(tok.Encode(chat, false, /*parse_special=*/false),
              ::testing::Not(::testing::Contains(1)));
}

}  // namespace
}  // namespace shardlm
