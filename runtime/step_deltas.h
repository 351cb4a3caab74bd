// Rank 0's record of the sequences a worker job runs, which turns the coordinator's delta plans
// into whole ones (worker.proto, SeqStep.continues / sampled_input). The coordinator sends a
// sequence's block table, sampling parameters and prompt length once, on the first SeqStep of an
// admission; later SeqSteps carry only the blocks appended since, and a decode planned before
// its input token came back says so (sampled_input) instead of naming the token. Expand gives
// every rank the SeqSteps they run (runtime/engine.h), whole; Record keeps the sampled tokens.
//
// Ordering: plans are expanded in the order they come, and results recorded in the same order.
// A plan whose sampled_input tokens are still being computed (pipeline stages: an earlier step
// of the same sequence is still in flight) is not Ready yet; rank 0 waits for that step's result
// and Records it first. Results must be Recorded in the order the plans were Expanded. Plain CPU code, no MPI, tested on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "shardlm/v1/worker.pb.h"

namespace shardlm {

class StepDeltas {
 public:
  // True when every sampled_input of `plan` has its token (Record-ed); false while a step that
  // samples one is still in flight. A plan with an error (see Expand) is Ready: Expand says why.
  bool Ready(const worker::v1::StepPlan& plan) const;

  // The whole plan: every SeqStep with its whole block table, sampling, prompt_len, logprobs and
  // tokens. Drops the records of `released` first. InvalidArgument (the plan is refused, the
  // records stay as they were) for a continuing SeqStep of an unknown sequence, a start_pos
  // other than the positions run so far, or a sampled_input with no sampled token to run;
  // FailedPrecondition when not Ready. A sampled_input SeqStep of a sequence whose last sampled
  // step failed (SeqResult.error: the coordinator ends its request) is left out of the plan.
  absl::StatusOr<worker::v1::StepPlan> Expand(const worker::v1::StepPlan& plan);

  // The result of `expanded` (what Expand gave): each sequence's sampled token becomes the input
  // of its next sampled_input step. A sequence the result has no token for (a failed step, or
  // SeqResult.error) is marked failed.
  void Record(const worker::v1::StepPlan& expanded, const worker::v1::StepResult& result);

  size_t sequences() const { return seqs_.size(); }

 private:
  struct Seq {
    worker::v1::SeqStep base;   // the first SeqStep's fields (tokens and history cleared)
    int64_t next_pos = 0;       // positions run (or expanded to run) so far
    int32_t sampling_steps = 0; // expanded steps that sample, whose result is not recorded yet
    std::optional<int32_t> sampled;  // recorded and not yet run as an input
    bool failed = false;        // its last recorded sample failed
  };

  std::unordered_map<uint64_t, Seq> seqs_;
};

}  // namespace shardlm
