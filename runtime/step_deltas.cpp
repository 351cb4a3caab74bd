#include "runtime/step_deltas.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace shardlm {

using worker::v1::SeqStep;
using worker::v1::StepPlan;
using worker::v1::StepResult;

bool StepDeltas::Ready(const StepPlan& plan) const {
  for (const SeqStep& s : plan.seqs()) {
    if (!s.continues() || !s.sampled_input()) continue;
    auto it = seqs_.find(s.seq_id());
    if (it == seqs_.end()) continue;  // an error for Expand
    const Seq& seq = it->second;
    // Waiting for its token: not recorded yet, but a step that samples it is in flight.
    if (!seq.sampled && !seq.failed && seq.sampling_steps > 0) return false;
  }
  return true;
}

absl::StatusOr<StepPlan> StepDeltas::Expand(const StepPlan& plan) {
  if (!Ready(plan)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "step ", plan.step_id(), ": a sampled_input token is still being computed"));
  }
  // Check everything before changing any record, so that a refused plan leaves none changed.
  std::unordered_map<uint64_t, int64_t> next_pos;  // within this plan (a seq appears once)
  for (const SeqStep& s : plan.seqs()) {
    const bool released_here =
        std::find(plan.released().begin(), plan.released().end(), s.seq_id()) !=
        plan.released().end();
    auto it = seqs_.find(s.seq_id());
    const bool known = it != seqs_.end() && !released_here;
    if (!next_pos.emplace(s.seq_id(), 0).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", plan.step_id(), ": seq ", s.seq_id(), " appears twice"));
    }
    if (!s.continues()) {
      if (s.sampled_input()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "step ", plan.step_id(), ": seq ", s.seq_id(),
            " has sampled_input on its first step (the workers sampled nothing for it yet)"));
      }
      continue;
    }
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat("step ", plan.step_id(), ": seq ", s.seq_id(),
                       " continues, but the workers have no record of it (never started, or "
                       "released)"));
    }
    const Seq& seq = it->second;
    if (s.start_pos() != seq.next_pos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "step ", plan.step_id(), ": seq ", s.seq_id(), " continues at start_pos ",
          s.start_pos(), ", but the workers ran it up to position ", seq.next_pos));
    }
    if (s.sampled_input()) {
      if (s.tokens_size() > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("step ", plan.step_id(), ": seq ", s.seq_id(), " has sampled_input and ",
                         s.tokens_size(), " tokens; it must have none"));
      }
      if (!seq.sampled && !seq.failed) {
        return absl::InvalidArgumentError(
            absl::StrCat("step ", plan.step_id(), ": seq ", s.seq_id(),
                         " has sampled_input, but no sampled token of it is left to run"));
      }
    }
  }

  for (uint64_t id : plan.released()) seqs_.erase(id);
  StepPlan whole;
  whole.set_step_id(plan.step_id());
  *whole.mutable_released() = plan.released();
  for (const SeqStep& s : plan.seqs()) {
    if (!s.continues()) {
      Seq& seq = seqs_[s.seq_id()];
      seq = Seq{};
      seq.base = s;
      seq.base.clear_tokens();
      seq.base.clear_history();
      seq.base.clear_block_table();
      seq.base.clear_logits();
      seq.base.clear_sample();
      seq.base.mutable_block_table()->CopyFrom(s.block_table());
      seq.next_pos = s.start_pos() + s.tokens_size();
      if (s.sample()) ++seq.sampling_steps;
      *whole.add_seqs() = s;
      continue;
    }
    Seq& seq = seqs_.at(s.seq_id());
    if (s.sampled_input() && !seq.sampled) continue;  // its last sample failed: not run again
    SeqStep* out = whole.add_seqs();
    *out = seq.base;
    out->mutable_block_table()->Add(s.block_table().begin(), s.block_table().end());
    seq.base.mutable_block_table()->Add(s.block_table().begin(), s.block_table().end());
    out->set_start_pos(s.start_pos());
    if (s.sampled_input()) {
      out->add_tokens(*seq.sampled);
      seq.sampled.reset();
    } else {
      *out->mutable_tokens() = s.tokens();
    }
    out->set_sample(s.sample());
    out->set_logits(s.logits());
    seq.next_pos = s.start_pos() + out->tokens_size();
    if (s.sample()) ++seq.sampling_steps;
  }
  return whole;
}

void StepDeltas::Record(const StepPlan& expanded, const StepResult& result) {
  std::unordered_map<uint64_t, const worker::v1::SeqResult*> results;
  if (result.error().empty()) {
    for (const worker::v1::SeqResult& r : result.results()) results[r.seq_id()] = &r;
  }
  for (const SeqStep& s : expanded.seqs()) {
    if (!s.sample()) continue;
    auto it = seqs_.find(s.seq_id());
    if (it == seqs_.end()) continue;  // released since
    Seq& seq = it->second;
    if (seq.sampling_steps > 0) --seq.sampling_steps;
    auto r = results.find(s.seq_id());
    // A failed step or sequence: the coordinator ends the request; until it releases the
    // sequence, its sampled_input steps are left out.
    if (r == results.end() || !r->second->error().empty()) {
      seq.failed = true;
      seq.sampled.reset();
    } else {
      seq.failed = false;
      seq.sampled = r->second->token();
    }
  }
}

}  // namespace shardlm
