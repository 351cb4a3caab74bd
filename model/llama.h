// The Llama-family decoder (Llama, Mistral, Qwen2) written once against the Backend and
// Communicator interfaces: embedding, then per layer RMSNorm -> Q/K/V (+bias) -> RoPE -> causal GQA
// attention over the KV cache -> O -> residual, RMSNorm -> SiLU(gate) * up -> down -> residual;
// final RMSNorm and LM head.
//
// Each rank holds the shard its ParallelContext gives it (parallel/shard_plan.h): its pipeline
// stage's layers, and in each of them its Q/KV heads and MLP columns, with one all-reduce after O
// and one after down; the first stage holds the embedding, the last the LM head, both split by
// vocabulary over the TP ranks. With one rank (the default) this is the plain model.
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
#include "parallel/layers.h"

namespace shardlm {

struct LlamaLayerWeights {
  Tensor attn_norm, mlp_norm;
  ColumnParallelLinear q, k, v, gate, up;
  RowParallelLinear o, down;
};

struct LlamaWeights {
  std::optional<VocabParallelEmbedding> embed;  // first stage
  std::optional<ParallelLMHead> lm_head;        // last stage
  Tensor final_norm;                            // last stage
  std::vector<LlamaLayerWeights> layers;        // this stage's layers
};

class ShardLoader;

// The inputs of the shard plan for `config` at (tp, pp); the intermediate size is split on the
// quantization blocks of the down projections when `weights` is given.
PlanInput PlanInputFor(const ModelConfig& config, int tp, int pp,
                       std::vector<int64_t> pp_layers = {},
                       const WeightSource* weights = nullptr);
// The plan for one rank holding the whole model.
ShardPlan SingleRankPlan(const ModelConfig& config);

// Reads `shard`'s weights through `loader` (with a null backend: only counts their bytes).
absl::StatusOr<LlamaWeights> LoadLlamaShard(const ModelConfig& config, const RankShard& shard,
                                            const ShardPlan& plan, ShardLoader& loader);

class LlamaModel {
 public:
  // Loads this rank's shard and checks every weight against `config` (shape, and dtype against
  // torch_dtype for matrices). Errors name the tensor, the checkpoint and expected vs got.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelConfig& config,
                                                          const WeightSource& weights,
                                                          Backend& backend,
                                                          std::optional<ParallelContext> parallel = {});

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  const ParallelContext& parallel() const { return parallel_; }
  // A cache for this rank's layers and KV heads.
  KvCache NewCache(int64_t max_seq) const;
  // Bytes of weights this rank holds, in the backend's form.
  uint64_t weight_bytes() const { return weight_bytes_; }

  // Runs `tokens` at positions [start_pos, start_pos + n) through this rank's stage, appending
  // their K/V to `cache`. Every rank calls it with the same tokens. On the last stage it returns
  // f32 logits of this rank's vocabulary shard in backend memory: [n, vocab_local] when
  // all_logits, else [1, vocab_local] for the last token; on other stages an empty tensor.
  absl::StatusOr<Tensor> Forward(std::span<const int32_t> tokens, int64_t start_pos,
                                 KvCache& cache, bool all_logits = false);
  // Collective over all ranks: the greedy ids of the `rows` rows of Forward's logits, on every
  // rank.
  absl::StatusOr<std::vector<int32_t>> Greedy(const Tensor& local_logits, int64_t rows);
  // Collective over all ranks: the full logits [rows, vocab] (host) on world rank 0; empty on
  // the others.
  absl::StatusOr<std::vector<float>> GatherLogits(const Tensor& local_logits, int64_t rows);

 private:
  LlamaModel(const ModelConfig& config, Backend& backend, ParallelContext parallel)
      : config_(config), backend_(backend), parallel_(std::move(parallel)) {}
  absl::Status Layer(int64_t l, Tensor& x, std::span<const int32_t> positions, KvCache& cache);
  // The world rank that holds the answer: TP rank 0 of the last stage.
  int LastStageRoot() const { return parallel_.plan.RankOf(parallel_.plan.pp - 1, 0); }

  ModelConfig config_;
  Backend& backend_;
  ParallelContext parallel_;
  RopeConfig rope_;
  AttentionParams attn_;
  LlamaWeights w_;
  uint64_t weight_bytes_ = 0;
};

}  // namespace shardlm
