#include "parallel/shard_plan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace shardlm {

std::vector<Range> SplitEvenly(int64_t total, int parts, int64_t unit) {
  std::vector<Range> out;
  const int64_t units = total / unit;
  const int64_t base = units / parts, extra = units % parts;
  int64_t at = 0;
  for (int p = 0; p < parts; ++p) {
    const int64_t n = (base + (p < extra ? 1 : 0)) * unit;
    out.push_back({at, at + n});
    at += n;
  }
  return out;
}

namespace {

// (Q heads, KV heads) of each TP rank.
absl::StatusOr<std::vector<std::pair<Range, Range>>> SplitHeads(const PlanInput& in) {
  const int tp = in.tp;
  const int64_t group = in.heads / in.kv_heads;  // Q heads per KV head
  std::vector<std::pair<Range, Range>> out;
  if (tp <= in.kv_heads) {
    // Whole KV groups per rank, uneven when they don't divide.
    for (const Range& kv : SplitEvenly(in.kv_heads, tp)) {
      out.push_back({Range{kv.begin * group, kv.end * group}, kv});
    }
    return out;
  }
  if (tp > in.heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp=", tp, " exceeds the number of attention heads (", in.heads,
        "): every TP rank needs at least one query head"));
  }
  // More ranks than KV heads: KV head j goes to the ranks that split its group of Q heads.
  const std::vector<Range> ranks_per_kv = SplitEvenly(tp, static_cast<int>(in.kv_heads));
  for (int64_t j = 0; j < in.kv_heads; ++j) {
    const int sharing = static_cast<int>(ranks_per_kv[j].size());
    if (sharing > group) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tp=", tp, ": KV head ", j, " would be shared by ", sharing, " ranks but its group has only ",
          group, " query heads (", in.heads, " heads / ", in.kv_heads, " KV heads)"));
    }
    for (const Range& q : SplitEvenly(group, sharing)) {
      out.push_back({Range{j * group + q.begin, j * group + q.end}, Range{j, j + 1}});
    }
  }
  return out;
}

// Stages of nearly equal decode cost. Every layer costs its multiply-adds per token (Q/K/V, O,
// gate/up/down), and the LM head of the last stage vocab x hidden of them (every decoded token
// is sampled; in prefill only one row per sequence is, so prefill-heavy work may prefer
// --pp-layers). The last stage gets round(total / pp - head) layers (at least one), the others
// split the rest evenly. A head worth under half a stage's share leaves the even split.
std::vector<Range> SplitByDecodeCost(const PlanInput& in) {
  const int64_t hidden = in.hidden > 0 ? in.hidden : in.heads * in.head_dim;
  const double layer = static_cast<double>(hidden) *
                           static_cast<double>((in.heads + 2 * in.kv_heads) * in.head_dim) +
                       static_cast<double>(in.heads * in.head_dim) * hidden +
                       3.0 * static_cast<double>(hidden) * static_cast<double>(in.intermediate);
  if (in.pp == 1 || layer <= 0) return SplitEvenly(in.layers, in.pp);
  const double head = static_cast<double>(in.vocab) * hidden / layer;  // in layers
  const double share = (static_cast<double>(in.layers) + head) / in.pp;
  const int64_t last = std::clamp<int64_t>(std::llround(share - head), 1,
                                           in.layers - (in.pp - 1));
  std::vector<Range> out = SplitEvenly(in.layers - last, in.pp - 1);
  out.push_back({in.layers - last, in.layers});
  // Keep the even split when it is at least as balanced (small heads: tiny test models).
  const std::vector<Range> even = SplitEvenly(in.layers, in.pp);
  auto worst = [&](const std::vector<Range>& stages) {
    double w = 0;
    for (size_t s = 0; s < stages.size(); ++s) {
      const double cost = static_cast<double>(stages[s].size()) + (s + 1 == stages.size() ? head : 0);
      w = std::max(w, cost);
    }
    return w;
  };
  return worst(even) <= worst(out) ? even : out;
}

absl::StatusOr<std::vector<Range>> SplitLayers(const PlanInput& in) {
  if (in.pp > in.layers) {
    return absl::InvalidArgumentError(absl::StrCat("pp=", in.pp, " exceeds the number of layers (",
                                                   in.layers, "): every stage needs a layer"));
  }
  if (in.pp_layers.empty()) return SplitByDecodeCost(in);
  if (static_cast<int>(in.pp_layers.size()) != in.pp - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--pp-layers: expected pp - 1 = ", in.pp - 1, " stage boundaries, got ", in.pp_layers.size()));
  }
  std::vector<Range> out;
  int64_t at = 0;
  for (size_t i = 0; i <= in.pp_layers.size(); ++i) {
    const int64_t end = i < in.pp_layers.size() ? in.pp_layers[i] : in.layers;
    if (end <= at || end > in.layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--pp-layers: boundary ", i, " is ", end, "; expected increasing layer indices in (0, ",
          in.layers, ") so that every stage has a layer"));
    }
    out.push_back({at, end});
    at = end;
  }
  return out;
}

}  // namespace

