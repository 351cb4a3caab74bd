// The worker's step loop body: one StepPlan from the coordinator -> one batched forward pass over
// the paged KV cache on every rank -> tokens sampled on the last stage -> one StepResult on world
// rank 0 (which relays it to the coordinator). Every rank calls Step with the same plan.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/decode_graphs.h"
#include "model/llama.h"
#include "shardlm/v1/worker.pb.h"
#include "runtime/sampler.h"

namespace shardlm {

struct EngineOptions {
  bool cuda_graphs = true;  // record decode steps as graphs where the backend can
  // Padded batch sizes of the recorded decode steps.
  std::vector<int> graph_batch_sizes = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256};
  int32_t pad_block = -1;   // a cache block the coordinator never hands out (-1: none, no graphs)
};

class WorkerEngine {
 public:
  WorkerEngine(LlamaModel& model, PagedKvCache cache, EngineOptions options = {});

  // Collective over every rank. A plan that does not fit the cache or the model (bad ids, blocks,
  // positions) is refused identically on every rank before any communication: the result then
  // carries the error, and the worker goes on. On world rank 0 the result; elsewhere an empty one.
  absl::StatusOr<worker::v1::StepResult> Step(const worker::v1::StepPlan& plan);

  const PagedKvCache& cache() const { return cache_; }

 private:
  struct SeqState {
    int32_t prompt_len = 0;
    int32_t next_pos = 0;  // tokens seen so far
    TokenHistory history;
    uint64_t seed = 0;
  };
  // Records the tokens of this step in the sequence's history (a start at position 0 resets it).
  void Observe(const worker::v1::SeqStep& s);
  absl::StatusOr<worker::v1::StepResult> Sample(const worker::v1::StepPlan& plan,
                                                const Tensor& local_logits);

  LlamaModel& model_;
  PagedKvCache cache_;
  std::unique_ptr<DecodeGraphs> graphs_;
  std::unordered_map<uint64_t, SeqState> seqs_;
};

SamplerParams SamplerParamsFrom(const shardlm::v1::SamplingParams& p, int logprobs,
                                uint64_t fallback_seed);

}  // namespace shardlm
