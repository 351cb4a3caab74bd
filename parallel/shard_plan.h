// Which part of the model each rank holds (Megatron-style tensor parallelism inside a pipeline
// stage, layers split across stages). World rank r is pipeline stage r / tp and TP rank r % tp.
//
// Rules:
// - Q/K/V, gate and up are column-parallel (each rank holds some output rows); O and down are
//   row-parallel (some input columns) and their partial outputs are summed by one all-reduce.
// - Attention heads go by whole KV groups. When the groups don't divide by tp the split is uneven
//   (9 heads / 3 KV heads at tp=2: 6 Q heads + 2 KV heads, then 3 + 1). When tp exceeds the KV
//   heads, each KV head is replicated on the ranks that share its group's Q heads, so every rank
//   holds exactly the KV heads its Q heads read.
// - The intermediate size is split into nearly equal parts, in multiples of `intermediate_align`
//   (the quantization block of the down projection) when it divides, so quantized columns stay
//   whole blocks.
// - Embedding and LM head are split by vocabulary rows, nearly equally.
// - Pipeline stages get nearly equal runs of layers, or the boundaries given in `pp_layers`.
// - Mixtures of experts: with ep = 1 every TP rank holds a slice of every expert (gate/up
//   column-parallel, down row-parallel, like the dense MLP). With ep > 1 (expert parallelism) the
//   tp ranks of a stage form ep groups of tp / ep consecutive ranks; group g holds whole experts
//   [g E/ep, (g+1) E/ep), each split over the group's tp / ep ranks (whole when ep = tp), and
//   tokens reach their experts by an all-to-all over the stage's TP group. So ep must divide tp
//   and the number of experts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardlm {

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
  bool operator==(const Range&) const = default;
};

// Splits [0, total) into `parts` contiguous ranges of multiples of `unit` (total % unit == 0), the
// first ones one unit larger when they don't divide.
std::vector<Range> SplitEvenly(int64_t total, int parts, int64_t unit = 1);

// The model dimensions a plan depends on.
struct PlanInput {
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate = 0;
  int64_t vocab = 0;
  int64_t hidden = 0;  // 0: heads x head_dim (only the default stage split uses it)
  int64_t intermediate_align = 1;
  // Mixture of experts: 0 experts for a dense model; the quantization block of the expert down
  // projections, like intermediate_align.
  int64_t experts = 0;
  int64_t moe_intermediate = 0;
  int64_t moe_align = 1;
  int tp = 1;
  int pp = 1;
  int ep = 1;
  // Where stages start, pp - 1 increasing layer indices ("--pp-layers 10,20": stages [0,10),
  // [10,20), [20,L)); empty: stages of nearly equal decode cost, where the last stage's LM head
  // (vocab x hidden multiply-adds per token) counts as that many layers' worth (SmolLM2: about
  // 8 layers, so pp=2 splits its 30 layers 19 + 11).
  std::vector<int64_t> pp_layers;
};

struct RankShard {
  int rank = 0;
  int stage = 0;
  int tp_rank = 0;
  Range layers;        // global layer indices
  Range q_heads;       // global Q head indices
  Range kv_heads;      // global KV head indices (replicated on several ranks when tp > KV heads)
  Range intermediate;  // MLP columns
  Range vocab;         // embedding / LM head rows
  Range experts;           // the experts whose weights this rank holds (empty: dense model)
  Range moe_intermediate;  // the columns of each of them
  bool first_stage = false;  // holds the embedding
  bool last_stage = false;   // holds the final norm and the LM head
};

struct ShardPlan {
  int tp = 1;
  int pp = 1;
  int ep = 1;
  std::vector<RankShard> ranks;  // indexed by world rank
  int world_size() const { return tp * pp; }
  // The world rank of (stage, tp_rank).
  int RankOf(int stage, int tp_rank) const { return stage * tp + tp_rank; }
};

// Errors (InvalidArgument) name the offending number: tp or pp < 1, more stages than layers,
// more TP ranks than Q heads, a KV head shared by more ranks than its group has Q heads, bad
// pp_layers, or a dimension smaller than tp; an ep that does not divide tp or the experts, or
// ep > 1 for a dense model.
absl::StatusOr<ShardPlan> MakeShardPlan(const PlanInput& input);

// "--pp-layers 10,20" -> {10, 20}; errors name the flag and the bad element.
absl::StatusOr<std::vector<int64_t>> ParseLayerList(const std::string& text);

}  // namespace shardlm
