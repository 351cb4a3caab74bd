// Continuous batching: which tokens of which sequences run in the next step, under a token
// budget and the KV blocks there are. Plain CPU code with no threads and no gRPC: the engine
// calls it under its lock, the tests drive it directly.
//
// Each step (Schedule):
//  1. every running sequence in decode gets its one token (its last sampled one), oldest first;
//     when no block is free for it, the most recently admitted running sequence is preempted
//     (blocks freed, back to the head of the queue to be recomputed: its prompt becomes the
//     original prompt + the tokens generated so far; prompt_len stays the original);
//  2. running sequences still in prefill get the next chunk of their prompt (chunked prefill),
//     as much as the budget and the free blocks allow; only the chunk that ends the prompt
//     samples;
//  3. queued sequences join in FIFO order while the budget, --max-running and the blocks allow
//     (a sequence joins only when the blocks of its whole prompt are free beyond what running
//     prefills still need, plus one block per running sequence for its decode growth).
// If nothing at all can run (every running sequence is a prefill stalled on blocks), the most
// recently admitted one is preempted until something can. A sequence joins with a fresh seq_id
// each time it is admitted, so the workers see a recomputation as a new sequence; the old id
// goes into `released`, as do the ids of sequences that ended.
//
// Prefix caching (KvBlockManager): when a sequence is admitted (first time, after preemption,
// or after RequeueAll), the leading full blocks of its tokens found in the cache are attached
// to its table and not recomputed: its first SeqStep starts at start_pos = the cached tokens
// and carries them in `history` (the workers' penalties need the whole history). At most
// floor((len - 1) / block_size) blocks hit, so the last token is always run and has logits.
// The blocks a step filled are registered once its result is back (Complete). Released blocks
// stay cached until evicted, so a preempted sequence usually finds its own prefix again.
#pragma once

#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/kv_block_manager.h"
#include "shardlm/v1/worker.pb.h"

namespace shardlm::coordinator {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;
  int32_t max_running = 64;
  int32_t max_queue = 256;
  // Micro-batches (pipeline stages): running sequences are split into this many groups of about
  // equal size, and each step runs one group, in turn, so that with several steps in flight
  // each pipeline stage works on a different group.
  int32_t micro_batches = 1;
};

class Scheduler {
 public:
  using Key = uint64_t;  // the engine's id of a request

  // `blocks` must outlive the scheduler; Reset() it together with the scheduler.
  Scheduler(SchedulerOptions options, KvBlockManager* blocks);
  ~Scheduler();

  // Queues a request. RESOURCE_EXHAUSTED when the queue is full or when the prompt alone needs
  // more KV blocks than exist (the message names the numbers); FAILED_PRECONDITION when there
  // are no blocks at all (no workers); ALREADY_EXISTS for a key in use.
  // At most `max_new_tokens` tokens are sampled for it: no step is planned past them.
  absl::Status Add(Key key, std::vector<int32_t> prompt, const v1::SamplingParams& sampling,
                   int32_t logprobs, int32_t max_new_tokens = 1 << 30);
  // Drops a request wherever it is (finished, cancelled, failed) and frees its blocks; the
  // workers are told in the next plan's `released`. False when the key is unknown.
  bool Remove(Key key);
  // Drops every request and pending release (the workers are gone). The block manager is reset
  // separately.
  void Reset();
  // The worker job is gone but its requests are kept for the next one: every running sequence
  // goes back to the queue as a preempted one does (recomputed from position 0 with the prompt
  // plus what it generated so far, prompt_len unchanged, a fresh seq_id when admitted again),
  // running ones first in admission order, then the queued ones in their order. Their block
  // tables are dropped without freeing (the block manager is reset separately, for the next
  // job); no seq_id is released, since the job that knew them is gone. Returns how many were
  // running.
  int32_t RequeueAll();

