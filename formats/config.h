// The hyperparameters of a Llama-family decoder, read from a HF config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/rope.h"
#include "base/dtype.h"
#include "nlohmann/json.hpp"

namespace shardlm {

enum class Arch : uint8_t { kLlama, kMistral, kQwen2 };
std::string_view ArchName(Arch arch);  // "llama", "mistral", "qwen2"

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;         // num_hidden_layers
  int64_t num_heads = 0;          // num_attention_heads
  int64_t num_kv_heads = 0;       // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;           // head_dim (defaults to hidden_size / num_heads)
  int64_t max_position_embeddings = 0;  // 0 when absent: no limit known
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;                // rope_theta, rope_scaling; rotary_dim = head_dim
  bool tie_word_embeddings = false;
  bool qkv_bias = false;          // qwen2: always; llama/mistral: attention_bias
  bool o_bias = false;            // llama: attention_bias
  bool mlp_bias = false;          // llama: mlp_bias
  int64_t sliding_window = 0;     // mistral (and qwen2 with use_sliding_window); 0 = none
  DType torch_dtype = DType::kF32;
  // GGUF checkpoints mix types (quantized matrices, f32 norms, a Q6_K output): their tensors'
  // own dtypes are used and not checked against torch_dtype.
  bool mixed_dtypes = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
};

// Parses and validates a config.json document. `source` (usually the file path) is named in every
// error, together with the field and what was expected and found.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json, const std::string& source);
// Reads `path` (a config.json file) and parses it.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// The config.json document for `config`, in HF's field names; ParseModelConfig reads it back.
nlohmann::json ModelConfigToJson(const ModelConfig& config);

}  // namespace shardlm
