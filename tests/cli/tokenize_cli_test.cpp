// `shardlm tokenize` and `shardlm detokenize` through the binary. They read only a tokenizer: a
// GGUF file's header and metadata (vocabulary-only files, architectures and tensor types the
// decoder does not run) or a HF directory's tokenizer.json / tokenizer_config.json.
//  * TokenizeCliTest: hand-made vocabularies; --no-bos and --no-parse-special; clean errors.
//  * TokenizeCliVectorsTest (ctest tokenize_cli_vectors_test): llama.cpp's tokenizer test
//    vectors, string by string through the binary with --no-bos --no-parse-special (what
//    llama.cpp's test-tokenizer-0 does: no BOS added, special-token text not parsed), and
//    detokenize back. Skips when SHARDLM_ASSETS/tokenizer-vectors is absent.
//  * TokenizeCliSmolLm2Test (ctest tokenize_cli_smollm2_test): the default model's GGUF; skips
//    without models/.
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "formats/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tokenizer/tokenizer_test_util.h"
#include "tokenizer/loader.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using ::shardlm::testing::AssetsDir;
using ::shardlm::testing::DescribeIds;
using ::shardlm::testing::Escape;
using ::shardlm::testing::ParseVectorOutputs;
using ::shardlm::testing::ReadFileBytes;
using ::shardlm::testing::SplitVectorInputs;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kShardlm = std::string(SHARDLM_BINARY_DIR) + "/bin/shardlm";

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal
  int signal = 0;
  std::string out, err;
};

// A folder of its own per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("tokenize_cli_" + std::string(info->test_suite_name()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs `shardlm <args>` with `input` on stdin (arguments must not need shell quoting).
  RunResult Run(const std::string& args, const std::string& input = "") {
    const std::string in = (dir_ / "stdin").string(), out = (dir_ / "stdout").string(),
                      err = (dir_ / "stderr").string();
    std::ofstream(in, std::ios::binary) << input;
    const int status =
        std::system((kShardlm + " " + args + " <" + in + " >" + out + " 2>" + err).c_str());
    RunResult r;
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    r.out = ReadFileBytes(out);
    r.err = ReadFileBytes(err);
    return r;
  }

  // Expects exit code 1 with one "shardlm <command>: error: ..." line holding every needle.
  void ExpectCleanFailure(const RunResult& r, const std::vector<std::string>& needles) {
    EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << "\n" << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr(": error: "));
    for (const std::string& n : needles) EXPECT_THAT(r.err, HasSubstr(n));
    EXPECT_EQ(r.out, "");
  }

  fs::path dir_;
};

// ---- Hand-made vocabularies.

// A SentencePiece vocabulary small enough to tokenize by hand. Merges go to the best-scoring
// pair whose concatenation is a token: "ab" is "▁a" (-1) then "▁ab" (-0.5) -> 8; "<s>" as plain
// text has no merges and is "▁" "<" "s" ">" (3 9 10 11), as a control token it is 1.
std::vector<std::pair<std::string, GgufValue>> SpmMetadata(const std::string& architecture) {
  const std::string u = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  const std::vector<std::string> tokens = {"<unk>", "<s>", "</s>",   u,   "a", "b",
                                           u + "a", "ab",  u + "ab", "<", "s", ">"};
  const std::vector<double> scores = {0, 0, 0, -10, -10, -10, -1, -2, -0.5, -10, -10, -10};
  const std::vector<int64_t> types = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  std::vector<GgufValue> score_values, type_values;
  for (double s : scores) score_values.push_back(GgufFloat(GgufType::kFloat32, s));
  for (int64_t t : types) type_values.push_back(GgufInt(GgufType::kInt32, t));
  return {{"general.architecture", GgufString(architecture)},
          {"tokenizer.ggml.model", GgufString("llama")},
          {"tokenizer.ggml.tokens", GgufStringArray(tokens)},
          {"tokenizer.ggml.scores", GgufArray(GgufType::kFloat32, score_values)},
          {"tokenizer.ggml.token_type", GgufArray(GgufType::kInt32, type_values)},
          {"tokenizer.ggml.bos_token_id", GgufInt(GgufType::kUint32, 1)},
          {"tokenizer.ggml.eos_token_id", GgufInt(GgufType::kUint32, 2)},
          {"tokenizer.ggml.add_bos_token", GgufBool(true)}};
}

