#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <new>
#include <random>
#include <stdexcept>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "parallel/collectives.h"
#include "runtime/faulty_backend.h"

namespace shardlm {

SamplerParams SamplerParamsFrom(const shardlm::v1::SamplingParams& p, int logprobs,
                                uint64_t fallback_seed) {
  SamplerParams s;
  if (p.has_temperature()) s.temperature = p.temperature();
  if (p.has_top_k()) s.top_k = p.top_k();
  if (p.has_top_p()) s.top_p = p.top_p();
  if (p.has_min_p()) s.min_p = p.min_p();
  if (p.has_repetition_penalty()) s.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) s.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) s.frequency_penalty = p.frequency_penalty();
  s.seed = p.has_seed() ? p.seed() : fallback_seed;
  s.logprobs = logprobs;
  return s;
}

namespace {

// "" when the engine can take `seq` (its logits request, its history); else what is wrong.
std::string SeqStepError(const worker::v1::SeqStep& seq) {
  if (seq.history_size() > 0 && seq.history_size() != seq.start_pos()) {
    return absl::StrCat("seq ", seq.seq_id(), ": history has ", seq.history_size(),
                        " tokens, expected start_pos = ", seq.start_pos());
  }
  if (!worker::v1::LogitsRows_IsValid(seq.logits())) {
    return absl::StrCat("seq ", seq.seq_id(), ": unknown logits request ", seq.logits());
  }
  if (seq.logits() == worker::v1::LOGITS_SAMPLED && !seq.sample()) {
    return absl::StrCat("seq ", seq.seq_id(),
                        ": logits = LOGITS_SAMPLED asks for the sampled row, but sample is false");
  }
  return "";
}

}  // namespace

WorkerEngine::WorkerEngine(LlamaModel& model, PagedKvCache cache, EngineOptions options)
    : model_(model),
      cache_(std::move(cache)),
      agreement_timeout_(absl::Seconds(options.agreement_timeout_s)) {
  // Every rank gets here (the constructor is collective), so every rank takes part in the
  // agreement's set-up; a failure fails each Step with it.
  absl::StatusOr<std::unique_ptr<StepAgreement>> agreement =
      StepAgreement::Create(*model_.parallel().world);
  if (agreement.ok()) {
    agreement_ = std::move(*agreement);
  } else {
    agreement_status_ = agreement.status();
  }
  if (options.cuda_graphs && options.pad_block >= 0 && model_.backend().supports_graphs()) {
    // Tables as long as the model's context (or 32k tokens when the config gives none).
    const int64_t context = model_.config().max_position_embeddings > 0
                                ? model_.config().max_position_embeddings
                                : 32768;
    const int max_blocks = static_cast<int>((context + cache_.block_size - 1) / cache_.block_size);
    graphs_ = std::make_unique<DecodeGraphs>(model_, cache_, options.graph_batch_sizes,
                                             max_blocks, options.pad_block);
    if (!graphs_->enabled()) graphs_.reset();
  }
}

void WorkerEngine::Observe(const worker::v1::SeqStep& s) {
  SeqState& st = seqs_[s.seq_id()];
  if (s.start_pos() == 0 || s.history_size() > 0) {
    // A new sequence, or one recomputed after preemption (from 0, or past KV blocks the
    // coordinator found in its prefix cache, with the tokens before start_pos in `history`):
    // its history starts again.
    const uint64_t seed = st.seed != 0 ? st.seed : std::random_device{}() | 1ull << 40;
    st = SeqState{};
    st.seed = seed;
  }
  st.prompt_len = s.prompt_len();
  auto observe = [&](int32_t id, int64_t position) {
    st.history.seen.insert(id);
    if (position >= s.prompt_len()) ++st.history.generated[id];
  };
  for (int i = 0; i < s.history_size(); ++i) observe(s.history(i), i);
  for (int i = 0; i < s.tokens_size(); ++i) observe(s.tokens(i), s.start_pos() + i);
  st.next_pos = s.start_pos() + s.tokens_size();
}

namespace {

// "rank 1 failed in Linear: <what the backend threw>": the rank, the backend op the exception
// came out of (when the backend is a FaultyBackend, which keeps it) and the exception's message.
std::string DescribeFailure(int rank, const std::string& op, const std::exception& e) {
  const bool host_memory = dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
  return absl::StrCat("rank ", rank, " failed", op.empty() ? "" : absl::StrCat(" in ", op), ": ",
                      host_memory ? "host memory exhausted (std::bad_alloc)" : e.what());
}

}  // namespace

