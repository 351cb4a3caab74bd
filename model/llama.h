// The dense decoder of every supported family (Llama, Mistral, Qwen2, Qwen3, Gemma 3, Phi-3, GLM,
// GLM-4), written once against the Backend and Communicator interfaces: embedding (Gemma: times
// sqrt(hidden)), then per layer RMSNorm -> Q/K/V (+bias) -> per-head q/k RMSNorm (Qwen3, Gemma 3)
// -> RoPE (whole or partial heads, rotate-half or interleaved, the layer's theta) -> causal GQA
// attention over the paged KV cache (global or sliding window, per layer) -> O -> RMSNorm of the
// output (Gemma 3, GLM-4) -> residual, RMSNorm -> act(gate) * up (SwiGLU or GeGLU) -> down ->
// RMSNorm of the output (Gemma 3, GLM-4) -> residual; final RMSNorm and LM head. The families
// differ only in the ModelConfig fields that switch these on. It runs batched steps (ForwardBatch) of the step engine
// (runtime/engine.h), which serves the worker and offline generation alike.
//
// Each rank holds the shard its ParallelContext gives it (parallel/shard_plan.h): its pipeline
// stage's layers, and in each of them its Q/KV heads and MLP columns, with one all-reduce after O
// and one after down; the first stage holds the embedding, the last the LM head, both split by
// vocabulary over the TP ranks. With one rank (the default) this is the plain model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "formats/config.h"
#include "formats/weight_source.h"
#include "parallel/layers.h"

namespace shardlm {

struct LlamaLayerWeights {
  Tensor attn_norm, mlp_norm;
  Tensor post_attn_norm, post_mlp_norm;  // ModelConfig::post_norms (Gemma 3, GLM-4)
  Tensor q_norm, k_norm;                 // ModelConfig::qk_norm (Qwen3, Gemma 3): [head_dim]
  // This rank's Q, K and V rows as one column-parallel linear, [q; k; v] (one GEMM), and gate and
  // up as one, [gate; up]: loaded stacked when the parts have one dtype (fused_*), else apart
  // (Q4_K_M files keep some of them in Q6_K) in q, k, v / gate, up.
  bool fused_qkv = false, fused_gate_up = false;
  ColumnParallelLinear qkv, gate_up;
  ColumnParallelLinear q, k, v, gate, up;
  RowParallelLinear o, down;
  // A mixture-of-experts MLP (ModelConfig::num_experts; LayerIsMoe): the router [experts,
  // hidden], whole on every rank, and each expert's [gate; up] rows and down columns of this
  // rank's share of moe_intermediate_size.
  bool moe = false;
  Tensor router;
  struct Expert {
    ColumnParallelLinear gate_up;
    Tensor down;  // [hidden, moe_local]: summed over TP ranks once per layer, not per expert
  };
  std::vector<Expert> experts;
};

struct LlamaWeights {
  std::optional<VocabParallelEmbedding> embed;  // first stage
  std::optional<ParallelLMHead> lm_head;        // last stage
  Tensor final_norm;                            // last stage
  std::vector<LlamaLayerWeights> layers;        // this stage's layers
};

class ShardLoader;

// This rank's paged KV cache: per local layer, K and V of [num_blocks * block_size, local KV
// heads, head_dim]. Block tables (which blocks a sequence uses) come with each batch.
struct PagedKvCache {
  int block_size = 16;
  int64_t num_blocks = 0;
  std::vector<Tensor> k, v;
};

// One batched step over several sequences (continuous batching): their tokens back to back.
struct BatchInput {
  std::vector<int32_t> tokens;      // n
  std::vector<int32_t> positions;   // n: position of each token in its sequence (its K/V go to
                                    // block positions / block_size of the sequence's table)
  std::vector<int32_t> seq_index;   // n: its sequence (index into the block tables)
  std::vector<int32_t> table_begin; // sequences + 1 offsets into block_tables
  std::vector<int32_t> block_tables;
  std::vector<int32_t> logit_rows;  // tokens whose next-token logits are wanted
};

// One step's index arrays on the host, as the model uploads them (one upload, in this order).
struct HostStepIndices {
  std::vector<int32_t> embed_ids;   // n: token ids local to this rank's vocabulary shard, or -1
  std::vector<int32_t> positions;   // n
  std::vector<int32_t> cache_rows;  // n: where each token's K/V go
  std::vector<int32_t> seq_index, table_begin, block_tables;  // the paged layout
  std::vector<int32_t> logit_rows;  // rows whose logits are wanted
  int block_size = 0;               // of the paged cache

  std::vector<int32_t> Packed() const;  // every array above, back to back
};

// The same arrays as kI32 views into one backend tensor laid out as HostStepIndices::Packed().
struct StepIndices {
  int64_t tokens = 0;
  Tensor embed_ids, positions, cache_rows, logit_rows;
  PagedKvIndices layout;

  static StepIndices Views(const HostStepIndices& host, const Tensor& packed);
};

// The activations of one step, allocated once per step and shared by every layer. DecodeGraphs
// keeps one per recorded batch size, so that a recorded graph allocates none of them.
struct StepWorkspace {
  int64_t tokens = 0, logit_rows = 0;
  Tensor x;        // [tokens, hidden]: the residual stream
  Tensor h;        // [tokens, hidden]: a layer's normed input, then its branch outputs
  Tensor qkv;      // [tokens, (heads + 2 * kv_heads) * head_dim]: the Q/K/V projections
  Tensor q;        // [tokens, heads, head_dim]: the rotated queries
  Tensor attn;     // [tokens, heads * head_dim]
  Tensor gate_up;  // [tokens, 2 * intermediate]: the gate and up projections
  Tensor act;      // [tokens, intermediate]: silu(gate) * up
  Tensor last, normed, logits;  // last stage: [logit_rows, hidden] twice, [logit_rows, vocab]

