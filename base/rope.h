// Rotary position embedding parameters (from the model config) and their inverse frequencies:
// plain data that the config readers fill and every backend consumes.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

namespace shardlm {

// Rotary position embedding parameters, from the model config.
struct RopeConfig {
  enum class Scaling : uint8_t { kNone, kLinear, kLlama3, kLongRope };
  float theta = 10000.0f;
  int rotary_dim = 0;        // usually head_dim
  bool interleaved = false;  // false: HF "rotate half" (NeoX); true: pairs (2i, 2i+1) (GPT-J)
  Scaling scaling = Scaling::kNone;
  float factor = 1.0f;               // linear and llama3
  float low_freq_factor = 1.0f;      // llama3
  float high_freq_factor = 4.0f;     // llama3
  int original_max_position = 8192;  // llama3, longrope
  // longrope (Phi-3): inverse frequency k is divided by freq_factors[k] (rotary_dim / 2 values:
  // the checkpoint's short or long factors, whichever the model config picked).
  std::vector<float> freq_factors;
  // Multiplies cos and sin, so the rotated features (longrope's attention factor); 1 elsewhere.
  float attention_factor = 1.0f;
};

// Every field the frequencies depend on (not `interleaved` or `attention_factor`): backends
// compute the frequencies once per key.
using RopeFrequencyKey =
    std::tuple<float, int, RopeConfig::Scaling, float, float, float, int, std::vector<float>>;
RopeFrequencyKey FrequencyKey(const RopeConfig& rope);

// Inverse frequency of each rotary pair (rotary_dim / 2 values), scaling applied. Computed on the
// host in double precision, identically for every backend.
std::vector<float> RopeInverseFrequencies(const RopeConfig& rope);

}  // namespace shardlm