absl::StatusOr<worker::v1::StepResult> WorkerEngine::RunStep(const worker::v1::StepPlan& plan,
                                                             bool relay) {
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t id : plan.released()) seqs_.erase(id);
  worker::v1::StepResult result;
  result.set_step_id(plan.step_id());
  BatchInput batch;
  batch.table_begin.push_back(0);
  for (int s = 0; s < plan.seqs_size(); ++s) {
    const worker::v1::SeqStep& seq = plan.seqs(s);
    // Refused like any bad plan: the same on every rank, before any collective.
    if (const std::string error = SeqStepError(seq); !error.empty()) {
      result.set_error(error);
      return result;
    }
    const int32_t first = static_cast<int32_t>(batch.tokens.size());
    for (int i = 0; i < seq.tokens_size(); ++i) {
      batch.tokens.push_back(seq.tokens(i));
      batch.positions.push_back(seq.start_pos() + i);
      batch.seq_index.push_back(s);
    }
    // The rows whose logits come out of the forward pass, sequence by sequence (Sample reads
    // them in this order): every token's for LOGITS_ALL, else the sampled (last) token's.
    if (seq.tokens_size() > 0 && seq.logits() == worker::v1::LOGITS_ALL) {
      for (int i = 0; i < seq.tokens_size(); ++i) batch.logit_rows.push_back(first + i);
    } else if (seq.sample() && seq.tokens_size() > 0) {
      batch.logit_rows.push_back(static_cast<int32_t>(batch.tokens.size()) - 1);
    }
    batch.block_tables.insert(batch.block_tables.end(), seq.block_table().begin(),
                              seq.block_table().end());
    batch.table_begin.push_back(static_cast<int32_t>(batch.block_tables.size()));
  }
  if (batch.tokens.empty()) return result;

  // ForwardBatch validates the plan against the model and the cache before any collective, the
  // same way on every rank, so a bad plan fails everywhere and leaves no rank waiting.
  absl::StatusOr<Tensor> logits = graphs_ != nullptr && graphs_->Accepts(batch)
                                      ? graphs_->Run(batch)
                                      : model_.ForwardBatch(batch, cache_);
  if (!logits.ok()) {
    if (absl::IsInvalidArgument(logits.status()) || absl::IsOutOfRange(logits.status())) {
      result.set_error(std::string(logits.status().message()));
      return result;
    }
    return logits.status();
  }
  for (int s = 0; s < plan.seqs_size(); ++s) Observe(plan.seqs(s));

  const ParallelContext& par = model_.parallel();
  const int root = model_.LastStageRoot();
  if (par.shard.last_stage) {
    SHARDLM_ASSIGN_OR_RETURN(result, Sample(plan, *logits));
    SHARDLM_RETURN_IF_ERROR(FailNonFiniteRows(plan, *logits, result));
  }
  const auto elapsed_ms = [&] {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
        .count();
  };
  if (!relay) {  // pipelined: the caller sends the last stage's answer on
    if (par.shard.rank != root) return worker::v1::StepResult();
    result.set_compute_ms(elapsed_ms());
    return result;
  }
  // The answers travel from the last stage's root to rank 0, which talks to the coordinator.
  if (root != 0) {
    if (par.shard.rank == root) {
      SHARDLM_RETURN_IF_ERROR(SendFrame(*par.world, result.SerializeAsString(), 0));
    } else if (par.shard.rank == 0) {
      std::string bytes;
      SHARDLM_RETURN_IF_ERROR(RecvFrame(*par.world, bytes, root));
      if (!result.ParseFromString(bytes)) return absl::InternalError("bad StepResult from the last stage");
    }
  }
  if (par.shard.rank != 0) return worker::v1::StepResult();
  result.set_compute_ms(elapsed_ms());
  return result;
}

absl::StatusOr<worker::v1::StepResult> WorkerEngine::StageStep(const worker::v1::StepPlan& plan) {
  ClearFailedBackendOp(model_.backend());
  try {
    return RunStep(plan, /*relay=*/false);
  } catch (const std::exception& e) {
    return absl::InternalError(
        DescribeFailure(model_.parallel().shard.rank, FailedBackendOp(model_.backend()), e));
  } catch (...) {
    return absl::InternalError(
        DescribeFailure(model_.parallel().shard.rank, FailedBackendOp(model_.backend()),
                        std::runtime_error("an exception that is not a std::exception")));
  }
}

