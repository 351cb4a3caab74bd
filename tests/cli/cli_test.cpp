// The `shardlm` binary end to end: make-tiny-model, generate, and clean failures on bad input
// (exit code 1..127, one line naming the file / tensor / field, never a signal).
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

const std::string kShardlm = std::string(SHARDLM_BINARY_DIR) + "/bin/shardlm";

struct RunResult {
  int exit_code = -1;    // -1: killed by a signal
  int signal = 0;
  std::string out, err;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("cli_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  RunResult Run(const std::string& args) {
    const std::string out = (dir_ / "stdout").string(), err = (dir_ / "stderr").string();
    const std::string cmd = kShardlm + " " + args + " >" + out + " 2>" + err;
    const int status = std::system(cmd.c_str());
    RunResult r;
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
    r.out = ReadFile(out);
    r.err = ReadFile(err);
    return r;
  }

  // A small llama with 8 heads / 2 KV heads in dir_/name.
  std::string MakeModel(const std::string& name, const std::string& extra = "") {
    const std::string model = (dir_ / name).string();
    RunResult r = Run("make-tiny-model --arch llama --out " + model +
                      " --layers 2 --hidden 64 --heads 8 --kv-heads 2 --intermediate 96"
                      " --vocab 300 --seed 11 " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return model;
  }

  // Expects a clean failure whose stderr holds every one of `needles`.
  void ExpectCleanFailure(const RunResult& r, const std::vector<std::string>& needles) {
    EXPECT_EQ(r.signal, 0) << "killed by signal " << r.signal << "\n" << r.err;
    EXPECT_GE(r.exit_code, 1) << r.err;
    EXPECT_LE(r.exit_code, 127) << r.err;
    for (const std::string& n : needles) EXPECT_THAT(r.err, HasSubstr(n));
    EXPECT_THAT(r.err, Not(HasSubstr("terminate called"))) << r.err;
  }

  void EditConfig(const std::string& model, const std::function<void(nlohmann::json&)>& edit) {
    const std::string path = model + "/config.json";
    nlohmann::json j = nlohmann::json::parse(ReadFile(path));
    edit(j);
    std::ofstream(path) << j.dump(2);
  }

  fs::path dir_;
};

TEST_F(CliTest, GenerateDumpsFiniteNonConstantLogits) {
  const std::string model = MakeModel("m");
  const std::string dump = (dir_ / "logits.f32").string();
  RunResult r = Run("generate --model " + model +
                    " --prompt-ids 1,2,3,250 --max-new-tokens 6 --dump-logits " + dump);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The last stdout line holds the 6 generated ids.
  std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  std::vector<std::string> ids = absl::StrSplit(lines.back(), ',');
  ASSERT_EQ(ids.size(), 6u) << lines.back();
  for (const std::string& id : ids) {
    const int v = std::stoi(id);
    EXPECT_GE(v, 0);
    EXPECT_LT(v, 300);
  }
  EXPECT_THAT(r.err, HasSubstr("prefill"));
  EXPECT_THAT(r.err, HasSubstr("tok/s"));

  const std::string bytes = ReadFile(dump);
  ASSERT_EQ(bytes.size(), 6u * 300u * sizeof(float));
  const float* logits = reinterpret_cast<const float*>(bytes.data());
  std::set<float> distinct;
  for (size_t row = 0; row < 6; ++row) {
    int argmax = 0;
    for (int j = 0; j < 300; ++j) {
      const float x = logits[row * 300 + j];
      ASSERT_TRUE(std::isfinite(x)) << "row " << row << " col " << j;
      distinct.insert(x);
      if (x > logits[row * 300 + argmax]) argmax = j;
    }
    EXPECT_EQ(argmax, std::stoi(ids[row])) << "dumped row " << row << " did not choose its token";
  }
  EXPECT_GT(distinct.size(), 1000u) << "logits look constant";
}

TEST_F(CliTest, TinyModelBytesDependOnlyOnSeed) {
  const std::string a = MakeModel("a"), b = MakeModel("b");
  EXPECT_EQ(ReadFile(a + "/model.safetensors"), ReadFile(b + "/model.safetensors"));
  EXPECT_EQ(ReadFile(a + "/config.json"), ReadFile(b + "/config.json"));
  RunResult r = Run("make-tiny-model --arch llama --out " + (dir_ / "c").string() +
                    " --layers 2 --hidden 64 --heads 8 --kv-heads 2 --intermediate 96"
                    " --vocab 300 --seed 12");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(ReadFile(a + "/model.safetensors"), ReadFile((dir_ / "c/model.safetensors").string()));
}

TEST_F(CliTest, OddHeadShapesGenerate) {
  for (const std::string shape : {"--hidden 72 --heads 9 --kv-heads 3", "--hidden 64 --heads 4 --kv-heads 1"}) {
    const std::string model = (dir_ / "odd").string();
    RunResult r = Run("make-tiny-model --arch qwen2 --out " + model + " --layers 2 " + shape +
                      " --intermediate 80 --vocab 128 --seed 5 --dtype bf16");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Run("generate --model " + model + " --prompt-ids 4,5,6 --max-new-tokens 4");
    EXPECT_EQ(r.exit_code, 0) << shape << ": " << r.err;
  }
}

TEST_F(CliTest, MissingSafetensors) {
  const std::string model = MakeModel("m");
  fs::remove(model + "/model.safetensors");
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"), {"model.safetensors"});
}

TEST_F(CliTest, TruncatedSafetensors) {
  const std::string model = MakeModel("m");
  const std::string file = model + "/model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 100);
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"), {file});
}

TEST_F(CliTest, SafetensorsHeaderNotJson) {
  const std::string model = MakeModel("m");
  const std::string file = model + "/model.safetensors";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(8);
  f.write("#!", 2);  // the header starts with '{'
  f.close();
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"), {file, "JSON"});
}

TEST_F(CliTest, SafetensorsHeaderLiesAboutLength) {
  const std::string model = MakeModel("m");
  const std::string file = model + "/model.safetensors";
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  const uint64_t huge = 1ull << 40;
  f.write(reinterpret_cast<const char*>(&huge), 8);
  f.close();
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"), {file});
}

TEST_F(CliTest, DtypeMismatchWithConfig) {
  const std::string model = MakeModel("m");
  EditConfig(model, [](nlohmann::json& j) { j["torch_dtype"] = "bfloat16"; });
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"),
                     {"model.embed_tokens.weight", "BF16", "F32"});
}

