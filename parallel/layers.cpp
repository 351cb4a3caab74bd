#include "parallel/layers.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace shardlm {

ParallelContext ParallelContext::Single(ShardPlan plan) {
  ParallelContext ctx;
  ctx.shard = plan.ranks.at(0);
  ctx.plan = std::move(plan);
  ctx.world = CreateLocalCommunicator();
  ctx.tp = CreateLocalCommunicator();
  return ctx;
}

absl::StatusOr<ParallelContext> ParallelContext::Create(ShardPlan plan,
                                                        std::shared_ptr<Communicator> world) {
  if (world->size() != plan.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size ", world->size(), " != tp x pp = ", plan.tp, " x ", plan.pp, " = ",
        plan.world_size(), ": launch exactly tp x pp ranks (mpirun -np ", plan.world_size(), ")"));
  }
  ParallelContext ctx;
  ctx.shard = plan.ranks.at(world->rank());
  ctx.plan = std::move(plan);
  ctx.world = std::move(world);
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> tp,
                           ctx.world->Split(ctx.shard.stage, ctx.shard.tp_rank, "tp"));
  ctx.tp = std::move(tp);
  return ctx;
}

namespace {

// Runs `exchange(group, in, out)` on raw pointers to the data of `in` and `out`: device memory
// with the TP group's device communicator, host memory with the host one (copying device tensors
// to the host and back when there is no device communicator).
template <typename Exchange>
absl::Status ExchangeOnTp(Backend& backend, const ParallelContext& ctx, const Tensor& in,
                          Tensor& out, Exchange exchange) {
  if (in.device() == Device::kCpu) {
    return exchange(*ctx.tp, in.data<float>(), out.data<float>());
  }
  if (ctx.tp_device != nullptr) {
    return exchange(*ctx.tp_device, in.data<float>(), out.data<float>());
  }
  // Device memory without a device communicator (e.g. TP ranks sharing one GPU, where NCCL
  // refuses): through the host, one copy when the exchange is in place.
  Tensor host_in = backend.ToHost(in);
  Tensor host_out = in.raw() == out.raw() ? host_in : backend.ToHost(out);
  SHARDLM_RETURN_IF_ERROR(exchange(*ctx.tp, host_in.data<float>(), host_out.data<float>()));
  backend.Copy(backend.ToDevice(host_out), out);
  return absl::OkStatus();
}

// Bytes of `rows` rows of the f32 matrix `t`, checked against the rows it has.
absl::StatusOr<std::vector<size_t>> RowBytes(const char* op, const char* which, const Tensor& t,
                                             std::span<const int64_t> rows) {
  if (t.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": expected a matrix to ", which, ", got ", t.ShapeString()));
  }
  std::vector<size_t> bytes;
  int64_t total = 0;
  const int64_t row_bytes = t.dim(1) * static_cast<int64_t>(sizeof(float));
  for (int64_t r : rows) {
    total += r;
    bytes.push_back(static_cast<size_t>(r * row_bytes));
  }
  if (total > t.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", total, " rows to ", which, " in a ",
                                                   t.ShapeString(), " matrix"));
  }
  return bytes;
}

}  // namespace

absl::Status AllReduce(Backend& backend, const ParallelContext& ctx, Tensor& t) {
  if (ctx.tp->size() == 1) return absl::OkStatus();
  const size_t count = static_cast<size_t>(t.numel());
  return ExchangeOnTp(backend, ctx, t, t, [count](Communicator& group, const float*, float* data) {
    return group.AllReduceSum(data, count);
  });
}

absl::Status AllToAllRows(Backend& backend, const ParallelContext& ctx, const Tensor& send,
                          std::span<const int64_t> send_rows, Tensor& recv,
                          std::span<const int64_t> recv_rows) {
  SHARDLM_ASSIGN_OR_RETURN(std::vector<size_t> send_bytes,
                           RowBytes("AllToAllRows", "send", send, send_rows));
  SHARDLM_ASSIGN_OR_RETURN(std::vector<size_t> recv_bytes,
                           RowBytes("AllToAllRows", "receive", recv, recv_rows));
  return ExchangeOnTp(backend, ctx, send, recv,
                      [&](Communicator& group, const float* in, float* out) {
                        return group.AllToAllV(in, send_bytes, out, recv_bytes);
                      });
}