absl::StatusOr<worker::v1::StepResult> WorkerEngine::Sample(const worker::v1::StepPlan& plan,
                                                            const Tensor& local_logits) {
  worker::v1::StepResult result;
  result.set_step_id(plan.step_id());
  // How each sampled row is answered. With one TP rank, plain sampled rows (no penalties, no
  // logprobs) are drawn by the backend (on the GPU with CUDA): only the ids come back. Greedy
  // rows take the distributed argmax. The rest need the whole vocabulary row on the host.
  enum class Draw { kArgmax, kBackend, kHost };
  struct Answer {
    const worker::v1::SeqStep* seq = nullptr;
    int32_t first_row = 0, rows = 0;  // its rows of local_logits (see Step)
    bool samples = false;             // its last row chooses a token
    Draw draw = Draw::kArgmax;
    size_t index = 0;                 // into the argmax or backend rows
    SamplerParams params;
  };
  const bool backend_sampling = model_.parallel().tp->size() == 1;
  const int32_t local_rows = local_logits.rank() == 2 ? static_cast<int32_t>(local_logits.dim(0)) : 0;
  std::vector<Answer> answers;
  std::vector<int32_t> argmax_rows, backend_rows, gather_rows;
  std::vector<SampleRowParams> backend_params;
  // Rows gathered whole (host sampling, or logits asked for), each once: row -> its place.
  std::vector<int32_t> gathered_at(static_cast<size_t>(local_rows), -1);
  auto gather = [&](int32_t row) {
    if (gathered_at[row] >= 0) return;
    gathered_at[row] = static_cast<int32_t>(gather_rows.size());
    gather_rows.push_back(row);
  };
  int32_t next_row = 0;
  for (const worker::v1::SeqStep& seq : plan.seqs()) {
    const bool all = seq.logits() == worker::v1::LOGITS_ALL;
    if (seq.tokens_size() == 0 || (!seq.sample() && !all)) continue;
    Answer a;
    a.seq = &seq;
    a.first_row = next_row;
    a.rows = all ? seq.tokens_size() : 1;
    next_row += a.rows;
    if (a.first_row + a.rows > local_rows) {
      return absl::InternalError(absl::StrCat("step ", plan.step_id(), ": ", local_rows,
                                              " logits rows for more answers"));
    }
    if (seq.logits() != worker::v1::LOGITS_NONE) {
      for (int32_t r = a.first_row; r < a.first_row + a.rows; ++r) gather(r);
    }
    if (seq.sample()) {
      const int32_t row = a.first_row + a.rows - 1;
      a.samples = true;
      // Observe has made every sequence's state: its fallback seed is there.
      a.params = SamplerParamsFrom(seq.sampling(), seq.logprobs(), seqs_[seq.seq_id()].seed);
      const SamplerParams& p = a.params;
      if (p.argmax_only()) {
        a.draw = Draw::kArgmax;
        a.index = argmax_rows.size();
        argmax_rows.push_back(row);
      } else if (backend_sampling && !p.has_penalties() && p.logprobs == 0) {
        SampleRowParams r;
        r.temperature = p.temperature;
        r.top_k = p.top_k;
        r.top_p = p.top_p;
        r.min_p = p.min_p;
        r.uniform = UniformAt(p.seed, seq.start_pos() + seq.tokens_size());
        a.draw = Draw::kBackend;
        a.index = backend_rows.size();
        backend_rows.push_back(row);
        backend_params.push_back(r);
      } else {
        a.draw = Draw::kHost;
        gather(row);
      }
    }
    answers.push_back(a);
  }
  // `rows` of local_logits: the tensor itself when they are all of its rows in order (every
  // decode step), else a copy of just those.
  auto select = [&](const std::vector<int32_t>& rows) {
    bool every = static_cast<int32_t>(rows.size()) == local_rows;
    for (size_t i = 0; every && i < rows.size(); ++i) every = rows[i] == static_cast<int32_t>(i);
    return every ? local_logits : model_.SelectRows(local_logits, rows);
  };
  // Collectives over the last stage's TP ranks, the same on each of them (the lists above come
  // from the plan alone).
  std::vector<int32_t> argmax;
  if (!argmax_rows.empty()) {
    SHARDLM_ASSIGN_OR_RETURN(argmax, model_.LastStageArgmax(select(argmax_rows)));
  }
  std::vector<float> full;
  if (!gather_rows.empty()) {
    SHARDLM_ASSIGN_OR_RETURN(full, model_.LastStageGather(select(gather_rows)));
  }
  std::vector<int32_t> drawn(backend_rows.size());
  if (!backend_rows.empty()) {
    model_.backend().Sample(select(backend_rows), backend_params, drawn);
  }
  if (model_.parallel().shard.rank != model_.LastStageRoot()) return result;
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  auto full_row = [&](int32_t row) {
    return std::span<float>(full.data() + static_cast<size_t>(gathered_at[row]) * vocab, vocab);
  };
  for (const Answer& a : answers) {
    const worker::v1::SeqStep& seq = *a.seq;
    worker::v1::SeqResult* out = result.add_results();
    out->set_seq_id(seq.seq_id());
    // Before the host sampler applies its penalties to the same row in place.
    if (seq.logits() != worker::v1::LOGITS_NONE) {
      out->mutable_logits()->Reserve(static_cast<int>(a.rows * vocab));
      for (int32_t r = a.first_row; r < a.first_row + a.rows; ++r) {
        const std::span<float> row = full_row(r);
        out->mutable_logits()->Add(row.begin(), row.end());
      }
    }
    if (!a.samples) continue;
    switch (a.draw) {
      case Draw::kArgmax:
        out->set_token(argmax[a.index]);
        break;
      case Draw::kBackend:
        out->set_token(drawn[a.index]);
        break;
      case Draw::kHost: {
        const SamplerParams& p = a.params;
        const uint64_t position = seq.start_pos() + seq.tokens_size();
        const Sampled s = shardlm::Sample(full_row(a.first_row + a.rows - 1), p,
                                          seqs_[seq.seq_id()].history, position);
        out->set_token(s.token);
        if (p.logprobs > 0) {
          shardlm::v1::Logprobs* lp = out->mutable_logprobs();
          lp->mutable_chosen()->set_id(s.token);
          lp->mutable_chosen()->set_logprob(s.logprob);
          for (const auto& [id, logprob] : s.top) {
            shardlm::v1::TokenLogprob* t = lp->add_top();
            t->set_id(id);
            t->set_logprob(logprob);
          }
        }
        break;
      }
    }
  }
  return result;
}


