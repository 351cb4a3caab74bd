#include "formats/config.h"

#include <cmath>
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
  EXPECT_EQ(a.sliding_layers, b.sliding_layers);
  EXPECT_EQ(a.sliding_rope.has_value(), b.sliding_rope.has_value());
  if (a.sliding_rope && b.sliding_rope) EXPECT_EQ(a.sliding_rope->theta, b.sliding_rope->theta);
  EXPECT_EQ(a.attention_scale, b.attention_scale);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.norm_plus_one, b.norm_plus_one);
  EXPECT_EQ(a.post_norms, b.post_norms);
  EXPECT_EQ(a.scale_embeddings, b.scale_embeddings);
  EXPECT_EQ(a.fused_qkv_proj, b.fused_qkv_proj);
  EXPECT_EQ(a.fused_gate_up_proj, b.fused_gate_up_proj);
  EXPECT_EQ(a.rope.freq_factors, b.rope.freq_factors);
  EXPECT_EQ(a.rope.attention_factor, b.rope.attention_factor);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.experts_per_token, b.experts_per_token);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  for (int64_t l = 0; l < a.num_layers; ++l) EXPECT_EQ(LayerIsMoe(a, l), LayerIsMoe(b, l)) << l;
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

TEST(ModelConfigTest, Qwen2SlidingWindowPerLayer) {
  json j = json::parse(kQwen25);
  EXPECT_EQ(MustParse(j).sliding_window, 0);  // use_sliding_window: false
  j["use_sliding_window"] = true;
  j["max_window_layers"] = 0;
  ModelConfig all = MustParse(j);
  EXPECT_TRUE(LayerSlides(all, 0));
  EXPECT_TRUE(LayerSlides(all, 23));
  j["max_window_layers"] = 24;  // no layer at or above 24: none uses the window
  ModelConfig none = MustParse(j);
  for (int l = 0; l < 24; ++l) EXPECT_FALSE(LayerSlides(none, l));
  j["max_window_layers"] = 21;  // layers 21..23 do, 0..20 do not
  ModelConfig mixed = MustParse(j);
  EXPECT_FALSE(LayerSlides(mixed, 20));
  EXPECT_TRUE(LayerSlides(mixed, 21));
  ExpectRoundTrip(mixed);
}

// The config.json of google/gemma-3-270m.
constexpr char kGemma3[] = R"({
  "architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
  "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
  "hidden_size": 640, "initializer_range": 0.02, "intermediate_size": 2048,
  "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
    "full_attention", "sliding_attention", "sliding_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "full_attention"],
  "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": 4,
  "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0,
  "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
  "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512,
  "torch_dtype": "bfloat16", "use_bidirectional_attention": false, "vocab_size": 262144})";

TEST(ModelConfigTest, ParsesGemma3_270M) {
  const ModelConfig c = MustParse(json::parse(kGemma3));
  EXPECT_EQ(c.arch, Arch::kGemma3);
  EXPECT_EQ(c.head_dim, 256);
  EXPECT_EQ(c.hidden_act, HiddenAct::kGeluTanh);
  EXPECT_TRUE(c.qk_norm && c.norm_plus_one && c.post_norms && c.scale_embeddings);
  EXPECT_TRUE(c.tie_word_embeddings);  // Gemma3TextConfig's default
  EXPECT_FLOAT_EQ(c.attention_scale, 1.0f / 16.0f);
  EXPECT_EQ(c.sliding_window, 512);
  EXPECT_TRUE(LayerSlides(c, 0));
  EXPECT_FALSE(LayerSlides(c, 5));
  EXPECT_FALSE(LayerSlides(c, 17));
  EXPECT_EQ(c.rope.theta, 1000000.0f);
  ASSERT_TRUE(c.sliding_rope.has_value());
  EXPECT_EQ(c.sliding_rope->theta, 10000.0f);
  ExpectRoundTrip(c);
  // transformers 5 writes the thetas per layer type.
  json v5 = json::parse(kGemma3);
  v5.erase("rope_theta");
  v5.erase("rope_local_base_freq");
  v5.erase("rope_scaling");
  v5["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
                           {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  const ModelConfig c5 = MustParse(v5);
  EXPECT_EQ(c5.rope.theta, 1000000.0f);
  EXPECT_EQ(c5.sliding_rope->theta, 10000.0f);
  // Older files give the pattern instead of layer_types: every 6th layer is global.
  json old = json::parse(kGemma3);
  old.erase("layer_types");
  old["sliding_window_pattern"] = 6;
  const ModelConfig c6 = MustParse(old);
  for (int l = 0; l < 18; ++l) EXPECT_EQ(LayerSlides(c6, l), LayerSlides(c, l)) << l;
}

TEST(ModelConfigErrorTest, Gemma3UnimplementedFieldsAreNamed) {
  json j = json::parse(kGemma3);
  j["final_logit_softcapping"] = 30.0;
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'final_logit_softcapping'", "soft-capping", "got 30"}));
  j = json::parse(kGemma3);
  j["hidden_activation"] = "gelu";
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'hidden_activation'", "gelu_pytorch_tanh", "got \"gelu\""}));
  j = json::parse(kGemma3);
  j["model_type"] = "gemma3";
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'model_type'", "multimodal", "gemma3_text"}));
  j = json::parse(kGemma3);
  j["layer_types"][3] = "chunked_attention";
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'layer_types'", "got \"chunked_attention\""}));
}

