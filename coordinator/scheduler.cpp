#include "coordinator/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace shardlm::coordinator {

struct Scheduler::Sequence {
  Key key = 0;
  uint64_t seq_id = 0;          // this admission's id on the workers; 0 while waiting
  std::vector<int32_t> tokens;  // prompt + generated
  int32_t prompt_len = 0;       // the original prompt's length
  int64_t computed = 0;         // positions [0, computed) are in the KV cache (or in flight)
  std::vector<int32_t> blocks;  // covers [0, computed)
  // Chain hashes of the leading full blocks that are cached (attached from the prefix cache or
  // registered once computed); the next block to register is hashes.size().
  std::vector<KvBlockManager::Hash> hashes;
  // This admission's first SeqStep is not sent yet: it carries the whole state (and the tokens
  // before start_pos); later ones carry deltas.
  bool first_step = false;
  size_t blocks_sent = 0;  // leading entries of `blocks` the workers know (this admission)
  // Steps planned that sample this sequence and whose result is not back: their tokens are not
  // in `tokens` yet, and a decode planned meanwhile runs the workers' last sample (sampled_input).
  int32_t in_flight = 0;
  int64_t max_len = 0;  // tokens at most (prompt + max_new_tokens): nothing is run past it
  int32_t group = 0;    // the micro-batch it runs in
  v1::SamplingParams sampling;
  int32_t logprobs = 0;

  // Tokens known or being sampled, and of those the ones not yet run.
  int64_t expected() const { return static_cast<int64_t>(tokens.size()) + in_flight; }
  int64_t ahead() const { return expected() - computed; }
};

Scheduler::Scheduler(SchedulerOptions options, KvBlockManager* blocks)
    : options_(options), blocks_(blocks) {}

Scheduler::~Scheduler() = default;

absl::Status Scheduler::Add(Key key, std::vector<int32_t> prompt,
                            const v1::SamplingParams& sampling, int32_t logprobs,
                            int32_t max_new_tokens) {
  if (seqs_.count(key) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("scheduler: request key ", key, " in use"));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("scheduler: empty prompt");
  if (blocks_->total() == 0) {
    return absl::FailedPreconditionError("no KV blocks: no workers attached");
  }
  const int64_t need = blocks_->BlocksFor(static_cast<int64_t>(prompt.size()));
  if (need > blocks_->total()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the prompt of ", prompt.size(), " tokens needs ", need, " KV blocks of ",
        blocks_->block_size(), " tokens, but the workers hold only ", blocks_->total(),
        " blocks (", blocks_->total() * blocks_->block_size(), " tokens) in all"));
  }
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("queue full: ", waiting_.size(),
                                                     " requests waiting (--max-queue ",
                                                     options_.max_queue, ")"));
  }
  auto seq = std::make_unique<Sequence>();
  seq->key = key;
  seq->prompt_len = static_cast<int32_t>(prompt.size());
  seq->max_len = seq->prompt_len + std::max<int64_t>(max_new_tokens, 1);
  seq->tokens = std::move(prompt);
  seq->sampling = sampling;
  seq->logprobs = logprobs;
  waiting_.push_back(seq.get());
  seqs_.emplace(key, std::move(seq));
  return absl::OkStatus();
}

void Scheduler::Drop(Sequence* s) {
  blocks_->Free(&s->blocks);
  if (s->seq_id != 0) {
    released_.push_back(s->seq_id);
    by_seq_id_.erase(s->seq_id);
  }
  seqs_.erase(s->key);  // deletes *s
}

bool Scheduler::Remove(Key key) {
  auto it = seqs_.find(key);
  if (it == seqs_.end()) return false;
  Sequence* s = it->second.get();
  if (auto r = std::find(running_.begin(), running_.end(), s); r != running_.end()) {
    running_.erase(r);
  } else if (auto w = std::find(waiting_.begin(), waiting_.end(), s); w != waiting_.end()) {
    waiting_.erase(w);
  }
  Drop(s);
  return true;
}

void Scheduler::Reset() {
  waiting_.clear();
  running_.clear();
  by_seq_id_.clear();
  released_.clear();
  seqs_.clear();
  steps_in_flight_ = 0;
}