TEST_F(CliTest, ShapeMismatchWithConfig) {
  const std::string model = MakeModel("m");
  EditConfig(model, [](nlohmann::json& j) { j["intermediate_size"] = 128; });
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"),
                     {"model.layers.0.mlp.gate_proj.weight", "[128, 64]", "[96, 64]"});
}

TEST_F(CliTest, MissingConfigField) {
  const std::string model = MakeModel("m");
  EditConfig(model, [](nlohmann::json& j) { j.erase("num_hidden_layers"); });
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1"),
                     {"config.json", "num_hidden_layers"});
}

TEST_F(CliTest, PromptIdOutOfVocabulary) {
  const std::string model = MakeModel("m");
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1,300"),
                     {"300", "vocab_size", "index 1"});
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1,x"),
                     {"--prompt-ids", "'x'"});
}

TEST_F(CliTest, NonPositiveMaxNewTokens) {
  const std::string model = MakeModel("m");
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1 --max-new-tokens 0"),
                     {"max_new_tokens", "got 0"});
  ExpectCleanFailure(Run("generate --model " + model + " --prompt-ids 1 --max-new-tokens -3"),
                     {"max_new_tokens", "got -3"});
}

TEST_F(CliTest, GgufModelGeneratesAndTruncatedGgufFailsCleanly) {
  const std::string dir = (dir_ / "g").string();
  RunResult r = Run("make-tiny-model --arch llama --out " + dir +
                    " --layers 2 --hidden 64 --heads 8 --kv-heads 2 --intermediate 96 --vocab 300"
                    " --seed 11 --format gguf --gguf-type q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string file = dir + "/model.gguf";
  r = Run("generate --model " + file + " --prompt-ids 1,2,3 --max-new-tokens 4");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  fs::resize_file(file, fs::file_size(file) / 2);
  ExpectCleanFailure(Run("generate --model " + file + " --prompt-ids 1"), {file});
}

// Mixtures as llama.cpp's GGUF through the binary: an f32 GGUF generates the ids of the
// safetensors model it was written from; a Q8_0 one (3-D quantized expert tensors) generates.
TEST_F(CliTest, MoeGgufGeneratesAsSafetensors) {
  for (const std::string arch : {"mixtral", "qwen3_moe"}) {
    SCOPED_TRACE(arch);
    const std::string shape =
        " --layers 3 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128"
        " --vocab 300 --seed 13";
    const std::string gen = " --prompt-ids 1,2,3,250 --max-new-tokens 6";
    std::string ids[3];
    int k = 0;
    for (const std::string format :
         {"", " --format gguf --gguf-type f32", " --format gguf --gguf-type q8_0"}) {
      const std::string dir = (dir_ / (arch + std::to_string(k))).string();
      RunResult r = Run("make-tiny-model --arch " + arch + " --out " + dir + shape + format);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      r = Run("generate --model " + dir + (k > 0 ? "/model.gguf" : "") + gen);
      ASSERT_EQ(r.exit_code, 0) << r.err;
      std::vector<std::string> lines = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
      ASSERT_FALSE(lines.empty());
      ids[k++] = lines.back();
    }
    EXPECT_EQ(ids[1], ids[0]);
    EXPECT_EQ(std::vector<std::string>(absl::StrSplit(ids[2], ',')).size(), 6u) << ids[2];
  }
}

}  // namespace
