#include "formats/config.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "io_test_util.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::nlohmann::json;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::WriteBytes;
using ::testing::ElementsAre;

constexpr char kSource[] = "/models/x/config.json";
constexpr char kPrefix[] = "config.json /models/x/config.json";

// The config.json of meta-llama/Llama-3.2-1B.
const char kLlama32[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

// The config.json of mistralai/Mistral-7B-v0.1.
const char kMistral7B[] = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0",
  "use_cache": true, "vocab_size": 32000})";

// The config.json of Qwen/Qwen2.5-0.5B-Instruct.
const char kQwen25[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

json Minimal() {
  return {{"model_type", "llama"},    {"vocab_size", 100},      {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
}

ModelConfig MustParse(const json& j) {
  auto c = ParseModelConfig(j, kSource);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.rotary_dim, b.rope.rotary_dim);
  EXPECT_EQ(a.rope.interleaved, b.rope.interleaved);
  EXPECT_EQ(a.rope.scaling, b.rope.scaling);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position, b.rope.original_max_position);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

// Parse(ToJson(c)) == c, and the JSON it writes is stable.
void ExpectRoundTrip(const ModelConfig& c) {
  const json j = ModelConfigToJson(c);
  auto back = ParseModelConfig(j, "round trip");
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << j.dump(2);
  ExpectSameConfig(*back, c);
  EXPECT_EQ(ModelConfigToJson(*back), j);
}

// ---- Real configs. ----

TEST(ModelConfigTest, ParsesLlama32) {
  ModelConfig c = MustParse(json::parse(kLlama32));
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope.theta, 500000.0f);
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLlama3);
  EXPECT_EQ(c.rope.factor, 32.0f);
  EXPECT_EQ(c.rope.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope.original_max_position, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(128001));
}

TEST(ModelConfigTest, ParsesMistral7B) {
  ModelConfig c = MustParse(json::parse(kMistral7B));
  EXPECT_EQ(c.arch, Arch::kMistral);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kNone);
  EXPECT_EQ(c.rope.theta, 10000.0f);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ModelConfigTest, ParsesQwen25) {
  ModelConfig c = MustParse(json::parse(kQwen25));
  EXPECT_EQ(c.arch, Arch::kQwen2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_TRUE(c.qkv_bias) << "Qwen2 always has q/k/v biases";
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.sliding_window, 0) << "use_sliding_window is false";
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope.theta, 1e6f);
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(151645));
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  ModelConfig c = MustParse(Minimal());
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope.rotary_dim, 16);
  EXPECT_EQ(c.max_position_embeddings, 0);
  EXPECT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope.theta, 10000.0f);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, DType::kF32);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfigTest, NullMeansAbsent) {
  json j = Minimal();
  j["num_key_value_heads"] = nullptr;
  j["rope_scaling"] = nullptr;
  j["bos_token_id"] = nullptr;
  ModelConfig c = MustParse(j);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(ModelConfigTest, ArchitecturesIsTheFallbackForModelType) {
  json j = Minimal();
  j.erase("model_type");
  j["architectures"] = json::array({"Qwen2ForCausalLM"});
  EXPECT_EQ(MustParse(j).arch, Arch::kQwen2);
}

TEST(ModelConfigTest, LlamaAttentionAndMlpBias) {
  json j = Minimal();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  ModelConfig c = MustParse(j);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
  EXPECT_TRUE(c.mlp_bias);
}

TEST(ModelConfigTest, EosList) {
  json j = Minimal();
  j["eos_token_id"] = json::array({128001, 128008, 128009});
  EXPECT_THAT(MustParse(j).eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ModelConfigTest, Qwen2SlidingWindowOnlyWhenEnabledForAllLayers) {
  json j = json::parse(kQwen25);
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 0;
  EXPECT_EQ(MustParse(j).sliding_window, 32768);
  j["max_window_layers"] = 24;  // no layer at or above 24: none uses the window
  EXPECT_EQ(MustParse(j).sliding_window, 0);
  j["max_window_layers"] = 21;  // layers 21..23 would, 0..20 would not
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'max_window_layers'", "got 21"}));
}

TEST(ModelConfigTest, ArchNames) {
  EXPECT_EQ(ArchName(Arch::kLlama), "llama");
  EXPECT_EQ(ArchName(Arch::kMistral), "mistral");
  EXPECT_EQ(ArchName(Arch::kQwen2), "qwen2");
}

// ---- Round trips. ----

TEST(ModelConfigRoundTripTest, LlamaWithLlama3RopeScaling) {
  ModelConfig c = MustParse(json::parse(kLlama32));
  ExpectRoundTrip(c);
  const json j = ModelConfigToJson(c);
  EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(j["rms_norm_eps"].dump(), "1e-05") << "floats are written in their shortest form";
}

TEST(ModelConfigRoundTripTest, LlamaWithLinearScalingAndBiases) {
  json j = Minimal();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["rms_norm_eps"] = 1e-5;
  j["eos_token_id"] = json::array({1, 2});
  ModelConfig c = MustParse(j);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLinear);
  EXPECT_EQ(c.rope.factor, 2.5f);
  ExpectRoundTrip(c);
}

TEST(ModelConfigRoundTripTest, MistralWithSlidingWindow) {
  ModelConfig c = MustParse(json::parse(kMistral7B));
  ExpectRoundTrip(c);
  EXPECT_EQ(ModelConfigToJson(c)["sliding_window"], 4096);
  c.sliding_window = 0;
  ExpectRoundTrip(c);
}

TEST(ModelConfigRoundTripTest, Qwen2WithBiases) {
  ModelConfig c = MustParse(json::parse(kQwen25));
  ExpectRoundTrip(c);
  EXPECT_EQ(ModelConfigToJson(c)["model_type"], "qwen2");
  c.sliding_window = 4096;
  ExpectRoundTrip(c);
}

TEST(ModelConfigRoundTripTest, TiedEmbeddingsAndFloat16) {
  json j = Minimal();
  j["tie_word_embeddings"] = true;
  j["torch_dtype"] = "float16";
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;  // not hidden / heads: must survive the round trip as given
  ModelConfig c = MustParse(j);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 32);
  ExpectRoundTrip(c);
  EXPECT_EQ(ModelConfigToJson(c)["tie_word_embeddings"], true);
}