class TokenizeCliTest : public TempDirTest {
 protected:
  std::string WriteSpmGguf(const std::string& name, const std::string& architecture = "llama") {
    const std::string path = (dir_ / name).string();
    const absl::Status s = WriteGguf(path, SpmMetadata(architecture), {});
    EXPECT_TRUE(s.ok()) << s;
    return path;
  }
};

TEST_F(TokenizeCliTest, NoBosAndNoParseSpecialFlags) {
  const std::string gguf = WriteSpmGguf("vocab.gguf");
  const std::string model = "--model " + gguf;
  // Defaults: BOS added (add_bos_token), "<s>" in the text is the control token.
  RunResult r = Run("tokenize " + model, "<s>ab");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1 1 8\n");
  r = Run("tokenize " + model + " --no-bos", "<s>ab");
  EXPECT_EQ(r.out, "1 8\n") << r.err;
  r = Run("tokenize " + model + " --no-parse-special", "<s>ab");
  EXPECT_EQ(r.out, "1 3 9 10 11 7\n") << r.err;
  r = Run("tokenize " + model + " --no-bos --no-parse-special", "<s>ab");
  EXPECT_EQ(r.out, "3 9 10 11 7\n") << r.err;
  // Detokenize gives the text back (the space prefix that tokenize added is dropped).
  r = Run("detokenize " + model + " --ids 3,9,10,11,7");
  EXPECT_EQ(r.out, "<s>ab\n") << r.err;
  r = Run("detokenize " + model + " --ids 8");
  EXPECT_EQ(r.out, "ab\n") << r.err;
}

// An architecture the decoder does not run and a tensor type the GGUF reader cannot load:
// generate refuses the file, tokenize reads its tokenizer all the same.
TEST_F(TokenizeCliTest, ReadsOnlyTheTokenizerOfAGguf) {
  const std::string path = (dir_ / "phi3.gguf").string();
  ASSERT_TRUE(
      WriteGguf(path, SpmMetadata("phi3"), {{"blk.0.odd", Tensor::Empty({2, 32}, DType::kF32)}})
          .ok());
  // Make the tensor's ggml type 9 (Q8_1, unsupported): the u32 after name, n_dims and 2 x ne.
  std::string bytes = ReadFileBytes(path);
  const std::string name = "blk.0.odd";
  const size_t at = bytes.find(name);
  ASSERT_NE(at, std::string::npos);
  const size_t type_at = at + name.size() + 4 + 2 * 8;
  uint32_t type = 0;
  std::memcpy(&type, bytes.data() + type_at, 4);
  ASSERT_EQ(type, 0u) << "expected the F32 type field";
  type = 9;
  std::memcpy(bytes.data() + type_at, &type, 4);
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;

  ExpectCleanFailure(Run("generate --model " + path + " --prompt-ids 1"),
                     {path, "tensor 'blk.0.odd'", "Q8_1"});
  const RunResult r = Run("tokenize --no-bos --model " + path, "ab ab");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "8 8\n") << r.err;
}

TEST_F(TokenizeCliTest, HfDirectoryNeedsOnlyTokenizerJson) {
  using json = nlohmann::json;
  const std::string u = "\xE2\x96\x81";
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2},  {u, 3},
                {"a", 4},     {"b", 5},   {u + "a", 6}, {u + "ab", 7}};
  json tokenizer = {
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({u + " a", u + "a b"})}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", u}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", u}}}}}},
      {"added_tokens", json::array({{{"id", 1}, {"content", "<s>"}, {"special", true}}})}};
  std::ofstream(dir_ / "tokenizer.json") << tokenizer.dump();
  std::ofstream(dir_ / "tokenizer_config.json")
      << json({{"add_bos_token", true}, {"bos_token", "<s>"}}).dump();
  // No config.json and no weights: generate cannot open it, tokenize can.
  ExpectCleanFailure(Run("generate --model " + dir_.string() + " --prompt-ids 1"), {"config.json"});
  RunResult r = Run("tokenize --model " + dir_.string(), "ab");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1 7\n") << r.err;
  r = Run("detokenize --model " + dir_.string() + " --ids 7");
  EXPECT_EQ(r.out, "ab\n") << r.err;
}