absl::StatusOr<worker::v1::StepResult> WorkerEngine::Step(const worker::v1::StepPlan& plan) {
  if (agreement_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("the step agreement could not be set up: ", agreement_status_.message()));
  }
  const int rank = model_.parallel().shard.rank;
  StepAgreement::Verdict verdict = StepAgreement::kOk;
  std::string failure;
  absl::StatusOr<worker::v1::StepResult> result;
  ClearFailedBackendOp(model_.backend());
  try {
    result = RunStep(plan, /*relay=*/true);
    if (!result.ok()) {
      // A communication failed: this rank's communicators are no longer in step with its peers.
      verdict = StepAgreement::kFatal;
      failure = absl::StrCat("rank ", rank, " failed: ", result.status().message());
    }
  } catch (const std::exception& e) {
    verdict = StepAgreement::kFailed;
    failure = DescribeFailure(rank, FailedBackendOp(model_.backend()), e);
  } catch (...) {
    verdict = StepAgreement::kFailed;
    failure = DescribeFailure(rank, FailedBackendOp(model_.backend()),
                              std::runtime_error("an exception that is not a std::exception"));
  }
  if (verdict == StepAgreement::kFailed) {
    // This rank can run the next step only if its device still works and nothing it queued
    // waits for a peer: a sticky CUDA error fails here, and a collective it queued before the
    // failure that a peer never joined keeps it here (then a failed peer's deadline ends the job).
    try {
      model_.backend().Synchronize();
    } catch (const std::exception& e) {
      verdict = StepAgreement::kFatal;
      absl::StrAppend(&failure, "; then its device failed: ", e.what());
    } catch (...) {
      verdict = StepAgreement::kFatal;
      absl::StrAppend(&failure, "; then its device failed");
    }
  }
  absl::StatusOr<StepAgreement::Outcome> agreed =
      agreement_->Agree(verdict, failure, agreement_timeout_);
  if (!agreed.ok()) {
    if (verdict == StepAgreement::kOk) return agreed.status();
    return absl::Status(agreed.status().code(),
                        absl::StrCat(failure, "; ", agreed.status().message()));
  }
  if (agreed->ok()) return result;
  std::string what = agreed->message;
  if (agreed->failed_ranks() > 1) {
    absl::StrAppend(&what, " (", agreed->failed_ranks(), " ranks failed)");
  }
  if (agreed->fatal()) return absl::AbortedError(absl::StrCat(what, "; the job cannot go on"));
  if (model_.parallel().plan.pp > 1) {
    // A stage that failed before receiving its input leaves the previous stage's message
    // unmatched, and the next step would receive it: the ranks cannot be brought back in step.
    return absl::AbortedError(absl::StrCat(
        what, "; the job cannot go on: with pipeline stages, messages between them may be left "
              "unmatched"));
  }
  // Every rank came and none is broken: every TP collective of the step was joined by all ranks
  // or by none, so the next step starts in step. The coordinator ends this step's requests.
  worker::v1::StepResult failed;
  failed.set_step_id(plan.step_id());
  if (rank == 0) failed.set_error(what);
  return failed;
}

