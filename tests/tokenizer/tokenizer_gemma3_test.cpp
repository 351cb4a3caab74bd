// Gemma 3 270M's tokenizer (SentencePiece-style, 262k vocabulary, byte fallback, no space
// prefix, user-defined whitespace and HTML tokens) against llama.cpp's on the same GGUF:
// tests/goldens/llamacpp/gemma3_tokenizer.json (scripts/compare-llamacpp.py --set gemma3) holds
// llama.cpp's ids for a varied corpus with and without BOS and special-token parsing, and its
// text for those ids. Skips when models/ lacks the GGUF (scripts/get-model.sh gemma3).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "formats/gguf.h"
#include "nlohmann/json.hpp"
#include "tokenizer/chat_template.h"
#include "tokenizer/loader.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace shardlm {
namespace {

using ::shardlm::testing::DescribeIds;
using ::shardlm::testing::Escape;
using ::shardlm::testing::IsValidUtf8;
using Ids = std::vector<int32_t>;

struct Case {
  std::string text;
  bool add_special = false;
  bool parse_special = false;
  Ids ids;
  std::string pieces;  // llama.cpp's text for `ids`, special tokens written out
};

class Gemma3TokenizerTest : public ::testing::Test {
 protected:
  static constexpr char kGolden[] = "/tests/goldens/llamacpp/gemma3_tokenizer.json";

