// The worker's step loop body: one StepPlan from the coordinator -> one batched forward pass over
// the paged KV cache on every rank -> tokens sampled on the last stage (and the full logits rows
// a SeqStep asks for, gathered over the TP ranks) -> one StepResult on world rank 0 (which
// relays it to the coordinator). Every rank calls Step with the same plan. Offline generation
// (runtime/generator.h) drives the same engine with plans for one sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/step_agreement.h"
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
  // How long a rank whose step failed waits for the others to agree on it (see Step).
  double agreement_timeout_s = 30.0;
};

class WorkerEngine {
 public:
  // Collective over every rank (it sets up the step agreement).
  WorkerEngine(LlamaModel& model, PagedKvCache cache, EngineOptions options = {});

  // Collective over every rank. A plan that does not fit the cache or the model (bad ids, blocks,
  // positions) is refused identically on every rank before any communication: the result then
  // carries the error, and the worker goes on. On world rank 0 the result; elsewhere an empty one.
  //
  // Failures. A backend op that throws (a device out of memory, a failed launch, a shape error)
  // never leaves Step. After every step the ranks agree on how it went (StepAgreement); then:
  //   - every rank went well: the result;
  //   - some rank failed, every rank reached the agreement, each failed rank's device still works
  //     and the job has one pipeline stage (no message between stages can be left unmatched):
  //     the step fails and the job goes on. The result (rank 0) carries the error, naming the
  //     lowest failing rank and the op ("rank 1 failed in Linear: cudaMallocAsync ..."), so that
  //     the coordinator ends that step's requests;
  //   - some rank failed and the job cannot be brought back in step (a broken device, a failed
  //     communication, pipeline stages): Aborted, with the same message on every rank, which
  //     may all exit;
  //   - this rank failed and not every rank reached the agreement within
  //     EngineOptions::agreement_timeout_s (they wait in a collective it left): DeadlineExceeded
  //     on this rank only. The job cannot go on and its peers cannot leave: end it (MPI_Abort).
  // Rows of sampled logits that are not finite (NaN, Inf) fail only their sequences: their
  // SeqResult carries the error instead of a token.
  absl::StatusOr<worker::v1::StepResult> Step(const worker::v1::StepPlan& plan);

  // Pipelined serving (pp > 1, worker/pipeline.h): this rank's part of `plan`, with no step
  // agreement and no relay to rank 0, so that each stage can go on to the next step while the
  // later stages run this one. Every rank of the job runs the same plans in the same order. On
  // the last stage's root the result, else an empty one; a plan that does not fit is refused
  // (StepResult.error) the same way on every rank, before any communication. Any other failure
  // (an exception, a failed communication) comes back as an error, and the job cannot go on:
  // the caller ends it (MPI_Abort), and the coordinator recomputes the steps in flight on the
  // next job.
  absl::StatusOr<worker::v1::StepResult> StageStep(const worker::v1::StepPlan& plan);

  const PagedKvCache& cache() const { return cache_; }
  LlamaModel& model() const { return model_; }
  // The agreement after each step (null when it could not be set up); its total wait gives the
  // per-step cost.
  const StepAgreement* agreement() const { return agreement_.get(); }

 private:
  struct SeqState {
    int32_t prompt_len = 0;
    int32_t next_pos = 0;  // tokens seen so far
    TokenHistory history;
    uint64_t seed = 0;
  };
  // The step itself, which Step guards (exceptions, agreement).
  // `relay`: the last stage's root sends the result to rank 0 (Step); else it keeps it.
  absl::StatusOr<worker::v1::StepResult> RunStep(const worker::v1::StepPlan& plan, bool relay);
  // Records the tokens of this step in the sequence's history (a start at position 0, or a
  // SeqStep.history, resets it; the history tokens count as run).
  void Observe(const worker::v1::SeqStep& s);
  absl::StatusOr<worker::v1::StepResult> Sample(const worker::v1::StepPlan& plan,
                                                const Tensor& local_logits);

  // Collective over the last stage's TP ranks: the sequences of `plan` whose rows of
  // `local_logits` hold a NaN or an infinity get an error in `result` (on the last stage's root)
  // instead of their token.
  absl::Status FailNonFiniteRows(const worker::v1::StepPlan& plan, const Tensor& local_logits,
                                 worker::v1::StepResult& result);

  LlamaModel& model_;
  PagedKvCache cache_;
  std::unique_ptr<DecodeGraphs> graphs_;
  std::unordered_map<uint64_t, SeqState> seqs_;
  absl::Duration agreement_timeout_;
  std::unique_ptr<StepAgreement> agreement_;
  absl::Status agreement_status_;  // why there is no agreement (then every Step fails)
  Tensor row_mean_weights_;        // [1, local vocab] of 0.5 / local vocab (FailNonFiniteRows)
};

SamplerParams SamplerParamsFrom(const shardlm::v1::SamplingParams& p, int logprobs,
                                uint64_t fallback_seed);

}  // namespace shardlm
