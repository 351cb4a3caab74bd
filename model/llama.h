// The Llama-family decoder (Llama, Mistral, Qwen2) written once against the Backend interface:
// embedding, then per layer RMSNorm -> Q/K/V (+bias) -> RoPE -> causal GQA attention over the KV
// cache -> O -> residual, RMSNorm -> SiLU(gate) * up -> down -> residual; final RMSNorm and LM head.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weight_source.h"

namespace shardlm {

struct LlamaLayerWeights {
  Tensor attn_norm, wq, wk, wv, wo;
  std::optional<Tensor> bq, bk, bv, bo;
  Tensor mlp_norm, w_gate, w_up, w_down;
  std::optional<Tensor> b_gate, b_up, b_down;
};

class LlamaModel {
 public:
  // Loads and checks every weight against `config` (shape, and dtype against torch_dtype for
  // matrices). Errors name the tensor, the checkpoint and expected vs got.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelConfig& config,
                                                          const WeightSource& weights,
                                                          Backend& backend);

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  KvCache NewCache(int64_t max_seq) const;
  // Bytes of weights held in the backend's form.
  uint64_t weight_bytes() const { return weight_bytes_; }

  // Runs `tokens` at positions [start_pos, start_pos + n), appending their K/V to `cache`, and
  // returns f32 logits in backend memory: [n, vocab] when all_logits, else [1, vocab] for the last
  // token.
  absl::StatusOr<Tensor> Forward(std::span<const int32_t> tokens, int64_t start_pos,
                                 KvCache& cache, bool all_logits = false);

 private:
  LlamaModel(const ModelConfig& config, Backend& backend) : config_(config), backend_(backend) {}
  void Layer(int64_t l, Tensor& x, std::span<const int32_t> positions, KvCache& cache);

  ModelConfig config_;
  Backend& backend_;
  RopeConfig rope_;
  AttentionParams attn_;
  Tensor embed_, final_norm_, lm_head_;
  std::vector<LlamaLayerWeights> layers_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace shardlm
