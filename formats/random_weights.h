// Seeded random weights for a Llama-family config: the same bytes for the same seed on any
// machine (integer PRNG, exact float arithmetic, no libm), scaled so activations stay near unit
// size through the layers. Used by `shardlm make-tiny-model` and the benchmarks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/config.h"
#include "formats/weight_source.h"

namespace shardlm {

// Names and shapes of every tensor a HF checkpoint of `config` holds, sorted by name.
std::map<std::string, std::vector<int64_t>> CheckpointTensorShapes(const ModelConfig& config);

// Generates each tensor on demand from (seed, tensor name), so any tensor can be produced alone.
class RandomWeightSource : public WeightSource {
 public:
  RandomWeightSource(const ModelConfig& config, uint64_t seed, DType dtype);

  std::string Describe() const override;
  std::vector<std::string> Names() const override;
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override;
  absl::StatusOr<Tensor> Load(std::string_view name) const override;
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                  int64_t end) const override;
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                     int64_t end) const override;

 private:
  std::map<std::string, std::vector<int64_t>, std::less<>> shapes_;
  uint64_t seed_;
  DType dtype_;
  // Gemma scales embeddings by sqrt(hidden): its table is drawn that much smaller, so that the
  // scaled rows have unit variance as every other family's.
  float embed_width_ = 1.7320508f;
};

struct TinyModelSpec {
  Arch arch = Arch::kLlama;
  int64_t layers = 2;
  int64_t hidden = 64;
  int64_t heads = 8;
  int64_t kv_heads = 2;
  int64_t intermediate = 128;
  int64_t head_dim = 0;  // 0: hidden / heads
  int64_t vocab = 256;
  uint64_t seed = 1;
  DType dtype = DType::kF32;
  bool tie_embeddings = false;
};

// The config.json content a tiny model of `spec` gets, with each family's features switched on
// and sized so that tests exercise them: Qwen2 q/k/v biases; Mistral and Phi-3 a sliding window
// shorter than the tiny contexts; Gemma 3 sliding and global layers alternating, with their two
// rope thetas, and a query_pre_attn_scalar other than head_dim; Phi-3 longrope with a tiny
// original context (so its long factors apply); GLM half-rotary heads.
absl::StatusOr<ModelConfig> TinyModelConfig(const TinyModelSpec& spec);
// Writes DIR/config.json and DIR/model.safetensors (creating DIR).
absl::Status WriteTinyModel(const TinyModelSpec& spec, const std::string& dir);

}  // namespace shardlm