TEST_F(TokenizeCliTest, UnsupportedOrMissingTokenizerNamesTheField) {
  const std::string bert = (dir_ / "bert.gguf").string();
  ASSERT_TRUE(WriteGguf(bert,
                        {{"general.architecture", GgufString("bert")},
                         {"tokenizer.ggml.model", GgufString("bert")},
                         {"tokenizer.ggml.tokens", GgufStringArray({"[PAD]", "a"})}},
                        {})
                  .ok());
  ExpectCleanFailure(Run("tokenize --model " + bert, "a"),
                     {"shardlm tokenize", bert, "tokenizer.ggml.model = 'bert' is not supported"});
  ExpectCleanFailure(Run("detokenize --model " + bert + " --ids 1"),
                     {"shardlm detokenize", bert, "tokenizer.ggml.model = 'bert'"});

  const std::string bare = (dir_ / "bare.gguf").string();
  ASSERT_TRUE(WriteGguf(bare, {{"general.architecture", GgufString("llama")}}, {}).ok());
  ExpectCleanFailure(Run("tokenize --model " + bare, "a"),
                     {bare, "missing required key 'tokenizer.ggml.model'"});

  const std::string wordpiece = (dir_ / "wordpiece").string();
  fs::create_directories(wordpiece);
  std::ofstream(wordpiece + "/tokenizer.json")
      << R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})";
  ExpectCleanFailure(Run("tokenize --model " + wordpiece, "a"),
                     {wordpiece + "/tokenizer.json", "model.type = 'WordPiece' is not supported"});

  const std::string empty_dir = (dir_ / "hf").string();
  fs::create_directories(empty_dir);
  ExpectCleanFailure(Run("tokenize --model " + empty_dir, "a"),
                     {empty_dir + "/tokenizer.json", "does not exist"});
  ExpectCleanFailure(Run("tokenize --model " + (dir_ / "nope.gguf").string(), "a"),
                     {(dir_ / "nope.gguf").string()});
}

TEST_F(TokenizeCliTest, RejectsInvalidUtf8OnStdin) {
  const std::string gguf = WriteSpmGguf("vocab.gguf");
  ExpectCleanFailure(Run("tokenize --model " + gguf, "ok \xC3\x28 bad"),
                     {"stdin", "UTF-8", "offset 3"});
}

TEST_F(TokenizeCliTest, DetokenizeRejectsBadIds) {
  const std::string gguf = WriteSpmGguf("vocab.gguf");
  ExpectCleanFailure(Run("detokenize --model " + gguf + " --ids 1,12"),
                     {"--ids: element 1 is 12", "vocab size 12"});
  ExpectCleanFailure(Run("detokenize --model " + gguf + " --ids 1,x"), {"--ids", "'x'"});
}

// ---- llama.cpp's tokenizer test vectors.

struct VectorSet {
  std::string name;  // NAME of ggml-vocab-NAME.gguf
  std::string gguf;
  std::vector<std::string> inputs;
  std::vector<std::vector<int32_t>> outputs;
};

class TokenizeCliVectorsTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    const std::string dir = AssetsDir() + "/tokenizer-vectors";
    std::error_code ec;
    if (fs::is_directory(dir, ec)) {
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
        sets_.push_back(std::move(set));
      }
    }
    std::sort(sets_.begin(), sets_.end(),
              [](const VectorSet& a, const VectorSet& b) { return a.name < b.name; });
    if (sets_.empty()) {
      GTEST_SKIP() << "no tokenizer test vectors (ggml-vocab-*.gguf with .inp/.out) in " << dir
                   << "; set SHARDLM_ASSETS to the folder holding tokenizer-vectors/";
    }
  }

  std::vector<VectorSet> sets_;
};

