// Tensor-parallel building blocks, written once against the Backend and Communicator interfaces
// (Megatron-LM's split): a column-parallel linear needs no communication, a row-parallel linear
// ends with one all-reduce, the embedding and the LM head are split by vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/shard_plan.h"

namespace shardlm {

// Where this rank sits: the plan, its own shard, and its groups.
struct ParallelContext {
  ShardPlan plan;
  RankShard shard;
  std::shared_ptr<Communicator> world;  // every rank (host memory)
  std::shared_ptr<Communicator> tp;     // the TP ranks of this rank's stage (host memory)
  // Optional device-memory twins of `world` and `tp` (NCCL, for a GPU backend): activations are
  // all-reduced / sent between stages on the device through these. Without them (CPU, or several
  // ranks sharing one GPU) device tensors go through host memory and `world` / `tp`.
  std::shared_ptr<Communicator> world_device;
  std::shared_ptr<Communicator> tp_device;

  // One rank holding everything (`plan` must be tp = pp = 1): local communicators, no MPI.
  static ParallelContext Single(ShardPlan plan);
  // This rank's context in `world`: checks that world->size() == tp * pp (the error names both
  // numbers, before any collective, so that every rank fails at once) and splits the TP group.
  static absl::StatusOr<ParallelContext> Create(ShardPlan plan, std::shared_ptr<Communicator> world);

  bool distributed() const { return plan.world_size() > 1; }
  // Whether every collective a forward step makes stays on the device (no host round trip), so
  // that the step can be recorded as a CUDA graph: one stage, and TP with a device communicator.
  bool device_resident() const { return plan.pp == 1 && (plan.tp == 1 || tp_device != nullptr); }
};

// All-reduce (sum) of a backend tensor over the TP group: on the device through ctx.tp_device
// when there is one, else through host memory and ctx.tp.
absl::Status AllReduce(Backend& backend, const ParallelContext& ctx, Tensor& t);

// Expert parallelism's exchanges of backend f32 matrices [*, d] over the TP group (on the device
// through ctx.tp_device when there is one, else through host memory and ctx.tp):
// - AllToAllRows: send_rows[p] rows of `send`, packed in TP rank order, go to TP rank p; `recv`
//   gets recv_rows[p] rows from each, packed the same way (it may have more rows than that);
// - AllGatherRows: out [tp * in.rows, d] = every TP rank's `in`, in TP rank order.
absl::Status AllToAllRows(Backend& backend, const ParallelContext& ctx, const Tensor& send,
                          std::span<const int64_t> send_rows, Tensor& recv,
                          std::span<const int64_t> recv_rows);
absl::Status AllGatherRows(Backend& backend, const ParallelContext& ctx, const Tensor& in,
                           Tensor& out);

// y[n, out_local] = x[n, in] W^T (+ b): W holds this rank's output rows [out_local, in].
struct ColumnParallelLinear {
  Tensor weight;
  std::optional<Tensor> bias;  // this rank's rows of the bias
  void Apply(Backend& backend, const Tensor& x, Tensor& y) const;
};

// y[n, out] = sum over TP ranks of x_r[n, in_local] W_r^T, + b once: W holds this rank's input
// columns [out, in_local]. The sum is one all-reduce over `tp`.
struct RowParallelLinear {
  Tensor weight;
  std::optional<Tensor> bias;  // held by TP rank 0 only, so that it is added once
  absl::Status Apply(Backend& backend, const ParallelContext& ctx, const Tensor& x,
                     Tensor& y) const;
};

// y[n, d] = table[ids]: this rank holds rows `vocab` of the table; ids of other ranks give zero
// rows here and the all-reduce fills them in.
struct VocabParallelEmbedding {
  Tensor table;  // [vocab.size(), d]
  Range vocab;
  // The ids as rows of this rank's table: id - vocab.begin, or -1 for other ranks' ids.
  std::vector<int32_t> LocalIds(std::span<const int32_t> ids) const;
  // local_ids: LocalIds(ids) as an index tensor in backend memory.
  absl::Status Apply(Backend& backend, const ParallelContext& ctx, const Tensor& local_ids,
                     Tensor& y) const;
};

// Logits of this rank's vocabulary rows; the argmax over the whole vocabulary is found without
// gathering the logits (each rank sends its best (value, id) per row).
struct ParallelLMHead {
  Tensor weight;  // [vocab.size(), d]
  Range vocab;
  int64_t full_vocab = 0;
  std::vector<Range> all_vocab;  // every TP rank's range, in TP rank order

  // local_logits [n, vocab.size()].
  void Apply(Backend& backend, const Tensor& x, Tensor& local_logits) const;
  // The global argmax of each row (first id on ties, as on one rank); the same on every TP rank.
  absl::StatusOr<std::vector<int32_t>> Argmax(Backend& backend, Communicator& tp,
                                              const Tensor& local_logits) const;
  // The full logits [n, full_vocab] (host, row-major) on every TP rank: an all-gather.
  absl::StatusOr<std::vector<float>> Gather(Backend& backend, Communicator& tp,
                                            const Tensor& local_logits) const;
};

}  // namespace shardlm
