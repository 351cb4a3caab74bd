#include "runtime/engine.h"

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "parallel/collectives.h"

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

WorkerEngine::WorkerEngine(LlamaModel& model, PagedKvCache cache, EngineOptions options)
    : model_(model), cache_(std::move(cache)) {
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
  if (s.start_pos() == 0) {
    // A new sequence, or one recomputed after preemption: its history starts again.
    const uint64_t seed = st.seed != 0 ? st.seed : std::random_device{}() | 1ull << 40;
    st = SeqState{};
    st.seed = seed;
  }
  st.prompt_len = s.prompt_len();
  for (int i = 0; i < s.tokens_size(); ++i) {
    const int32_t id = s.tokens(i);
    st.history.seen.insert(id);
    if (s.start_pos() + i >= s.prompt_len()) ++st.history.generated[id];
  }
  st.next_pos = s.start_pos() + s.tokens_size();
}

absl::StatusOr<worker::v1::StepResult> WorkerEngine::Step(const worker::v1::StepPlan& plan) {
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t id : plan.released()) seqs_.erase(id);
  BatchInput batch;
  batch.table_begin.push_back(0);
  for (int s = 0; s < plan.seqs_size(); ++s) {
    const worker::v1::SeqStep& seq = plan.seqs(s);
    for (int i = 0; i < seq.tokens_size(); ++i) {
      batch.tokens.push_back(seq.tokens(i));
      batch.positions.push_back(seq.start_pos() + i);
      batch.seq_index.push_back(s);
    }
    if (seq.sample() && seq.tokens_size() > 0) {
      batch.logit_rows.push_back(static_cast<int32_t>(batch.tokens.size()) - 1);
    }
    batch.block_tables.insert(batch.block_tables.end(), seq.block_table().begin(),
                              seq.block_table().end());
    batch.table_begin.push_back(static_cast<int32_t>(batch.block_tables.size()));
  }
  worker::v1::StepResult result;
  result.set_step_id(plan.step_id());
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
  result.set_compute_ms(
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  return result;
}

absl::StatusOr<worker::v1::StepResult> WorkerEngine::Sample(const worker::v1::StepPlan& plan,
                                                            const Tensor& local_logits) {
  worker::v1::StepResult result;
  result.set_step_id(plan.step_id());
  // Which sampled rows need the whole vocabulary row (sampling, penalties, logprobs), and which
  // the distributed argmax alone answers.
  // With one TP rank, plain sampled rows (no penalties, no logprobs) are drawn by the backend
  // (on the GPU with CUDA): only the ids come back. The rest need the whole row on the host.
  const bool backend_sampling = model_.parallel().tp->size() == 1;
  std::vector<const worker::v1::SeqStep*> sampled;
  std::vector<int32_t> full_rows, backend_rows;
  std::vector<SampleRowParams> backend_params;
  for (const worker::v1::SeqStep& seq : plan.seqs()) {
    if (!seq.sample() || seq.tokens_size() == 0) continue;
    // Observe has made every sequence's state: its fallback seed is there.
    const SamplerParams p =
        SamplerParamsFrom(seq.sampling(), seq.logprobs(), seqs_[seq.seq_id()].seed);
    const int32_t row = static_cast<int32_t>(sampled.size());
    if (backend_sampling && !p.argmax_only() && !p.has_penalties() && p.logprobs == 0) {
      SampleRowParams r;
      r.temperature = p.temperature;
      r.top_k = p.top_k;
      r.top_p = p.top_p;
      r.min_p = p.min_p;
      r.uniform = UniformAt(p.seed, seq.start_pos() + seq.tokens_size());
      backend_rows.push_back(row);
      backend_params.push_back(r);
    } else if (!p.argmax_only()) {
      full_rows.push_back(row);
    }
    sampled.push_back(&seq);
  }
  // Collectives over the last stage's TP ranks, the same on each of them.
  SHARDLM_ASSIGN_OR_RETURN(std::vector<int32_t> argmax, model_.LastStageArgmax(local_logits));
  std::vector<float> full;
  if (!full_rows.empty()) {
    SHARDLM_ASSIGN_OR_RETURN(full, model_.LastStageGather(model_.SelectRows(local_logits, full_rows)));
  }
  if (!backend_rows.empty()) {
    std::vector<int32_t> ids(backend_rows.size());
    model_.backend().Sample(model_.SelectRows(local_logits, backend_rows), backend_params, ids);
    // Those rows' answers go where the argmax would have.
    for (size_t i = 0; i < backend_rows.size(); ++i) argmax[backend_rows[i]] = ids[i];
  }
  if (model_.parallel().shard.rank != model_.LastStageRoot()) return result;
  const int64_t vocab = model_.config().vocab_size;
  size_t next_full = 0;
  for (size_t r = 0; r < sampled.size(); ++r) {
    const worker::v1::SeqStep& seq = *sampled[r];
    worker::v1::SeqResult* out = result.add_results();
    out->set_seq_id(seq.seq_id());
    if (next_full < full_rows.size() && full_rows[next_full] == static_cast<int32_t>(r)) {
      const SeqState& st = seqs_[seq.seq_id()];
      const SamplerParams p = SamplerParamsFrom(seq.sampling(), seq.logprobs(), st.seed);
      std::span<float> row(full.data() + next_full * vocab, static_cast<size_t>(vocab));
      const uint64_t position = seq.start_pos() + seq.tokens_size();
      const Sampled s = shardlm::Sample(row, p, st.history, position);
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
      ++next_full;
    } else {
      out->set_token(argmax[r]);
    }
  }
  return result;
}

}  // namespace shardlm