TEST(ModelConfigRoundTripTest, DefaultsSurvive) { ExpectRoundTrip(MustParse(Minimal())); }

// ---- Bad configs: one line naming the source, the field, expected vs got. ----

class MissingRequiredFieldTest : public ::testing::TestWithParam<const char*> {};

TEST_P(MissingRequiredFieldTest, NamesTheField) {
  json j = Minimal();
  j.erase(GetParam());
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, std::string("missing required field '") + GetParam() + "'"}));
}

INSTANTIATE_TEST_SUITE_P(Fields, MissingRequiredFieldTest,
                         ::testing::Values("vocab_size", "hidden_size", "intermediate_size",
                                           "num_hidden_layers", "num_attention_heads"));

TEST(ModelConfigErrorTest, MissingModelTypeAndArchitectures) {
  json j = Minimal();
  j.erase("model_type");
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'model_type'", "llama, mistral, qwen2"}));
}

struct WrongValue {
  const char* field;
  json value;
  const char* expected;
};

class WrongValueTest : public ::testing::TestWithParam<WrongValue> {};

TEST_P(WrongValueTest, NamesFieldExpectedAndGot) {
  const WrongValue& p = GetParam();
  json j = Minimal();
  j[p.field] = p.value;
  EXPECT_TRUE(IsErrorWith(
      ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
      {kPrefix, std::string("field '") + p.field + "'", p.expected, "got " + p.value.dump()}));
}

INSTANTIATE_TEST_SUITE_P(
    Fields, WrongValueTest,
    ::testing::Values(WrongValue{"hidden_size", "abc", "a positive integer"},
                      WrongValue{"vocab_size", 0, "a positive integer"},
                      WrongValue{"num_hidden_layers", -3, "a positive integer"},
                      WrongValue{"intermediate_size", 12.5, "a positive integer"},
                      WrongValue{"num_attention_heads", 4294967296LL, "at most 2147483647"},
                      WrongValue{"num_key_value_heads", true, "a positive integer"},
                      WrongValue{"head_dim", "16", "a positive integer"},
                      WrongValue{"max_position_embeddings", 0, "a positive integer"},
                      WrongValue{"rms_norm_eps", "1e-5", "a positive number"},
                      WrongValue{"rms_norm_eps", 0, "a positive number"},
                      WrongValue{"rope_theta", -1.0, "a positive number"},
                      // Positive as a double, 0 (or a denormal) as a float: rms_norm_eps 0
                      // divides by zero (found by tests/fuzz/config_fuzz.cpp).
                      WrongValue{"rms_norm_eps", 1e-46, "a positive number in float range"},
                      WrongValue{"rope_theta", 1e-39, "a positive number in float range"},
                      WrongValue{"rope_theta", 1e39, "a positive number in float range"},
                      WrongValue{"tie_word_embeddings", 1, "true or false"},
                      WrongValue{"attention_bias", "no", "true or false"},
                      WrongValue{"torch_dtype", "float64", "\"bfloat16\""},
                      WrongValue{"bos_token_id", -1, "a non-negative integer"},
                      WrongValue{"eos_token_id", json::array({1, "x"}), "a list of them"},
                      WrongValue{"rope_scaling", "llama3", "an object or null"},
                      WrongValue{"hidden_act", "gelu", "\"silu\""},
                      WrongValue{"model_type", 7, "one of \"llama\""}));

