#include "coordinator/worker_checks.h"

#include <cmath>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "base/quote.h"

namespace shardlm::coordinator {

namespace {

absl::Status Bad(uint64_t step, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("step ", step, ": StepResult.", what));
}

}  // namespace

std::string WorkerText(std::string_view text) {
  if (text.size() <= kMaxWorkerTextBytes) return std::string(text);
  return Quote(text, kMaxWorkerTextBytes);
}

absl::Status CheckLoaded(const worker::v1::Loaded& loaded) {
  if (loaded.kv_blocks() <= 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("room for no KV block (Loaded.kv_blocks = ", loaded.kv_blocks(),
                     "): raise --kv-cache-memory"));
  }
  if (loaded.kv_blocks() > kMaxKvBlocks) {
    return absl::InvalidArgumentError(
        absl::StrCat("Loaded.kv_blocks = ", loaded.kv_blocks(), ", expected at most ", kMaxKvBlocks,
                     ": cap --kv-cache-memory or raise --kv-block-size"));
  }
  return absl::OkStatus();
}

StepExpectation::StepExpectation(const worker::v1::StepPlan& plan, int64_t vocab_size,
                                 const std::unordered_map<uint64_t, int32_t>& logprobs_of)
    : step_id_(plan.step_id()), vocab_size_(vocab_size) {
  seqs_.reserve(static_cast<size_t>(plan.seqs_size()));
  for (const worker::v1::SeqStep& s : plan.seqs()) {
    Seq& seq = seqs_[s.seq_id()];
    seq.sample = s.sample();
    int32_t logprobs = s.logprobs();
    if (s.continues()) {
      auto it = logprobs_of.find(s.seq_id());
      logprobs = it == logprobs_of.end() ? 0 : it->second;
    }
    seq.logprobs = s.sample() ? logprobs : 0;
    seq.logits_rows = s.logits() == worker::v1::LOGITS_SAMPLED ? 1
                      : s.logits() == worker::v1::LOGITS_ALL   ? s.tokens_size()
                                                               : 0;
  }
}

absl::Status StepExpectation::Check(const worker::v1::StepResult& result) const {
  const uint64_t step = step_id_;
  if (result.step_id() != step) {
    return Bad(step, absl::StrCat("step_id is ", result.step_id(), ", expected ", step));
  }
  if (!std::isfinite(result.compute_ms()) || result.compute_ms() < 0) {
    return Bad(step, absl::StrCat("compute_ms is ", result.compute_ms(),
                                  ", expected a finite value >= 0"));
  }
  auto in_vocab = [&](int64_t id) { return id >= 0 && id < vocab_size_; };
  std::unordered_set<uint64_t> answered;
  answered.reserve(static_cast<size_t>(result.results_size()));
  for (int i = 0; i < result.results_size(); ++i) {
    const worker::v1::SeqResult& r = result.results(i);
    const std::string at = absl::StrCat("results[", i, "] (seq ", r.seq_id(), ")");
    auto planned = seqs_.find(r.seq_id());
    if (planned == seqs_.end()) {
      return Bad(step, absl::StrCat(at, ": no such sequence in the step's plan"));
    }
    const Seq& seq = planned->second;
    if (!seq.sample && seq.logits_rows == 0) {
      return Bad(step, absl::StrCat(at, ": the plan asked this sequence for no result"));
    }
    if (!answered.insert(r.seq_id()).second) {
      return Bad(step, absl::StrCat(at, ": a second result for this sequence, expected one"));
    }
    const int64_t logits_want = seq.logits_rows * vocab_size_;
    if (r.logits_size() != logits_want) {
      return Bad(step, absl::StrCat(at, ".logits has ", r.logits_size(), " values, expected ",
                                    seq.logits_rows, " rows x ", vocab_size_, " = ", logits_want));
    }
    if (!r.error().empty()) continue;  // this sequence failed: no token to check
    if (seq.sample && !in_vocab(r.token())) {
      return Bad(step, absl::StrCat(at, ".token is ", r.token(), ", expected an id in [0, ",
                                    vocab_size_, ")"));
    }
    if (!r.has_logprobs()) continue;
    if (seq.logprobs == 0) {
      return Bad(step, absl::StrCat(at, ".logprobs is set, but the plan asked for none"));
    }
    const v1::Logprobs& lp = r.logprobs();
    if (lp.top_size() > seq.logprobs) {
      return Bad(step, absl::StrCat(at, ".logprobs.top has ", lp.top_size(),
                                    " entries, expected at most ", seq.logprobs));
    }
    auto check = [&](const v1::TokenLogprob& t, const std::string& field) -> absl::Status {
      if (!in_vocab(t.id())) {
        return Bad(step, absl::StrCat(at, ".", field, ".id is ", t.id(), ", expected an id in [0, ",
                                      vocab_size_, ")"));
      }
      // Logprob values are the output processor's to check, per request: -inf is floored and a
      // NaN fails that request alone (a job that is otherwise sound is not dropped for it).
      return absl::OkStatus();
    };
    if (absl::Status s = check(lp.chosen(), "logprobs.chosen"); !s.ok()) return s;
    for (int j = 0; j < lp.top_size(); ++j) {
      if (absl::Status s = check(lp.top(j), absl::StrCat("logprobs.top[", j, "]")); !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

void StepResultGuard::Sent(const worker::v1::StepPlan& plan) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t id : plan.released()) logprobs_of_.erase(id);
  for (const worker::v1::SeqStep& s : plan.seqs()) {
    if (!s.continues()) logprobs_of_[s.seq_id()] = s.logprobs();
  }
  awaited_.emplace_back(plan, vocab_size_, logprobs_of_);
}

absl::Status StepResultGuard::Received(worker::v1::WorkerMessage* message) {
  if (!message->has_result()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a StepResult after loading, got message kind ",
                     static_cast<int>(message->kind_case())));
  }
  worker::v1::StepResult* result = message->mutable_result();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (awaited_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("a StepResult for step ", result->step_id(),
                                                     " while no step was in flight"));
    }
    const absl::Status checked = awaited_.front().Check(*result);
    if (!checked.ok()) return checked;
    awaited_.pop_front();  // answered: a second result for it is a violation
  }
  if (result->error().size() > kMaxWorkerTextBytes) result->set_error(WorkerText(result->error()));
  for (worker::v1::SeqResult& r : *result->mutable_results()) {
    if (r.error().size() > kMaxWorkerTextBytes) r.set_error(WorkerText(r.error()));
  }
  return absl::OkStatus();
}

}  // namespace shardlm::coordinator