absl::Status WorkerEngine::FailNonFiniteRows(const worker::v1::StepPlan& plan,
                                             const Tensor& local_logits,
                                             worker::v1::StepResult& result) {
  if (local_logits.rank() != 2 || local_logits.dim(0) == 0 || local_logits.dim(1) == 0) {
    return absl::OkStatus();
  }
  Backend& backend = model_.backend();
  const int64_t rows = local_logits.dim(0);
  const int64_t width = local_logits.dim(1);
  // Each row's mean through a GEMV with weights 0.5 / width, on the backend that holds the
  // logits: the mean is not finite exactly when the row holds a NaN or an infinity (finite
  // values cannot overflow it), and only `rows` floats come back to the host.
  if (!row_mean_weights_.defined() || row_mean_weights_.dim(1) != width) {
    Tensor host = Tensor::Empty({1, width}, DType::kF32);
    std::fill(host.data<float>(), host.data<float>() + width, 0.5f / static_cast<float>(width));
    row_mean_weights_ = backend.PrepareWeight(host);
  }
  Tensor means = backend.AllocateUninitialized({rows, 1});
  backend.Linear(local_logits, row_mean_weights_, nullptr, means);
  const Tensor host_means = backend.ToHost(means);
  std::vector<float> sums(host_means.data<float>(), host_means.data<float>() + rows);
  // A row is bad when any TP rank's share of the vocabulary is: the sum is then not finite.
  const ParallelContext& par = model_.parallel();
  if (par.tp->size() > 1) SHARDLM_RETURN_IF_ERROR(par.tp->AllReduceSum(sums.data(), sums.size()));
  if (par.shard.rank != model_.LastStageRoot()) return absl::OkStatus();

  // The rows of each sequence, in plan order, as Step lays them out: every token's with
  // LOGITS_ALL, else the sampled token's.
  std::vector<uint64_t> bad;
  int64_t row = 0;
  for (const worker::v1::SeqStep& seq : plan.seqs()) {
    const int64_t n = seq.tokens_size() == 0                      ? 0
                      : seq.logits() == worker::v1::LOGITS_ALL ? seq.tokens_size()
                      : seq.sample()                            ? 1
                                                                : 0;
    for (int64_t r = row; r < row + n && r < rows; ++r) {
      if (!std::isfinite(sums[static_cast<size_t>(r)])) {
        bad.push_back(seq.seq_id());
        break;
      }
    }
    row += n;
  }
  if (row != rows) {
    return absl::InternalError(absl::StrCat("step ", plan.step_id(), ": ", rows,
                                            " logits rows for ", row, " rows of sequences"));
  }
  for (worker::v1::SeqResult& r : *result.mutable_results()) {
    if (std::find(bad.begin(), bad.end(), r.seq_id()) == bad.end()) continue;
    r.clear_token();
    r.clear_logprobs();
    r.set_error(absl::StrCat("its logits are not finite (NaN or Inf), found on rank ",
                             par.shard.rank, "; no token can be sampled"));
  }
  return absl::OkStatus();
}

}  // namespace shardlm