absl::StatusOr<ShardPlan> MakeShardPlan(const PlanInput& in) {
  if (in.tp < 1 || in.pp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp and pp must be >= 1, got tp=", in.tp, " pp=", in.pp));
  }
  if (in.heads <= 0 || in.kv_heads <= 0 || in.heads % in.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention heads (", in.heads,
                                                   ") must be a positive multiple of KV heads (",
                                                   in.kv_heads, ")"));
  }
  if (in.intermediate < in.tp) {
    return absl::InvalidArgumentError(absl::StrCat("tp=", in.tp, " exceeds the intermediate size (",
                                                   in.intermediate, ")"));
  }
  if (in.vocab < in.tp) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp=", in.tp, " exceeds the vocabulary size (", in.vocab, ")"));
  }
  if (in.ep < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--ep must be >= 1, got ", in.ep));
  }
  if (in.ep > 1 && in.experts == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ep ", in.ep, ": expert parallelism needs a mixture-of-experts model (this one has no "
        "experts)"));
  }
  if (in.tp % in.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--ep ", in.ep, " does not divide --tp ", in.tp, ": the experts of a stage are spread "
        "over its TP ranks (run --tp ", in.ep, " --ep ", in.ep, " on ", in.ep * in.pp, " ranks)"));
  }
  if (in.experts > 0 && in.experts % in.ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--ep ", in.ep, " does not divide the ",
                                                   in.experts, " experts"));
  }
  const int per_group = in.tp / in.ep;  // ranks that split each expert
  if (in.experts > 0 && in.moe_intermediate < per_group) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp / ep = ", per_group, " exceeds the expert intermediate size (", in.moe_intermediate,
        ")"));
  }
  auto heads = SplitHeads(in);
  if (!heads.ok()) return heads.status();
  auto stages = SplitLayers(in);
  if (!stages.ok()) return stages.status();
  // Whole quantization blocks per rank when there are enough of them.
  int64_t unit = in.intermediate_align > 0 ? in.intermediate_align : 1;
  if (in.intermediate % unit != 0 || in.intermediate / unit < in.tp) unit = 1;
  const std::vector<Range> inter = SplitEvenly(in.intermediate, in.tp, unit);
  const std::vector<Range> vocab = SplitEvenly(in.vocab, in.tp);
  int64_t moe_unit = in.moe_align > 0 ? in.moe_align : 1;
  if (in.moe_intermediate % moe_unit != 0 || in.moe_intermediate / moe_unit < per_group) {
    moe_unit = 1;
  }
  const std::vector<Range> moe = SplitEvenly(in.moe_intermediate, per_group, moe_unit);
  const std::vector<Range> experts = SplitEvenly(in.experts, in.ep);

  ShardPlan plan;
  plan.tp = in.tp;
  plan.pp = in.pp;
  plan.ep = in.ep;
  for (int stage = 0; stage < in.pp; ++stage) {
    for (int t = 0; t < in.tp; ++t) {
      RankShard s;
      s.rank = plan.RankOf(stage, t);
      s.stage = stage;
      s.tp_rank = t;
      s.layers = (*stages)[stage];
      s.q_heads = (*heads)[t].first;
      s.kv_heads = (*heads)[t].second;
      s.intermediate = inter[t];
      s.vocab = vocab[t];
      if (in.experts > 0) {
        s.experts = experts[t / per_group];
        s.moe_intermediate = moe[t % per_group];
      }
      s.first_stage = stage == 0;
      s.last_stage = stage == in.pp - 1;
      plan.ranks.push_back(s);
    }
  }
  return plan;
}

absl::StatusOr<std::vector<int64_t>> ParseLayerList(const std::string& text) {
  std::vector<int64_t> out;
  int index = 0;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    int64_t v;
    if (!absl::SimpleAtoi(piece, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--pp-layers: element ", index, " is '",
                                                     std::string(piece),
                                                     "', expected a layer index"));
    }
    out.push_back(v);
    ++index;
  }
  return out;
}

}  // namespace shardlm