  // Views of the first `tokens` / `logit_rows` rows: a workspace for a smaller step in the same
  // memory (every buffer's rows are its first dimension).
  StepWorkspace Prefix(int64_t tokens, int64_t logit_rows) const;
};

// The inputs of the shard plan for `config` at (tp, pp, ep); the intermediate sizes are split on
// the quantization blocks of the (expert) down projections when `weights` is given.
PlanInput PlanInputFor(const ModelConfig& config, int tp, int pp,
                       std::vector<int64_t> pp_layers = {},
                       const WeightSource* weights = nullptr, int ep = 1);
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
  // Bytes of weights this rank holds, in the backend's form.
  uint64_t weight_bytes() const { return weight_bytes_; }
  // Load balance of a mixture of experts: [layer * num_experts + expert] = the tokens routed to
  // that expert in all the steps so far, counted for the experts this rank runs (its shard's
  // `experts`; zero for the others and for dense layers). Empty for a dense model.
  const std::vector<int64_t>& expert_tokens() const { return expert_tokens_; }

  // KV bytes one block of `block_size` tokens takes on this rank (its layers and KV heads).
  uint64_t KvBytesPerBlock(int block_size) const;
  // A paged cache for this rank's layers and KV heads.
  PagedKvCache NewPagedCache(int block_size, int64_t num_blocks) const;
  // One batched step through this rank's stage (every rank calls it with the same batch). On
  // the last stage: f32 logits of this rank's vocabulary shard for batch.logit_rows,
  // [logit_rows, vocab_local]; elsewhere an empty tensor.
  absl::StatusOr<Tensor> ForwardBatch(const BatchInput& batch, PagedKvCache& cache);
  // The two halves of ForwardBatch. PrepareBatch checks the batch against the model and the
  // cache on the host (InvalidArgument / OutOfRange naming the bad token, position or block) and
  // lays out its index arrays; ForwardStep runs the stage on them once they are in backend memory
  // (it makes no host round trip when parallel().device_resident() and the model has no mixture
  // of experts, whose routing reads the router's logits back; so it can be recorded as a CUDA
  // graph).
  absl::StatusOr<HostStepIndices> PrepareBatch(const BatchInput& batch,
                                               const PagedKvCache& cache) const;
  // `workspace`: the step's activations (NewWorkspace(step.tokens, logit rows)); the logits
  // returned are then its `logits`. Without one, the step allocates its own.
  absl::StatusOr<Tensor> ForwardStep(const StepIndices& step, std::vector<Tensor>& k_caches,
                                     std::vector<Tensor>& v_caches,
                                     StepWorkspace* workspace = nullptr);
  StepWorkspace NewWorkspace(int64_t tokens, int64_t logit_rows) const;

  // Last stage only, collective over its TP ranks: the argmax over the whole vocabulary of each
  // row of `local_logits` / the full rows [rows, vocab] (host), on every TP rank.
  absl::StatusOr<std::vector<int32_t>> LastStageArgmax(const Tensor& local_logits);
  absl::StatusOr<std::vector<float>> LastStageGather(const Tensor& local_logits);
  // Rows `rows` of a backend f32 matrix, as a new [rows.size(), cols] one.
  Tensor SelectRows(const Tensor& t, std::span<const int32_t> rows);
  // The world rank that holds the answers: TP rank 0 of the last stage.
  int LastStageRoot() const { return parallel_.plan.RankOf(parallel_.plan.pp - 1, 0); }

 private:
  LlamaModel(const ModelConfig& config, Backend& backend, ParallelContext parallel)
      : config_(config), backend_(backend), parallel_(std::move(parallel)) {}
  // One decoder layer on ws.x. K/V go to rows step.cache_rows of (k_cache, v_cache); attention
  // reads the paged cache through step.layout. ws.h carries the previous residual branch's
  // output, added to x fused with this layer's first norm (not for the stage's first layer,
  // `first`), and leaves with this layer's last one.
  absl::Status Layer(int64_t l, bool first, StepWorkspace& ws, const StepIndices& step,
                     Tensor& k_cache, Tensor& v_cache);
  // The mixture of experts of layer l on ws.h (normed), written back to ws.h: routes on the host
  // (softmax, top-k, renormalised when the family does), then runs each expert on its tokens
  // (model/moe.cpp); with expert parallelism (ep > 1) through ExpertParallelMoe.
  absl::Status MoeMlp(int64_t layer, const LlamaLayerWeights& lw, StepWorkspace& ws);
  absl::Status ExpertParallelMoe(int64_t layer, const LlamaLayerWeights& lw, StepWorkspace& ws);
  // Adds the tokens each of this rank's experts got in `layer` (rows[e]: local expert e's) to
  // expert_tokens_, and logs them at debug level.
  void CountExpertTokens(int64_t layer, const std::vector<std::vector<int32_t>>& rows);
  // Uploads `host` (one copy) and runs ForwardStep.
  absl::StatusOr<Tensor> RunHost(const HostStepIndices& host, std::vector<Tensor>& k_caches,
                                 std::vector<Tensor>& v_caches);

  ModelConfig config_;
  Backend& backend_;
  ParallelContext parallel_;
  // Per local layer: its rope (Gemma 3's sliding layers use their own theta) and attention
  // parameters (sliding window or not).
  std::vector<RopeConfig> rope_;
  std::vector<AttentionParams> attn_;
  Activation act_ = Activation::kSilu;
  LlamaWeights w_;
  uint64_t weight_bytes_ = 0;
  std::vector<int64_t> expert_tokens_;  // see expert_tokens()
};

}  // namespace shardlm