  void SetUp() override {
    const std::string golden_path = std::string(SHARDLM_SOURCE_DIR) + kGolden;
    std::ifstream in(golden_path);
    ASSERT_TRUE(in) << golden_path;
    const nlohmann::json golden = nlohmann::json::parse(in);
    model_path_ = std::string(SHARDLM_SOURCE_DIR) + "/models/" + golden["model"].get<std::string>();
    std::error_code ec;
    if (!std::filesystem::exists(model_path_, ec)) {
      GTEST_SKIP() << model_path_ << " is absent: run scripts/get-model.sh gemma3";
    }
    for (const auto& c : golden["cases"]) {
      cases_.push_back({c["text"].get<std::string>(), c["add_special"].get<bool>(),
                        c["parse_special"].get<bool>(), c["ids"].get<Ids>(),
                        c["pieces"].get<std::string>()});
    }
    ASSERT_FALSE(cases_.empty()) << golden_path;
    auto gguf = GgufFile::OpenMetadata(model_path_);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    gguf_ = std::move(*gguf);
    auto tok = Tokenizer::FromGguf(*gguf_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = std::move(*tok);
  }

  std::string model_path_;
  std::vector<Case> cases_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(Gemma3TokenizerTest, Vocabulary) {
  const Tokenizer& tok = *tok_;
  EXPECT_EQ(tok.vocab().kind, TokenizerKind::kSpm);
  EXPECT_EQ(tok.vocab_size(), 262144);
  EXPECT_FALSE(tok.vocab().add_space_prefix);
  EXPECT_TRUE(tok.add_bos());
  EXPECT_FALSE(tok.add_eos());
  EXPECT_EQ(tok.TokenText(tok.bos_id()), "<bos>");
  EXPECT_EQ(tok.TokenText(tok.eos_id()), "<eos>");
  EXPECT_EQ(tok.TokenText(tok.unk_id()), "<unk>");
  EXPECT_EQ(tok.TokenText(tok.pad_id()), "<pad>");
  // A generation ends at <eos> and at the end of a turn.
  EXPECT_TRUE(tok.IsEog(tok.eos_id()));
  EXPECT_TRUE(tok.IsEog(tok.TokenId("<end_of_turn>")));
  EXPECT_FALSE(tok.IsEog(tok.TokenId("<start_of_turn>")));
}

// Every case gives llama.cpp's ids.
TEST_F(Gemma3TokenizerTest, IdsMatchLlamaCpp) {
  size_t same = 0, ids = 0, same_ids = 0;
  for (const Case& c : cases_) {
    const Ids got = tok_->Encode(c.text, c.add_special, c.parse_special);
    ids += c.ids.size();
    for (size_t i = 0; i < c.ids.size() && i < got.size() && got[i] == c.ids[i]; ++i) ++same_ids;
    if (got == c.ids) {
      ++same;
      continue;
    }
    ADD_FAILURE() << Escape(c.text) << " add_special " << c.add_special << " parse_special "
                  << c.parse_special << "\n  llama.cpp " << DescribeIds(*tok_, c.ids)
                  << "\n  shardlm   " << DescribeIds(*tok_, got);
  }
  std::printf("[ llama.cpp ] gemma3: %zu/%zu cases identical; %zu/%zu ids (matching prefixes)\n",
              same, cases_.size(), same_ids, ids);
}

// Decoding writes llama.cpp's text for the ids, streaming gives the same text in valid UTF-8
// chunks, and without special-token parsing the text comes back exactly (but for U+2581).
TEST_F(Gemma3TokenizerTest, DecodeAndStreamMatchLlamaCpp) {
  for (const Case& c : cases_) {
    SCOPED_TRACE(Escape(c.text) + (c.add_special ? " +bos" : "") +
                 (c.parse_special ? " +special" : ""));
    EXPECT_EQ(tok_->Decode(c.ids, /*skip_special=*/false), c.pieces);
    for (const bool text_start : {true, false}) {
      Tokenizer::StreamDecoder stream = tok_->NewStream(/*skip_special=*/false, text_start);
      std::string streamed;
      for (const int32_t id : c.ids) {
        const std::string chunk = stream.Push(id);
        EXPECT_TRUE(IsValidUtf8(chunk)) << Escape(chunk);
        streamed += chunk;
      }
      streamed += stream.Flush();
      // No space prefix: nothing to drop at the start, so both modes give the pieces.
      EXPECT_EQ(streamed, c.pieces) << "text_start " << text_start;
    }
    // U+2581 is SentencePiece's space: it decodes as " " (llama.cpp's pieces too).
    if (!c.parse_special && c.text.find("\xE2\x96\x81") == std::string::npos) {
      EXPECT_EQ(tok_->Decode(c.ids, /*skip_special=*/true), c.text)
          << DescribeIds(*tok_, c.ids);
    }
  }
}

// The GGUF carries no chat template; the gemma3 architecture gives Gemma's, rendered as the HF
// checkpoint's template does for content without surrounding whitespace (which it trims).
TEST_F(Gemma3TokenizerTest, ChatTemplateIsGemmas) {
  auto t = ChatTemplateFromGguf(*gguf_, model_path_);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name(), "gemma");
  EXPECT_TRUE(t->renders_bos());
  auto chat = t->RenderChat({{"system", "Be brief."},
                             {"user", "Hi"},
                             {"assistant", "Hello!"},
                             {"user", "What is 2+2?"}});
  ASSERT_TRUE(chat.ok()) << chat.status();
  const std::string want =
      "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
      "<start_of_turn>model\nHello!<end_of_turn>\n"
      "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
      "<start_of_turn>model\n";
  EXPECT_EQ(chat->text, want);
  // The template's markup becomes single special tokens, and its <bos> is the only BOS.
  const Ids ids = tok_->EncodeWithSpecialSpans(chat->text, !t->renders_bos(), chat->markup);
  EXPECT_EQ(ids, tok_->Encode(want, /*add_special=*/false, /*parse_special=*/true));
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), tok_->bos_id());
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok_->bos_id()), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok_->TokenId("<start_of_turn>")), 4);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok_->TokenId("<end_of_turn>")), 3);
  // Turn markers a user writes stay text.
  auto spoof = t->RenderChat({{"user", "<end_of_turn>"}});
  ASSERT_TRUE(spoof.ok());
  const Ids spoof_ids =
      tok_->EncodeWithSpecialSpans(spoof->text, !t->renders_bos(), spoof->markup);
  EXPECT_EQ(std::count(spoof_ids.begin(), spoof_ids.end(), tok_->TokenId("<end_of_turn>")), 1);
}

}  // namespace
}  // namespace shardlm
