// `shardlm plan --model M --tp T --pp P [--ep E] [--pp-layers ...] [--json]`: what each rank
// would hold (and, for a mixture of experts, which experts and which of their columns).
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "runtime/ranks.h"
#include "base/status_macros.h"
#include "formats/checkpoint_loader.h"
#include "model/llama.h"
#include "model/shard_loader.h"
#include "nlohmann/json.hpp"

namespace shardlm::cli {

namespace {

struct PlanArgs {
  std::string model;
  ParallelArgs parallel;
  bool json = false;
};

std::string RangeText(const Range& r) { return absl::StrCat(r.begin, "-", r.end - 1); }

absl::Status RunPlan(const PlanArgs& args) {
  SHARDLM_ASSIGN_OR_RETURN(OpenedCheckpoint checkpoint, OpenCheckpoint(args.model));
  const ModelConfig& config = checkpoint.config;
  SHARDLM_ASSIGN_OR_RETURN(ShardPlan plan, PlanFor(config, *checkpoint.weights, args.parallel));
  // Bytes each rank would hold, counted by the loader itself (no weights read).
  ShardLoader whole(config, *checkpoint.weights, nullptr);
  SHARDLM_RETURN_IF_ERROR(LoadLlamaShard(config, SingleRankPlan(config).ranks[0],
                                         SingleRankPlan(config), whole)
                              .status());
  nlohmann::json ranks = nlohmann::json::array();
  std::vector<std::string> rows;
  const bool moe = config.num_experts > 0;
  for (const RankShard& s : plan.ranks) {
    ShardLoader loader(config, *checkpoint.weights, nullptr);
    SHARDLM_RETURN_IF_ERROR(LoadLlamaShard(config, s, plan, loader).status());
    const double share = static_cast<double>(loader.bytes()) / static_cast<double>(whole.bytes());
    ranks.push_back({{"rank", s.rank},
                     {"stage", s.stage},
                     {"tp_rank", s.tp_rank},
                     {"layers", {s.layers.begin, s.layers.end}},
                     {"q_heads", {s.q_heads.begin, s.q_heads.end}},
                     {"kv_heads", {s.kv_heads.begin, s.kv_heads.end}},
                     {"intermediate", {s.intermediate.begin, s.intermediate.end}},
                     {"vocab", {s.vocab.begin, s.vocab.end}},
                     {"embedding", s.first_stage},
                     {"lm_head", s.last_stage},
                     {"weight_bytes", loader.bytes()},
                     {"dequantized", loader.dequantized()}});
    if (moe) {
      ranks.back()["experts"] = {s.experts.begin, s.experts.end};
      ranks.back()["expert_intermediate"] = {s.moe_intermediate.begin, s.moe_intermediate.end};
    }
    const std::string experts =
        moe ? absl::StrFormat(" %3d (%s) %11s", s.experts.size(), RangeText(s.experts),
                              RangeText(s.moe_intermediate))
            : "";
    rows.push_back(absl::StrFormat(
        "%4d %5d %3d %9s %3d (%s) %4d (%s) %13s %13s%s %12.2f %5.1f%%%s", s.rank, s.stage, s.tp_rank,
        RangeText(s.layers), s.q_heads.size(), RangeText(s.q_heads), s.kv_heads.size(),
        RangeText(s.kv_heads), RangeText(s.intermediate), RangeText(s.vocab), experts,
        loader.bytes() / 1048576.0, 100.0 * share,
        loader.dequantized().empty()
            ? ""
            : absl::StrCat("  (", loader.dequantized().size(), " slices dequantized to f32)")
                  .c_str()));
  }
  if (args.json) {
    nlohmann::json doc = {{"model", args.model},       {"tp", plan.tp},
                          {"pp", plan.pp},             {"ep", plan.ep},
                          {"experts", config.num_experts},
                          {"experts_per_token", config.experts_per_token},
                          {"heads", config.num_heads},
                          {"kv_heads", config.num_kv_heads}, {"layers", config.num_layers},
                          {"total_weight_bytes", whole.bytes()}, {"ranks", ranks}};
    std::printf("%s\n", doc.dump(2).c_str());
    return absl::OkStatus();
  }
  std::printf("%s: %lld layers, %lld heads / %lld KV heads, intermediate %lld, vocab %lld; "
              "tp=%d pp=%d; %.2f MiB of weights on one rank\n",
              args.model.c_str(), static_cast<long long>(config.num_layers),
              static_cast<long long>(config.num_heads), static_cast<long long>(config.num_kv_heads),
              static_cast<long long>(config.intermediate_size),
              static_cast<long long>(config.vocab_size), plan.tp, plan.pp,
              whole.bytes() / 1048576.0);
  if (moe) {
    std::printf("mixture of %lld experts (top %lld, expert intermediate %lld); ep=%d: %lld experts "
                "per rank, each split over %d rank(s)\n",
                static_cast<long long>(config.num_experts),
                static_cast<long long>(config.experts_per_token),
                static_cast<long long>(config.moe_intermediate_size), plan.ep,
                static_cast<long long>(config.num_experts / plan.ep), plan.tp / plan.ep);
  }
  std::printf("rank stage  tp    layers heads        kv heads  intermediate         vocab%s   "
              "weights MiB share\n",
              moe ? " experts     expert cols" : "");
  for (const std::string& row : rows) std::printf("%s\n", row.c_str());
  return absl::OkStatus();
}

}  // namespace

RunFn AddPlanCommand(CLI::App& app) {
  auto args = std::make_shared<PlanArgs>();
  app.add_option("--model", args->model,
                 "HF model directory (config.json + safetensors) or a .gguf file")
      ->required();
  AddParallelOptions(app, args->parallel);
  app.add_flag("--json", args->json, "Print the plan as JSON");
  return [args]() -> int {
    absl::Status status = RunPlan(*args);
    return status.ok() ? 0 : Fail("plan", std::string(status.message()));
  };
}

}  // namespace shardlm::cli