TEST(ModelConfigTest, Phi3LongRope) {
  json j = Minimal();
  j["model_type"] = "phi3";
  j["max_position_embeddings"] = 131072;
  j["original_max_position_embeddings"] = 4096;
  std::vector<double> shorts(8, 1.0), longs(8, 2.0);  // head_dim 16: 8 pairs
  j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", shorts}, {"long_factor", longs}};
  ModelConfig c = MustParse(j);
  EXPECT_TRUE(c.fused_qkv_proj && c.fused_gate_up_proj);
  EXPECT_EQ(c.rope.scaling, RopeConfig::Scaling::kLongRope);
  EXPECT_EQ(c.rope.original_max_position, 4096);
  // The context exceeds the original one: the long factors, and sqrt(1 + ln 32 / ln 4096).
  EXPECT_EQ(c.rope.freq_factors, std::vector<float>(8, 2.0f));
  EXPECT_NEAR(c.rope.attention_factor, std::sqrt(1 + std::log(32.0) / std::log(4096.0)), 1e-6);
  ExpectRoundTrip(c);
  j["max_position_embeddings"] = 4096;  // no longer: the short factors, no attention factor
  c = MustParse(j);
  EXPECT_EQ(c.rope.freq_factors, std::vector<float>(8, 1.0f));
  EXPECT_EQ(c.rope.attention_factor, 1.0f);
  j["rope_scaling"]["long_factor"] = std::vector<double>(7, 2.0);
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'rope_scaling.long_factor'", "a list of 8 positive"}));
}

TEST(ModelConfigTest, GlmPartialInterleavedRope) {
  json j = Minimal();
  j["model_type"] = "glm4";
  j["head_dim"] = 16;
  ModelConfig c = MustParse(j);
  EXPECT_EQ(c.rope.rotary_dim, 8);  // partial_rotary_factor 0.5 by default
  EXPECT_TRUE(c.rope.interleaved);
  EXPECT_TRUE(c.qkv_bias && !c.o_bias && c.fused_gate_up_proj && c.post_norms);
  ExpectRoundTrip(c);
  j["partial_rotary_factor"] = 0.3;  // int(4.8) = 4 features, as HF rounds
  EXPECT_EQ(MustParse(j).rope.rotary_dim, 4);
  j["partial_rotary_factor"] = 0.1;  // int(1.6) = 1: not a pair
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'partial_rotary_factor'", "even rotary dimension"}));
}

TEST(ModelConfigTest, MixturesOfExperts) {
  json j = Minimal();
  j["model_type"] = "mixtral";
  j["num_local_experts"] = 8;
  j["num_experts_per_tok"] = 2;
  ModelConfig c = MustParse(j);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_EQ(c.moe_intermediate_size, 128);  // Mixtral's experts are intermediate_size wide
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(LayerIsMoe(c, 0) && LayerIsMoe(c, 1));
  ExpectRoundTrip(c);
  j["num_experts_per_tok"] = 9;
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(j, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'num_experts_per_tok'", "at most the number of experts (8)",
                           "got 9"}));

  json q = Minimal();
  q["model_type"] = "qwen3_moe";
  q["num_hidden_layers"] = 4;
  q["num_experts"] = 16;
  q["num_experts_per_tok"] = 4;
  q["moe_intermediate_size"] = 32;
  q["decoder_sparse_step"] = 2;  // layers 1 and 3
  q["mlp_only_layers"] = {3};
  c = MustParse(q);
  EXPECT_FALSE(c.norm_topk_prob);  // Qwen3MoeConfig's default
  EXPECT_FALSE(LayerIsMoe(c, 0));
  EXPECT_TRUE(LayerIsMoe(c, 1));
  EXPECT_FALSE(LayerIsMoe(c, 2));
  EXPECT_FALSE(LayerIsMoe(c, 3));
  ExpectRoundTrip(c);
  q["mlp_only_layers"] = {7};
  EXPECT_TRUE(IsErrorWith(ParseModelConfig(q, kSource).status(), StatusCode::kInvalidArgument,
                          {kPrefix, "'mlp_only_layers'", "[0, 4)", "got [7]"}));
}

TEST(ModelConfigTest, Qwen3HeadDimDefaultsTo128) {
  json j = Minimal();
  j["model_type"] = "qwen3";
  ModelConfig c = MustParse(j);
  EXPECT_EQ(c.head_dim, 128);  // Qwen3Config's default, not hidden / heads = 16
  EXPECT_TRUE(c.qk_norm);
  ExpectRoundTrip(c);
}

TEST(ModelConfigTest, ArchNames) {
  EXPECT_EQ(ArchName(Arch::kLlama), "llama");
  EXPECT_EQ(ArchName(Arch::kMistral), "mistral");
  EXPECT_EQ(ArchName(Arch::kQwen2), "qwen2");
  EXPECT_EQ(ArchName(Arch::kGemma3), "gemma3_text");
  EXPECT_EQ(ArchFromName("Glm4ForCausalLM"), Arch::kGlm4);
  EXPECT_EQ(ArchFromName("phi3"), Arch::kPhi3);
  EXPECT_EQ(ArchFromName("gpt2"), std::nullopt);
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
                          {kPrefix, "'model_type'", "\"llama\", \"mistral\", \"qwen2\", \"qwen3\""}));
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
                  {kPrefix, "'model_type'", "\"llama\", \"mistral\", \"qwen2\", \"qwen3\"",
                   "\"gemma3_text\", \"phi3\", \"glm\"", "got \"gpt2\""}));
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
