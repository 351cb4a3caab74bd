// The mixture-of-experts MLP of LlamaModel (Mixtral, Qwen3-MoE): routing on the host, the experts
// run on the tokens routed to them (grouped by expert: one gather and one GEMM per expert), and
// either a TP split of every expert (ep = 1) or expert parallelism (ep > 1, tokens exchanged by
// all-to-all over the stage's TP group). See parallel/shard_plan.h for who holds what.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "fmt/ranges.h"
#include "model/llama.h"
#include "parallel/layers.h"
#include "spdlog/spdlog.h"

namespace shardlm {
namespace {

// The routing of n tokens: token i's slot j (j < k, best expert first) is expert[i * k + j] with
// weight[i * k + j].
struct Routing {
  std::vector<int32_t> expert;
  std::vector<float> weight;
};

// Routes the rows of x [n, hidden] (n > 0): the router's logits, softmax in f32 (as HF: of the
// f32 logits), the k most probable experts (ties to the lower index), their probabilities
// renormalised to sum to 1 when `renormalise` (Mixtral; Qwen3-MoE's norm_topk_prob).
Routing Route(Backend& b, const Tensor& router, const Tensor& x, int64_t k, bool renormalise) {
  const int64_t n = x.dim(0), experts = router.dim(0);
  Tensor logits = b.AllocateUninitialized({n, experts});
  b.Linear(x, router, nullptr, logits);
  const Tensor host = b.ToHost(logits);
  Routing r;
  r.expert.reserve(static_cast<size_t>(n * k));
  r.weight.reserve(static_cast<size_t>(n * k));
  std::vector<float> prob(static_cast<size_t>(experts));
  std::vector<int32_t> order(static_cast<size_t>(experts));
  for (int64_t i = 0; i < n; ++i) {
    const float* z = host.data<float>() + i * experts;
    const float top = *std::max_element(z, z + experts);
    float sum = 0.0f;
    for (int64_t e = 0; e < experts; ++e) sum += prob[e] = std::exp(z[e] - top);
    for (int64_t e = 0; e < experts; ++e) prob[e] /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t c) {
      return prob[a] > prob[c] || (prob[a] == prob[c] && a < c);
    });
    float chosen = 0.0f;
    for (int64_t j = 0; j < k; ++j) chosen += prob[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      r.expert.push_back(order[j]);
      r.weight.push_back(renormalise ? prob[order[j]] / chosen : prob[order[j]]);
    }
  }
  return r;
}

// out[rows[e][i]] += weights[e][i] * expert e (x[rows[e][i]]) for each of this rank's experts e
// (its share of each expert's columns: the caller sums over the ranks that split them).
void RunExperts(Backend& b, Activation act, std::span<const LlamaLayerWeights::Expert> experts,
                const Tensor& x, const std::vector<std::vector<int32_t>>& rows,
                const std::vector<std::vector<float>>& weights, Tensor& out) {
  const int64_t hidden = x.dim(1);
  for (size_t e = 0; e < experts.size(); ++e) {
    const std::vector<int32_t>& mine = rows[e];
    if (mine.empty()) continue;
    const LlamaLayerWeights::Expert& ex = experts[e];
    const int64_t m = static_cast<int64_t>(mine.size()), cols = ex.down.dim(1);
    Tensor xe = b.AllocateUninitialized({m, hidden});
    b.Embedding(x, mine, xe);  // gathers the expert's tokens
    Tensor gu = b.AllocateUninitialized({m, 2 * cols});
    ex.gate_up.Apply(b, xe, gu);
    Tensor h = b.AllocateUninitialized({m, cols});
    b.GluMulPacked(gu, act, h);
    Tensor ye = b.AllocateUninitialized({m, hidden});
    b.Linear(h, ex.down, nullptr, ye);
    b.ScatterAddRows(ye, mine, weights[e], out);
  }
}

}  // namespace

void LlamaModel::CountExpertTokens(int64_t layer, const std::vector<std::vector<int32_t>>& rows) {
  const Range& mine = parallel_.shard.experts;
  std::vector<int64_t> counts;
  for (size_t e = 0; e < rows.size(); ++e) {
    counts.push_back(static_cast<int64_t>(rows[e].size()));
    expert_tokens_[layer * config_.num_experts + mine.begin + static_cast<int64_t>(e)] += counts.back();
  }
  if (spdlog::should_log(spdlog::level::debug)) {
    spdlog::debug("moe layer {}: rank {} experts [{}, {}) got tokens {}", layer,
                  parallel_.shard.rank, mine.begin, mine.end, counts);
  }
}