std::vector<int32_t> ParseIdLine(const std::string& line) {
  std::istringstream in(line);
  std::vector<int32_t> ids;
  long long id;
  while (in >> id) ids.push_back(static_cast<int32_t>(id));
  return ids;
}

TEST_F(TokenizeCliVectorsTest, TokenizeMatchesLlamaCpp) {
  for (const VectorSet& set : sets_) {
    SCOPED_TRACE(set.gguf);
    ASSERT_EQ(set.inputs.size(), set.outputs.size())
        << ".inp has " << set.inputs.size() << " strings, .out " << set.outputs.size() << " lines";
    // In-process, only to print the pieces of a mismatch.
    auto tokenizer = LoadTokenizerFromPath(set.gguf);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    int passed = 0;
    for (size_t i = 0; i < set.inputs.size(); ++i) {
      const RunResult r =
          Run("tokenize --model " + set.gguf + " --no-bos --no-parse-special", set.inputs[i]);
      ASSERT_EQ(r.exit_code, 0) << "string " << i << " " << Escape(set.inputs[i]) << ": " << r.err;
      ASSERT_FALSE(r.out.empty()) << "string " << i << ": no output";
      ASSERT_EQ(r.out.back(), '\n');
      ASSERT_EQ(r.out.find('\n'), r.out.size() - 1) << "one line expected: " << Escape(r.out);
      const std::vector<int32_t> got = ParseIdLine(r.out);
      if (got == set.outputs[i]) {
        ++passed;
        continue;
      }
      ADD_FAILURE() << set.name << " string " << i << ": " << Escape(set.inputs[i])
                    << "\n  llama.cpp " << DescribeIds(**tokenizer, set.outputs[i])
                    << "\n  shardlm   " << DescribeIds(**tokenizer, got);
    }
    std::printf("[ vectors  ] %-16s %d/%zu strings through `shardlm tokenize`\n", set.name.c_str(),
                passed, set.inputs.size());
  }
}

// The vocabularies are lossless (byte fallback or byte-level): detokenizing llama.cpp's ids
// gives the string back.
TEST_F(TokenizeCliVectorsTest, DetokenizeRoundTrips) {
  for (const VectorSet& set : sets_) {
    SCOPED_TRACE(set.gguf);
    ASSERT_EQ(set.inputs.size(), set.outputs.size());
    for (size_t i = 0; i < set.inputs.size(); ++i) {
      if (set.outputs[i].empty()) continue;  // --ids needs at least one id
      const RunResult r =
          Run("detokenize --model " + set.gguf + " --ids " + absl::StrJoin(set.outputs[i], ","));
      ASSERT_EQ(r.exit_code, 0) << "string " << i << ": " << r.err;
      EXPECT_EQ(r.out, set.inputs[i] + "\n")
          << set.name << " string " << i << ": " << Escape(set.inputs[i]) << " came back as "
          << Escape(r.out);
    }
  }
}

// ---- The default model (scripts/get-model.sh): a whole GGUF with weights.

class TokenizeCliSmolLm2Test : public TempDirTest {};

TEST_F(TokenizeCliSmolLm2Test, HelloWorld) {
  const std::string gguf =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(gguf)) GTEST_SKIP() << gguf << " is absent: run scripts/get-model.sh";
  // llama.cpp's ids for this text (SmolLM2 adds no BOS).
  RunResult r = Run("tokenize --model " + gguf, "Hello world");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "19556 905\n");
  r = Run("detokenize --model " + gguf + " --ids 19556,905");
  EXPECT_EQ(r.out, "Hello world\n") << r.err;
  EXPECT_THAT(r.err, Not(HasSubstr("error")));
}

}  // namespace
}  // namespace shardlm