int32_t Scheduler::RequeueAll() {
  const int32_t running = static_cast<int32_t>(running_.size());
  // Oldest admission ends up first: push the newest to the front first.
  for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
    Sequence* s = *it;
    s->blocks.clear();
    s->hashes.clear();
    s->seq_id = 0;
    s->computed = 0;
    s->in_flight = 0;  // the job that was computing them is gone
    waiting_.push_front(s);
  }
  running_.clear();
  by_seq_id_.clear();
  released_.clear();
  steps_in_flight_ = 0;
  return running;
}

bool Scheduler::IsDecode(const Sequence& s) const {
  // One position left to run: its token is known, or sampled by a step in flight. At most one
  // decode of a sequence is planned ahead of its results, and none past max_len.
  return s.computed > 0 && s.ahead() == 1 && s.in_flight <= 1 && s.expected() < s.max_len;
}

void Scheduler::AddSeqStep(Sequence* s, int64_t n, Step* step) {
  worker::v1::SeqStep* out = step->plan.add_seqs();
  out->set_seq_id(s->seq_id);
  out->set_start_pos(static_cast<int32_t>(s->computed));
  const int64_t known = static_cast<int64_t>(s->tokens.size());
  if (s->computed >= known) {
    out->set_sampled_input(true);  // n == 1: the token a step in flight samples
  } else {
    out->mutable_tokens()->Add(s->tokens.begin() + s->computed,
                               s->tokens.begin() + s->computed + n);
  }
  if (s->first_step) {
    // The whole state, once per admission. Started past cached blocks: the workers' sampling
    // state (penalties) needs the history.
    out->mutable_history()->Add(s->tokens.begin(), s->tokens.begin() + s->computed);
    out->set_prompt_len(s->prompt_len);
    *out->mutable_sampling() = s->sampling;
    out->set_logprobs(s->logprobs);
    s->first_step = false;
  } else {
    out->set_continues(true);
  }
  out->mutable_block_table()->Add(s->blocks.begin() + static_cast<std::ptrdiff_t>(s->blocks_sent),
                                  s->blocks.end());
  s->blocks_sent = s->blocks.size();
  const bool sample = s->computed + n == s->expected();
  out->set_sample(sample);
  if (sample) ++s->in_flight;
  s->computed += n;
}

void Scheduler::Preempt(Sequence* s, Step* step) {
  blocks_->Free(&s->blocks);  // its cached blocks stay evictable: readmitted, it may hit them
  s->hashes.clear();
  released_.push_back(s->seq_id);
  by_seq_id_.erase(s->seq_id);
  s->seq_id = 0;
  s->computed = 0;  // recomputed from position 0: the prompt plus what it generated so far
  s->in_flight = 0;  // results of its steps in flight are dropped (their seq_id is gone)
  running_.erase(std::find(running_.begin(), running_.end(), s));
  waiting_.push_front(s);
  step->preempted.push_back(s->key);
}

int32_t Scheduler::decoding() const {
  return static_cast<int32_t>(std::count_if(running_.begin(), running_.end(),
                                            [this](const Sequence* s) { return IsDecode(*s); }));
}