absl::Status AllGatherRows(Backend& backend, const ParallelContext& ctx, const Tensor& in,
                           Tensor& out) {
  const int64_t tp = ctx.tp->size();
  if (in.rank() != 2 || out.rank() != 2 || in.dim(1) != out.dim(1) || out.dim(0) != tp * in.dim(0)) {
    return absl::InvalidArgumentError(absl::StrCat("AllGatherRows: ", in.ShapeString(), " from ",
                                                   tp, " ranks into ", out.ShapeString()));
  }
  const size_t bytes = static_cast<size_t>(in.numel()) * sizeof(float);
  return ExchangeOnTp(backend, ctx, in, out, [&](Communicator& group, const float* i, float* o) {
    return group.AllGather(i, o, bytes);
  });
}

static const Tensor* Opt(const std::optional<Tensor>& t) { return t ? &*t : nullptr; }

void ColumnParallelLinear::Apply(Backend& backend, const Tensor& x, Tensor& y) const {
  backend.Linear(x, weight, Opt(bias), y);
}

absl::Status RowParallelLinear::Apply(Backend& backend, const ParallelContext& ctx,
                                      const Tensor& x, Tensor& y) const {
  backend.Linear(x, weight, Opt(bias), y);
  return AllReduce(backend, ctx, y);
}

std::vector<int32_t> VocabParallelEmbedding::LocalIds(std::span<const int32_t> ids) const {
  std::vector<int32_t> local(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    local[i] = ids[i] >= vocab.begin && ids[i] < vocab.end
                   ? static_cast<int32_t>(ids[i] - vocab.begin)
                   : -1;
  }
  return local;
}

absl::Status VocabParallelEmbedding::Apply(Backend& backend, const ParallelContext& ctx,
                                           const Tensor& local_ids, Tensor& y) const {
  backend.Embedding(table, local_ids, y);
  return AllReduce(backend, ctx, y);
}

void ParallelLMHead::Apply(Backend& backend, const Tensor& x, Tensor& local_logits) const {
  backend.Linear(x, weight, nullptr, local_logits);
}

absl::StatusOr<std::vector<int32_t>> ParallelLMHead::Argmax(Backend& backend, Communicator& tp,
                                                            const Tensor& local_logits) const {
  const size_t n = static_cast<size_t>(local_logits.dim(0));
  std::vector<int32_t> ids(n);
  std::vector<float> values(n);
  backend.Argmax(local_logits, ids, values);
  for (int32_t& id : ids) id += static_cast<int32_t>(vocab.begin);
  if (tp.size() == 1) return ids;

  struct Best {
    float value;
    int32_t id;
  };
  std::vector<Best> mine(n), all(n * tp.size());
  for (size_t i = 0; i < n; ++i) mine[i] = {values[i], ids[i]};
  SHARDLM_RETURN_IF_ERROR(tp.AllGather(mine.data(), all.data(), n * sizeof(Best)));
  for (size_t i = 0; i < n; ++i) {
    // Ranks hold increasing id ranges, so keeping the first maximum keeps the lowest id on ties.
    Best best = all[i];
    for (int r = 1; r < tp.size(); ++r) {
      const Best& b = all[r * n + i];
      if (b.value > best.value || (std::isnan(best.value) && !std::isnan(b.value))) best = b;
    }
    ids[i] = best.id;
  }
  return ids;
}

absl::StatusOr<std::vector<float>> ParallelLMHead::Gather(Backend& backend, Communicator& tp,
                                                          const Tensor& local_logits) const {
  const int64_t n = local_logits.dim(0);
  Tensor host = backend.ToHost(local_logits);
  std::vector<float> full(static_cast<size_t>(n * full_vocab));
  if (tp.size() == 1) {
    std::memcpy(full.data(), host.data<float>(), full.size() * sizeof(float));
    return full;
  }
  // Vocabulary shards may differ in size: pad each to the largest for one all-gather.
  int64_t width = 0;
  for (const Range& r : all_vocab) width = std::max(width, r.size());
  std::vector<float> mine(static_cast<size_t>(n * width)), all(mine.size() * tp.size());
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(&mine[i * width], host.data<float>() + i * vocab.size(),
                vocab.size() * sizeof(float));
  }
  SHARDLM_RETURN_IF_ERROR(tp.AllGather(mine.data(), all.data(), mine.size() * sizeof(float)));
  for (int r = 0; r < tp.size(); ++r) {
    const Range& v = all_vocab[r];
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(&full[i * full_vocab + v.begin], &all[(r * n + i) * width],
                  v.size() * sizeof(float));
    }
  }
  return full;
}

}  // namespace shardlm
