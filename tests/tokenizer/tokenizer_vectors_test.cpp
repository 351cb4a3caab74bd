// llama.cpp's tokenizer test vectors: every ggml-vocab-*.gguf in SHARDLM_ASSETS/tokenizer-vectors
// with its .inp strings and .out ids (made with HF tokenizers, no BOS, special text not parsed).
// Every string must encode to exactly the expected ids; decoding and streaming are checked on the
// same strings.
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace shardlm {
namespace {

using ::shardlm::testing::AssetsDir;
using ::shardlm::testing::DescribeIds;
using ::shardlm::testing::Escape;
using ::shardlm::testing::IsValidUtf8;
using ::shardlm::testing::ParseVectorOutputs;
using ::shardlm::testing::ReadFileBytes;
using ::shardlm::testing::SplitVectorInputs;

struct VectorSet {
  std::string name;  // NAME of ggml-vocab-NAME.gguf
  std::string gguf;
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> outputs;
};

// Lists the folder: every ggml-vocab-*.gguf that has .inp and .out files next to it.
std::vector<VectorSet> FindVectorSets(std::string* dir_out) {
  namespace fs = std::filesystem;
  const std::string dir = AssetsDir() + "/tokenizer-vectors";
  *dir_out = dir;
  std::vector<VectorSet> sets;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return sets;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.rfind("ggml-vocab-", 0) != 0 || entry.path().extension() != ".gguf") continue;
    const std::string path = entry.path().string();
    if (!fs::exists(path + ".inp", ec) || !fs::exists(path + ".out", ec)) continue;
    VectorSet set;
    set.name = file.substr(11, file.size() - 11 - 5);
    set.gguf = path;
    set.inputs = SplitVectorInputs(ReadFileBytes(path + ".inp"));
    set.outputs = ParseVectorOutputs(ReadFileBytes(path + ".out"));
    sets.push_back(std::move(set));
  }
  std::sort(sets.begin(), sets.end(),
            [](const VectorSet& a, const VectorSet& b) { return a.name < b.name; });
  return sets;
}

class TokenizerVectorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sets_ = FindVectorSets(&dir_);
    if (sets_.empty()) {
      GTEST_SKIP() << "no tokenizer test vectors (ggml-vocab-*.gguf with .inp/.out) in " << dir_
                   << "; set SHARDLM_ASSETS to the folder holding tokenizer-vectors/";
    }
  }

  // Loads a set's tokenizer; nullptr (with a test failure) when it cannot.
  std::unique_ptr<Tokenizer> Load(const VectorSet& set) {
    auto gguf = GgufFile::Open(set.gguf);
    if (!gguf.ok()) {
      ADD_FAILURE() << set.name << ": " << gguf.status();
      return nullptr;
    }
    auto tok = Tokenizer::FromGguf(**gguf);
    if (!tok.ok()) {
      ADD_FAILURE() << set.name << ": " << tok.status();
      return nullptr;
    }
    return std::move(*tok);
  }

  std::string dir_;
  std::vector<VectorSet> sets_;
};

TEST_F(TokenizerVectorsTest, EncodeMatchesExpectedIds) {
  for (const VectorSet& set : sets_) {
    SCOPED_TRACE(set.name);
    ASSERT_EQ(set.inputs.size(), set.outputs.size())
        << set.gguf << ": .inp has " << set.inputs.size() << " strings, .out "
        << set.outputs.size() << " lines";
    std::unique_ptr<Tokenizer> tok = Load(set);
    if (tok == nullptr) continue;
    size_t passed = 0;
    for (size_t i = 0; i < set.inputs.size(); ++i) {
      const std::vector<int32_t> got =
          tok->Encode(set.inputs[i], /*add_special=*/false, /*parse_special=*/false);
      if (got == set.outputs[i]) {
        ++passed;
        continue;
      }
      ADD_FAILURE() << set.name << " string " << i << ": " << Escape(set.inputs[i])
                    << "\n  expected " << DescribeIds(*tok, set.outputs[i]) << "\n  got      "
                    << DescribeIds(*tok, got);
    }
    std::printf("[ vectors  ] %-16s %zu/%zu strings (%.1f%%) pre=%s\n", set.name.c_str(), passed,
                set.inputs.size(), 100.0 * passed / std::max<size_t>(1, set.inputs.size()),
                tok->vocab().kind == TokenizerKind::kSpm ? "(spm)" : tok->vocab().pre.c_str());
  }
}

// The vocabularies here are lossless (byte fallback or byte-level): decoding the encoding gives
// the text back, and streaming gives the same text in valid UTF-8 chunks.
TEST_F(TokenizerVectorsTest, DecodeAndStreamRoundTrip) {
  for (const VectorSet& set : sets_) {
    SCOPED_TRACE(set.name);
    std::unique_ptr<Tokenizer> tok = Load(set);
    if (tok == nullptr) continue;
    std::string all_text;
    for (const std::string& text : set.inputs) {
      all_text += text;
      const std::vector<int32_t> ids = tok->Encode(text, false, false);
      if (std::find(ids.begin(), ids.end(), tok->unk_id()) != ids.end()) continue;  // lossy
      const std::string decoded = tok->Decode(ids, /*skip_special=*/true);
      EXPECT_EQ(decoded, text) << Escape(text) << " -> " << DescribeIds(*tok, ids) << " -> "
                               << Escape(decoded);

      Tokenizer::StreamDecoder stream = tok->NewStream(/*skip_special=*/true, /*text_start=*/true);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string chunk = stream.Push(id);
        EXPECT_TRUE(IsValidUtf8(chunk)) << Escape(text) << ": chunk " << Escape(chunk);
        streamed += chunk;
      }
      streamed += stream.Flush();
      EXPECT_EQ(streamed, decoded) << Escape(text);
    }
    // With BOS/EOS added and special tokens skipped the text is the same.
    std::vector<int32_t> ids = tok->Encode(all_text, /*add_special=*/true, false);
    if (tok->add_bos() && tok->bos_id() >= 0) {
      EXPECT_EQ(ids.front(), tok->bos_id());
    }
    EXPECT_EQ(tok->Decode(ids, /*skip_special=*/true), all_text);
  }
}

}  // namespace
}  // namespace shardlm