TEST(ModelConfigErrorTest, WrongTypeExactMessage) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("config.json");
  json j = Minimal();
  j["hidden_size"] = "abc";
  WriteBytes(path, j.dump(2));
  auto c = LoadModelConfig(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      std::string(c.status().message()),
      "config.json " + path + ": field 'hidden_size': expected a positive integer, got \"abc\"");
}

TEST(ModelConfigErrorTest, HeadsNotDivisibleByKvHeads) {
  json j = Minimal();
  j["num_key_value_heads"] = 3;
  EXPECT_TRUE(IsErrorWith(
      ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
      {kPrefix, "'num_key_value_heads'", "divisor of num_attention_heads (4)", "got 3"}));
}

TEST(ModelConfigErrorTest, HiddenNotDivisibleByHeadsWithoutHeadDim) {
  json j = Minimal();
  j["num_attention_heads"] = 3;
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'head_dim'", "hidden_size (64)", "num_attention_heads (3)"}));
  j["head_dim"] = 20;  // given explicitly: fine
  EXPECT_EQ(MustParse(j).head_dim, 20);
}

TEST(ModelConfigErrorTest, OddHeadDim) {
  json j = Minimal();
  j["head_dim"] = 15;
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'head_dim'", "even", "got 15"}));
}

TEST(ModelConfigErrorTest, UnknownModelType) {
  json j = Minimal();
  j["model_type"] = "gpt2";
  EXPECT_TRUE(
      IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                  {kPrefix, "'model_type'", "\"llama\", \"mistral\", \"qwen2\"", "got \"gpt2\""}));
}

TEST(ModelConfigErrorTest, UnknownArchitecture) {
  json j = Minimal();
  j.erase("model_type");
  j["architectures"] = json::array({"GPT2LMHeadModel"});
  EXPECT_TRUE(
      IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                  {kPrefix, "'architectures[0]'", "LlamaForCausalLM", "got \"GPT2LMHeadModel\""}));
}

TEST(ModelConfigErrorTest, UnknownRopeType) {
  json j = Minimal();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'rope_scaling.rope_type'", "\"llama3\"", "got \"yarn\""}));
}

TEST(ModelConfigErrorTest, Llama3RopeNeedsAllItsFields) {
  json j = json::parse(kLlama32);
  j["rope_scaling"].erase("factor");
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "missing required field 'rope_scaling.factor'"}));
  j = json::parse(kLlama32);
  j["rope_scaling"]["original_max_position_embeddings"] = "8k";
  EXPECT_TRUE(
      IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                  {kPrefix, "'rope_scaling.original_max_position_embeddings'", "got \"8k\""}));
  j = json::parse(kLlama32);
  j["rope_scaling"]["high_freq_factor"] = 1.0;
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'rope_scaling.high_freq_factor'", "low_freq_factor"}));
}

TEST(ModelConfigErrorTest, TopLevelNotAnObject) {
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(json::array({1, 2}), kSource).status(),
                          StatusCode::kInvalidArgument, {kPrefix, "JSON object", "got [1,2]"}));
}

TEST(ModelConfigErrorTest, MissingFileIsNotFound) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("config.json");
  EXPECT_TRUE(IsErrorWith(LoadModelConfig(path).status(), StatusCode::kNotFound, {path}));
}

TEST(ModelConfigErrorTest, FileNotJson) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("config.json");
  WriteBytes(path, "{\"vocab_size\": 10,\n oops}");
  EXPECT_TRUE(IsErrorWith(LoadModelConfig(path).status(), StatusCode::kInvalidArgument,
                          {"config.json " + path, "not valid JSON", "line 2"}));
}

TEST(ModelConfigTest, LoadsFromFile) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("config.json");
  WriteBytes(path, kQwen25);
  auto c = LoadModelConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Arch::kQwen2);
  EXPECT_EQ(c->vocab_size, 151936);
}

}  // namespace
}  // namespace shardlm
