// Offline generation of one sequence through the served path: a WorkerEngine of its own (paged KV
// cache, batched forward, the worker's sampler, CUDA-graph decode steps on a GPU) fed the plans a
// scheduler would send for that sequence alone: the prompt in one prefill step, then one token
// per step. Under mpirun every rank drives its own engine with the same plans, as the worker
// ranks do; the answers arrive on world rank 0, which shares the sampled ids with the others.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama.h"
#include "runtime/engine.h"
#include "shardlm/v1/worker.pb.h"

namespace shardlm {

// Greedy decoding: temperature 0 (an unset temperature means the server's default of 1).
shardlm::v1::SamplingParams GreedySampling();

struct SequenceOptions {
  // The request's sampling, with the service's meaning: the same seed gives the same tokens
  // offline and on a server (each draw depends on (seed, position) alone).
  shardlm::v1::SamplingParams sampling = GreedySampling();
  bool cuda_graphs = true;  // decode steps as CUDA graphs where the backend records them
  int block_size = 16;      // tokens per KV block (the coordinator's default)
};

// What one step of the sequence gives back.
struct SequenceStep {
  int32_t token = -1;         // the sampled token, on every rank; -1 when the step sampled none
  std::vector<float> logits;  // world rank 0: the rows asked for, [rows, vocab_size]
};

// One sequence through a WorkerEngine of its own. Every rank makes one and calls Step with the
// same arguments.
class SequenceRunner {
 public:
  // KV blocks for `capacity` positions, in order, and one more that only the padding rows of
  // recorded decode steps write (as in the worker).
  SequenceRunner(LlamaModel& model, int64_t capacity, SequenceOptions options = {});

  // Collective over every rank. Runs `tokens` at the next positions (the first call's tokens are
  // the prompt: the penalties count the later ones as generated), samples the token after them
  // when `sample`, and returns the full-vocabulary logits rows that `logits` asks for (the
  // sampled token's, or every token's). A step that does not fit (no tokens, ids outside the
  // vocabulary, positions past the capacity) is an error on every rank.
  absl::StatusOr<SequenceStep> Step(std::span<const int32_t> tokens, bool sample = true,
                                    worker::v1::LogitsRows logits = worker::v1::LOGITS_NONE);

  // Positions run so far.
  int64_t position() const { return position_; }

 private:
  LlamaModel& model_;
  SequenceOptions options_;
  int64_t capacity_;
  std::unique_ptr<WorkerEngine> engine_;  // holds the cache its decode graphs point into
  int64_t position_ = 0;
  int32_t prompt_len_ = 0;
  uint64_t step_id_ = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  bool keep_logits = false;  // keep the logits row that chose each generated token
  bool stop_at_eos = true;   // stop after emitting an end-of-generation token
  // End of generation; when unset, config.eos_token_ids.
  std::function<bool(int32_t)> is_eog;
  // Called with each generated id as soon as it is chosen (streaming output), on every rank.
  std::function<void(int32_t)> on_token;
  // Sampling (greedy unless told otherwise), CUDA graphs, KV block size.
  SequenceOptions sequence;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (not the prompt), on every rank
  std::vector<float> logits;    // tokens.size() x vocab when keep_logits (world rank 0 only)
  double prefill_ms = 0;
  double decode_ms = 0;         // for tokens.size() - 1 decode steps
};

// Checks the prompt (non-empty, every id in [0, vocab)) and max_new_tokens (> 0, and prompt plus
// new tokens within max_position_embeddings when the config gives one); errors name the bad value.
absl::Status ValidateGenerateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                                     int64_t max_new_tokens);

// The prompt in one prefill step, then one token per step until max_new_tokens or an
// end-of-generation token. With a distributed model every rank calls this with the same
// arguments; all of them get the tokens.
absl::StatusOr<GenerateResult> Generate(LlamaModel& model, std::span<const int32_t> prompt,
                                        const GenerateOptions& options);

// Teacher forcing: the logits of every position of `tokens` from one prefill step asking for
// every row, [tokens, vocab] on world rank 0 (row i predicts token i + 1); empty elsewhere.
// Collective, like Generate.
absl::StatusOr<std::vector<float>> PromptLogits(LlamaModel& model,
                                                std::span<const int32_t> tokens,
                                                const SequenceOptions& options = {});

}  // namespace shardlm
