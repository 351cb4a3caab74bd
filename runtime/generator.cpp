#include "runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace shardlm {

namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The one sequence of a runner's plans.
constexpr uint64_t kSeqId = 1;

EngineOptions EngineOptionsFor(const SequenceOptions& options, int64_t capacity_blocks) {
  EngineOptions e;
  e.cuda_graphs = options.cuda_graphs;
  // The block after the sequence's own: nobody reads it.
  e.pad_block = static_cast<int32_t>(capacity_blocks);
  return e;
}

int64_t BlocksFor(int64_t positions, int block_size) {
  return (positions + block_size - 1) / block_size;
}

}  // namespace

shardlm::v1::SamplingParams GreedySampling() {
  shardlm::v1::SamplingParams p;
  p.set_temperature(0.0f);
  return p;
}

SequenceRunner::SequenceRunner(LlamaModel& model, int64_t capacity, SequenceOptions options)
    : model_(model), options_(std::move(options)), capacity_(std::max<int64_t>(capacity, 0)) {
  options_.block_size = std::max(options_.block_size, 1);
  const int64_t blocks = BlocksFor(capacity_, options_.block_size);
  engine_ = std::make_unique<WorkerEngine>(
      model_, model_.NewPagedCache(options_.block_size, blocks + 1),
      EngineOptionsFor(options_, blocks));
}

absl::StatusOr<SequenceStep> SequenceRunner::Step(std::span<const int32_t> tokens, bool sample,
                                                  worker::v1::LogitsRows logits) {
  // Checked the same way on every rank, before any collective.
  if (tokens.empty()) return absl::InvalidArgumentError("SequenceRunner::Step: no tokens");
  const int64_t end = position_ + static_cast<int64_t>(tokens.size());
  if (end > capacity_) {
    return absl::OutOfRangeError(absl::StrCat("SequenceRunner::Step: positions [", position_, ", ",
                                              end, ") exceed the sequence's capacity of ",
                                              capacity_, " positions"));
  }
  if (position_ == 0) prompt_len_ = static_cast<int32_t>(tokens.size());

  worker::v1::StepPlan plan;
  plan.set_step_id(step_id_++);
  worker::v1::SeqStep* seq = plan.add_seqs();
  seq->set_seq_id(kSeqId);
  seq->mutable_tokens()->Add(tokens.begin(), tokens.end());
  seq->set_start_pos(static_cast<int32_t>(position_));
  // The blocks of positions [0, end), as the coordinator sends them: block b holds positions
  // [b * block_size, (b + 1) * block_size).
  const int64_t blocks = BlocksFor(end, options_.block_size);
  for (int64_t b = 0; b < blocks; ++b) seq->add_block_table(static_cast<int32_t>(b));
  seq->set_sample(sample);
  seq->set_prompt_len(prompt_len_);
  *seq->mutable_sampling() = options_.sampling;
  seq->set_logits(logits);
  SHARDLM_ASSIGN_OR_RETURN(worker::v1::StepResult result, engine_->Step(plan));

  // World rank 0 holds the answer; it tells every rank the token and whether the step failed,
  // so that all of them go on (or stop) together.
  Communicator& world = *model_.parallel().world;
  const int64_t vocab = model_.config().vocab_size;
  const int64_t rows = logits == worker::v1::LOGITS_ALL       ? static_cast<int64_t>(tokens.size())
                       : logits == worker::v1::LOGITS_SAMPLED ? 1
                                                               : 0;
  SequenceStep out;
  // A refused plan or a failed step is in result.error() (on every rank, or on rank 0 alone);
  // a sequence whose logits were not finite, in its own result.
  absl::Status failure = result.error().empty()
                             ? absl::OkStatus()
                             : absl::InvalidArgumentError(result.error());
  if (world.rank() == 0 && failure.ok()) {
    const bool answered = result.results_size() == 1 && result.results(0).seq_id() == kSeqId;
    if (!answered && (sample || rows > 0)) {
      failure = absl::InternalError(absl::StrCat("step ", plan.step_id(), ": ",
                                                 result.results_size(),
                                                 " answers, expected one for sequence ", kSeqId));
    } else if (answered) {
      const worker::v1::SeqResult& r = result.results(0);
      if (!r.error().empty()) {
        failure = absl::InternalError(absl::StrCat("step ", plan.step_id(), ": ", r.error()));
      } else if (r.logits_size() != rows * vocab) {
        failure = absl::InternalError(absl::StrCat("step ", plan.step_id(), ": ",
                                                   r.logits_size(), " logits, expected ", rows,
                                                   " rows of ", vocab));
      }
      if (sample) out.token = r.token();
      out.logits.assign(r.logits().begin(), r.logits().end());
    }
  }
  int32_t answer[2] = {out.token, static_cast<int32_t>(failure.code())};
  if (world.size() > 1) {
    SHARDLM_RETURN_IF_ERROR(world.Broadcast(answer, sizeof(answer), 0));
  }
  if (answer[1] != static_cast<int32_t>(absl::StatusCode::kOk)) {
    if (!failure.ok()) return failure;
    return absl::Status(static_cast<absl::StatusCode>(answer[1]),
                        "the step failed on world rank 0 (see its message)");
  }
  out.token = sample ? answer[0] : -1;
  position_ = end;
  return out;
}