  struct Step {
    worker::v1::StepPlan plan;
    std::vector<Key> admitted;   // joined the batch in this step (first time or after preemption)
    std::vector<Key> preempted;  // sent back to the queue in this step
    // Requests dropped because they can never fit (their prompt + generated tokens need more
    // blocks than exist); RESOURCE_EXHAUSTED.
    std::vector<std::pair<Key, absl::Status>> failed;
    // Prefix cache, over this step's admissions: tokens looked up (each admitted sequence's
    // whole length) and tokens found cached (skipped). Both 0 with prefix caching off.
    int64_t prefix_query_tokens = 0;
    int64_t prefix_hit_tokens = 0;
  };
  // Plans the next step (step_id counts from 1), of the next micro-batch in turn with something
  // to run. It may be planned while earlier steps are in flight (their results not Complete-d):
  // a decode whose input token is still being sampled by one of them then has sampled_input
  // set (at most one such step per sequence), and the workers run their own sample. The plan
  // has no seqs when no request is running or queued, or when everything runnable waits for
  // steps in flight. A step that carries decodes takes at most `prefill_budget` tokens of
  // prefill chunks and admissions (at least 1, so that prefills progress), within
  // max_batch_tokens; a step with no decode takes up to max_batch_tokens (step_budget.h).
  //
  // Plans are deltas (worker.proto): a sequence's first SeqStep of an admission carries its
  // whole state, later ones `continues` with only the blocks appended since.
  static constexpr int64_t kNoPrefillBudget = std::numeric_limits<int64_t>::max();
  Step Schedule(int64_t prefill_budget = kNoPrefillBudget);

  struct Sampled {
    Key key;
    int32_t token;
    const v1::Logprobs* logprobs;  // into the StepResult; null when the worker sent none
  };
  struct Outcome {
    std::vector<Sampled> sampled;  // in plan order
    std::vector<Key> missing;      // asked to sample but the result has no token for them
    // Failed on the workers alone (SeqResult.error: their logits were not finite): no token.
    std::vector<std::pair<Key, std::string>> failed;
  };
  // Applies the StepResult of `plan`: the blocks it filled are registered in the prefix cache,
  // each sampled token is appended to its sequence (the next step runs it); a sequence whose
  // result carries an error gets no token. Sequences removed since the plan was made are
  // skipped.
  // Results must come in the order the plans were made.
  Outcome Complete(const worker::v1::StepPlan& plan, const worker::v1::StepResult& result);
  // A planned step that failed as a whole (StepResult.error): no result for any of its
  // sequences (the engine ends their requests).
  void Dropped(const worker::v1::StepPlan& plan);
  // Steps planned whose result has not been Complete-d or Dropped.
  int32_t steps_in_flight() const { return steps_in_flight_; }

  // The requests that have a seq in `plan` (and still exist).
  std::vector<Key> RequestsIn(const worker::v1::StepPlan& plan) const;

  bool Contains(Key key) const { return seqs_.count(key) > 0; }
  bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
  // Running sequences in decode: the decodes of the next step, unless it preempts.
  int32_t decoding() const;
  int32_t running() const { return static_cast<int32_t>(running_.size()); }
  int32_t waiting() const { return static_cast<int32_t>(waiting_.size()); }
  // Tokens (prompt + generated) and positions in the KV cache of a request, for tests.
  const std::vector<int32_t>* TokensOf(Key key) const;
  int64_t ComputedOf(Key key) const;
  // The block table of a request (empty while it waits), for tests.
  std::vector<int32_t> BlocksOf(Key key) const;

 private:
  struct Sequence;

  bool IsDecode(const Sequence& s) const;
  void AddSeqStep(Sequence* s, int64_t n, Step* step);
  void Preempt(Sequence* s, Step* step);
  // One pass of phases 1-3 for the sequences of micro-batch `group` into *step.
  void Plan(Step* step, int32_t group, int64_t prefill_budget);
  void Drop(Sequence* s);  // frees blocks, queues the release, forgets the sequence

  SchedulerOptions options_;
  KvBlockManager* blocks_;
  std::unordered_map<Key, std::unique_ptr<Sequence>> seqs_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // in admission order: the back is the newest
  std::unordered_map<uint64_t, Sequence*> by_seq_id_;
  std::vector<uint64_t> released_;
  uint64_t next_seq_id_ = 1;
  uint64_t next_step_id_ = 1;
  int32_t next_group_ = 0;
  int32_t steps_in_flight_ = 0;
};

}  // namespace shardlm::coordinator