absl::Status LlamaModel::MoeMlp(int64_t layer, const LlamaLayerWeights& lw, StepWorkspace& ws) {
  if (parallel_.plan.ep > 1) return ExpertParallelMoe(layer, lw, ws);
  Backend& b = backend_;
  const int64_t n = ws.tokens, k = config_.experts_per_token;
  const Routing r = Route(b, lw.router, ws.h, k, config_.norm_topk_prob);
  // Per expert: its tokens and their weights, in token order (as HF gathers them).
  std::vector<std::vector<int32_t>> rows(lw.experts.size());
  std::vector<std::vector<float>> weights(lw.experts.size());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      rows[r.expert[i * k + j]].push_back(static_cast<int32_t>(i));
      weights[r.expert[i * k + j]].push_back(r.weight[i * k + j]);
    }
  }
  CountExpertTokens(layer, rows);
  Tensor out = b.Allocate({n, config_.hidden_size});
  RunExperts(b, act_, lw.experts, ws.h, rows, weights, out);
  // One sum over the TP ranks for all experts (each holds a slice of every expert).
  SHARDLM_RETURN_IF_ERROR(AllReduce(b, parallel_, out));
  b.Copy(out, ws.h);
  return absl::OkStatus();
}

// Expert parallelism over the stage's TP group (tp ranks, every one with all n tokens in ws.h):
//  1. TP rank p routes the tokens of its slice p of the n (SplitEvenly);
//  2. each (token, slot) goes, by one all-to-all, to the ranks of its expert's group (all of
//     them when tp / ep > 1 ranks split each expert), with the expert's id beside it on the host;
//  3. every rank runs its experts on what it received and sends the results back the same way;
//  4. the owner of a token adds weight x result slot by slot, in router order, and an all-gather
//     of the slices gives every rank all n outputs.
absl::Status LlamaModel::ExpertParallelMoe(int64_t layer, const LlamaLayerWeights& lw,
                                           StepWorkspace& ws) {
  Backend& b = backend_;
  const ShardPlan& plan = parallel_.plan;
  const RankShard& shard = parallel_.shard;
  const int tp = plan.tp, me = shard.tp_rank, split = plan.tp / plan.ep;
  const int64_t n = ws.tokens, k = config_.experts_per_token, hidden = config_.hidden_size;
  const int64_t group_experts = config_.num_experts / plan.ep;
  const std::vector<Range> slices = SplitEvenly(n, tp);
  const Range mine = slices[me];
  const Routing r = mine.empty() ? Routing{}
                                 : Route(b, lw.router, ws.h.Rows(mine.begin, mine.end), k,
                                         config_.norm_topk_prob);

  // What goes where: ordered by destination rank, then slot, then token, so that each
  // (destination, slot) is one run of rows in the send buffer ([seg[d * k + j], seg[d * k + j + 1])).
  std::vector<int64_t> send_rows(tp, 0), seg(static_cast<size_t>(tp * k + 1), 0);
  std::vector<int32_t> send_token, send_expert, token_in_slice;
  std::vector<float> send_weight;
  for (int d = 0; d < tp; ++d) {
    const int group = d / split;
    for (int64_t j = 0; j < k; ++j) {
      seg[d * k + j] = static_cast<int64_t>(send_token.size());
      for (int64_t i = 0; i < mine.size(); ++i) {
        const int32_t e = r.expert[i * k + j];
        if (e / group_experts != group) continue;
        send_token.push_back(static_cast<int32_t>(mine.begin + i));
        send_expert.push_back(e);
        token_in_slice.push_back(static_cast<int32_t>(i));
        send_weight.push_back(r.weight[i * k + j]);
      }
    }
    send_rows[d] = static_cast<int64_t>(send_token.size()) - seg[d * k];
  }
  seg[tp * k] = static_cast<int64_t>(send_token.size());
  const int64_t sent = seg[tp * k];

  // Every rank's send counts, so that each knows what it receives.
  std::vector<int64_t> all_rows(static_cast<size_t>(tp * tp));
  SHARDLM_RETURN_IF_ERROR(
      parallel_.tp->AllGather(send_rows.data(), all_rows.data(), tp * sizeof(int64_t)));
  std::vector<int64_t> recv_rows(tp);
  for (int s = 0; s < tp; ++s) recv_rows[s] = all_rows[s * tp + me];
  const int64_t received = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});

  // The experts' ids, on the host.
  std::vector<size_t> send_id_bytes(tp), recv_id_bytes(tp);
  for (int p = 0; p < tp; ++p) {
    send_id_bytes[p] = static_cast<size_t>(send_rows[p]) * sizeof(int32_t);
    recv_id_bytes[p] = static_cast<size_t>(recv_rows[p]) * sizeof(int32_t);
  }
  std::vector<int32_t> recv_expert(static_cast<size_t>(std::max<int64_t>(received, 1)));
  send_expert.reserve(1);  // a valid pointer when nothing is sent
  SHARDLM_RETURN_IF_ERROR(parallel_.tp->AllToAllV(send_expert.data(), send_id_bytes,
                                                  recv_expert.data(), recv_id_bytes));
  // The tokens' hidden states (buffers of at least one row: a rank may send or get none).
  Tensor send = b.AllocateUninitialized({std::max<int64_t>(sent, 1), hidden});
  if (sent > 0) {
    Tensor rows = send.Rows(0, sent);
    b.Embedding(ws.h, send_token, rows);
  }
  Tensor recv = b.AllocateUninitialized({std::max<int64_t>(received, 1), hidden});
  SHARDLM_RETURN_IF_ERROR(AllToAllRows(b, parallel_, send, send_rows, recv, recv_rows));

  // This rank's experts on what it received, grouped by expert (in arrival order).
  std::vector<std::vector<int32_t>> rows(lw.experts.size());
  std::vector<std::vector<float>> ones(lw.experts.size());
  for (int64_t i = 0; i < received; ++i) {
    const int64_t e = recv_expert[i] - shard.experts.begin;
    if (e < 0 || e >= static_cast<int64_t>(lw.experts.size())) {
      return absl::InternalError(absl::StrCat("moe layer ", layer, ": rank ", shard.rank,
                                              " received a token for expert ", recv_expert[i],
                                              " but holds experts [", shard.experts.begin, ", ",
                                              shard.experts.end, ")"));
    }
    rows[e].push_back(static_cast<int32_t>(i));
    ones[e].push_back(1.0f);
  }
  CountExpertTokens(layer, rows);
  Tensor done = b.Allocate({std::max<int64_t>(received, 1), hidden});
  RunExperts(b, act_, lw.experts, recv, rows, ones, done);
  Tensor back = b.AllocateUninitialized({std::max<int64_t>(sent, 1), hidden});
  SHARDLM_RETURN_IF_ERROR(AllToAllRows(b, parallel_, done, recv_rows, back, send_rows));

  // Weighted sum in router order: slot 0 of every token (from each rank that computed a part of
  // its expert), then slot 1, ...
  const int64_t widest = std::max<int64_t>(slices[0].size(), 1);  // SplitEvenly: first is largest
  Tensor out = b.Allocate({widest, hidden});
  for (int64_t j = 0; j < k; ++j) {
    for (int d = 0; d < tp; ++d) {
      const int64_t begin = seg[d * k + j], end = seg[d * k + j + 1];
      if (begin == end) continue;
      const size_t at = static_cast<size_t>(begin), count = static_cast<size_t>(end - begin);
      b.ScatterAddRows(back.Rows(begin, end),
                       std::span<const int32_t>(token_in_slice).subspan(at, count),
                       std::span<const float>(send_weight).subspan(at, count), out);
    }
  }
  Tensor gathered = b.AllocateUninitialized({tp * widest, hidden});
  SHARDLM_RETURN_IF_ERROR(AllGatherRows(b, parallel_, out, gathered));
  for (int p = 0; p < tp; ++p) {
    if (slices[p].empty()) continue;
    Tensor dst = ws.h.Rows(slices[p].begin, slices[p].end);
    b.Copy(gathered.Rows(p * widest, p * widest + slices[p].size()), dst);
  }
  return absl::OkStatus();
}

}  // namespace shardlm