absl::Status ValidateGenerateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                                     int64_t max_new_tokens) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: empty, expected at least one id");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt id ", prompt[i], " at index ", i, " is out of range: expected 0 <= id < vocab_size = ",
                       config.vocab_size));
    }
  }
  if (max_new_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: expected a positive integer, got ", max_new_tokens));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_new_tokens;
  if (config.max_position_embeddings > 0 && total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " ids) + max_new_tokens (", max_new_tokens, ") = ", total,
        " exceeds the context length max_position_embeddings = ", config.max_position_embeddings));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> Generate(LlamaModel& model, std::span<const int32_t> prompt,
                                        const GenerateOptions& options) {
  const ModelConfig& config = model.config();
  SHARDLM_RETURN_IF_ERROR(ValidateGenerateRequest(config, prompt, options.max_new_tokens));
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  // The last generated token is never fed back, so the cache needs one position fewer.
  SequenceRunner sequence(model, n_prompt + options.max_new_tokens - 1, options.sequence);
  const worker::v1::LogitsRows logits =
      options.keep_logits ? worker::v1::LOGITS_SAMPLED : worker::v1::LOGITS_NONE;

  GenerateResult result;
  auto take = [&](SequenceStep& step) {
    if (options.keep_logits) {
      result.logits.insert(result.logits.end(), step.logits.begin(), step.logits.end());
    }
    result.tokens.push_back(step.token);
    if (options.on_token) options.on_token(step.token);
    return step.token;
  };
  auto is_eos = [&](int32_t id) {
    if (!options.stop_at_eos) return false;
    if (options.is_eog) return options.is_eog(id);
    return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) !=
           config.eos_token_ids.end();
  };

  auto t0 = std::chrono::steady_clock::now();
  SHARDLM_ASSIGN_OR_RETURN(SequenceStep step, sequence.Step(prompt, /*sample=*/true, logits));
  int32_t next = take(step);
  result.prefill_ms = MsSince(t0);

  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 1; i < options.max_new_tokens && !is_eos(next); ++i) {
    SHARDLM_ASSIGN_OR_RETURN(step, sequence.Step(std::span<const int32_t>(&next, 1),
                                                 /*sample=*/true, logits));
    next = take(step);
  }
  result.decode_ms = MsSince(t0);
  return result;
}

absl::StatusOr<std::vector<float>> PromptLogits(LlamaModel& model,
                                                std::span<const int32_t> tokens,
                                                const SequenceOptions& options) {
  SequenceRunner sequence(model, static_cast<int64_t>(tokens.size()), options);
  SHARDLM_ASSIGN_OR_RETURN(SequenceStep step,
                           sequence.Step(tokens, /*sample=*/false, worker::v1::LOGITS_ALL));
  return std::move(step.logits);
}

}  // namespace shardlm