void Scheduler::Plan(Step* step, int32_t group, int64_t prefill_budget) {
  const int64_t bs = blocks_->block_size();
  int64_t budget = options_.max_batch_tokens;
  int64_t decodes = 0;

  // 1. Decodes, oldest first; out of blocks: preempt the newest running sequence.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* s = running_[i];
    if (s->group != group || !IsDecode(*s)) {
      ++i;
      continue;
    }
    bool preempted_self = false;
    while (!blocks_->EnsureCapacity(s->computed + 1, &s->blocks)) {
      Sequence* victim = running_.back();
      Preempt(victim, step);
      if (victim == s) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;  // s was the newest left: nothing after it runs
    AddSeqStep(s, 1, step);
    --budget;
    ++decodes;
    ++i;
  }
  // Prefill rides on decodes only up to its budget: that bounds the step's time, hence the
  // decodes' inter-token latency (step_budget.h). With micro-batches, a step of a group with
  // no decode is bounded too while another group decodes: its stages hold that group's steps
  // up for as long as it runs.
  const bool bounded = decodes > 0 || (options_.micro_batches > 1 && decoding() > 0);
  if (bounded) budget = std::min(budget, std::max<int64_t>(prefill_budget, 1));

  // 2. Prefill chunks of running sequences, as far as budget and free blocks go.
  for (Sequence* s : running_) {
    if (budget <= 0) break;
    // Not a decode (planned in phase 1, or waiting for a sample in flight).
    if (s->group != group || s->in_flight > 0) continue;
    const int64_t pending = s->ahead();
    if (pending <= 0) continue;
    const int64_t room =
        (static_cast<int64_t>(s->blocks.size()) + blocks_->free()) * bs - s->computed;
    const int64_t chunk = std::min({pending, budget, room});
    if (chunk <= 0) continue;
    blocks_->EnsureCapacity(s->computed + chunk, &s->blocks);  // fits: chunk <= room
    AddSeqStep(s, chunk, step);
    budget -= chunk;
  }

  // 3. Admissions in FIFO order. Blocks the running prefills still need to finish their prompts
  // are spoken for, and each running sequence keeps one block of headroom for its decode.
  int64_t reserved = 0;
  for (const Sequence* s : running_) {
    reserved += std::max<int64_t>(
        0, blocks_->BlocksFor(static_cast<int64_t>(s->tokens.size())) -
               static_cast<int64_t>(s->blocks.size()));
  }
  // With micro-batches, a group takes new sequences up to its share of all the live ones, so
  // that the groups stay about equal.
  const int32_t groups = std::max(options_.micro_batches, 1);
  const int64_t share =
      (static_cast<int64_t>(running_.size() + waiting_.size()) + groups - 1) / groups;
  int64_t in_group = 0;
  for (const Sequence* s : running_) in_group += s->group == group ? 1 : 0;
  while (!waiting_.empty() && budget > 0 && in_group < share &&
         static_cast<int32_t>(running_.size()) < options_.max_running) {
    Sequence* s = waiting_.front();
    const int64_t len = static_cast<int64_t>(s->tokens.size());
    const int64_t need = blocks_->BlocksFor(len);
    if (need > blocks_->total()) {
      // Only a recomputation can get here (Add refuses such prompts): it grew past the cache.
      waiting_.pop_front();
      step->failed.emplace_back(
          s->key, absl::ResourceExhaustedError(absl::StrCat(
                      "KV cache exhausted: the sequence reached ", len, " tokens (prompt ",
                      s->prompt_len, " + ", len - s->prompt_len, " generated), which needs ",
                      need, " KV blocks of ", bs, " tokens; the workers hold only ",
                      blocks_->total())));
      Drop(s);
      continue;
    }
    // Leading blocks found in the prefix cache are attached, not recomputed; the block of the
    // last token never is, so that the step that ends the prompt has its logits.
    KvBlockManager::Match match = blocks_->Lookup(s->tokens, (len - 1) / bs);
    const int64_t matched = static_cast<int64_t>(match.blocks.size());
    // Attaching an unreferenced cached block takes it out of free() as well.
    if (blocks_->free() - match.evictable - reserved - static_cast<int64_t>(running_.size()) <
        need - matched) {
      break;
    }
    waiting_.pop_front();
    s->seq_id = next_seq_id_++;
    by_seq_id_[s->seq_id] = s;
    running_.push_back(s);
    blocks_->Attach(match.blocks, &s->blocks);
    s->hashes = std::move(match.hashes);
    s->computed = matched * bs;
    s->first_step = true;
    s->blocks_sent = 0;
    s->in_flight = 0;
    s->group = group;
    ++in_group;
    if (blocks_->prefix_caching()) {
      step->prefix_query_tokens += len;
      step->prefix_hit_tokens += s->computed;
    }
    const int64_t chunk = std::min(len - s->computed, budget);
    // Fits: the new blocks are need - matched at most, and that many are free.
    blocks_->EnsureCapacity(s->computed + chunk, &s->blocks);
    AddSeqStep(s, chunk, step);
    budget -= chunk;
    reserved += need - static_cast<int64_t>(s->blocks.size());
    step->admitted.push_back(s->key);
  }
}

Scheduler::Step Scheduler::Schedule(int64_t prefill_budget) {
  Step step;
  const int32_t groups = std::max(options_.micro_batches, 1);
  while (true) {
    // The next micro-batch in turn that has something to run.
    for (int32_t i = 0; i < groups && step.plan.seqs_size() == 0; ++i) {
      const int32_t group = (next_group_ + i) % groups;
      Plan(&step, group, prefill_budget);
      if (step.plan.seqs_size() > 0) next_group_ = (group + 1) % groups;
    }
    if (step.plan.seqs_size() > 0 || running_.empty() || steps_in_flight_ > 0) break;
    // Nothing in flight and every running sequence is a prefill stalled on blocks: make room by
    // recomputing the newest.
    Preempt(running_.back(), &step);
  }
  if (step.plan.seqs_size() > 0) {
    ++steps_in_flight_;
    step.plan.set_step_id(next_step_id_++);
    // Releases ride on the next plan that is sent; an empty plan is not.
    step.plan.mutable_released()->Add(released_.begin(), released_.end());
    released_.clear();
  }
  return step;
}

namespace {
// Positions a SeqStep runs: its tokens, or the one sampled token it was planned before.
int64_t RunLength(const worker::v1::SeqStep& s) {
  return s.sampled_input() ? 1 : s.tokens_size();
}
}  // namespace

void Scheduler::Dropped(const worker::v1::StepPlan& plan) {
  if (steps_in_flight_ > 0) --steps_in_flight_;
  for (const worker::v1::SeqStep& planned : plan.seqs()) {
    auto seq = by_seq_id_.find(planned.seq_id());
    if (planned.sample() && seq != by_seq_id_.end() && seq->second->in_flight > 0) {
      --seq->second->in_flight;
    }
  }
}

Scheduler::Outcome Scheduler::Complete(const worker::v1::StepPlan& plan,
                                       const worker::v1::StepResult& result) {
  if (steps_in_flight_ > 0) --steps_in_flight_;
  std::unordered_map<uint64_t, const worker::v1::SeqResult*> results;
  for (const worker::v1::SeqResult& r : result.results()) results[r.seq_id()] = &r;
  Outcome outcome;
  // The blocks this step filled now hold their K/V: register them in the prefix cache (not for
  // a sequence whose result failed, whose K/V may not be finite).
  for (const worker::v1::SeqStep& planned : plan.seqs()) {
    auto seq = by_seq_id_.find(planned.seq_id());
    if (seq == by_seq_id_.end()) continue;
    if (auto r = results.find(planned.seq_id());
        r != results.end() && !r->second->error().empty()) {
      continue;
    }
    Sequence* s = seq->second;
    // A sampled_input position's token is known now: the step that sampled it came back first.
    blocks_->Register(s->tokens, planned.start_pos() + RunLength(planned), s->blocks, &s->hashes);
  }
  for (const worker::v1::SeqStep& planned : plan.seqs()) {
    if (!planned.sample()) continue;
    auto seq = by_seq_id_.find(planned.seq_id());
    if (seq == by_seq_id_.end()) continue;  // removed (or preempted) since the plan was made
    Sequence* s = seq->second;
    if (s->in_flight > 0) --s->in_flight;
    auto r = results.find(planned.seq_id());
    if (r == results.end()) {
      outcome.missing.push_back(s->key);
      continue;
    }
    if (!r->second->error().empty()) {
      outcome.failed.emplace_back(s->key, r->second->error());
      continue;
    }
    s->tokens.push_back(r->second->token());
    outcome.sampled.push_back(
        {s->key, r->second->token(), r->second->has_logprobs() ? &r->second->logprobs() : nullptr});
  }
  return outcome;
}

std::vector<Scheduler::Key> Scheduler::RequestsIn(const worker::v1::StepPlan& plan) const {
  std::vector<Key> keys;
  for (const worker::v1::SeqStep& planned : plan.seqs()) {
    auto seq = by_seq_id_.find(planned.seq_id());
    if (seq != by_seq_id_.end()) keys.push_back(seq->second->key);
  }
  return keys;
}

const std::vector<int32_t>* Scheduler::TokensOf(Key key) const {
  auto it = seqs_.find(key);
  return it == seqs_.end() ? nullptr : &it->second->tokens;
}

int64_t Scheduler::ComputedOf(Key key) const {
  auto it = seqs_.find(key);
  return it == seqs_.end() ? -1 : it->second->computed;
}

std::vector<int32_t> Scheduler::BlocksOf(Key key) const {
  auto it = seqs_.find(key);
  return it == seqs_.end() ? std::vector<int32_t>{} : it->second->blocks;
}

}  // namespace shardlm::coordinator
