#include "runtime/ranks.h"

#include <cstdlib>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/env.h"
#include "base/status_macros.h"
#include "parallel/collectives.h"
#include "model/llama.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

void AddParallelOptions(CLI::App& app, ParallelArgs& args) {
  app.add_option("--tp", args.tp, "Tensor-parallel ranks per pipeline stage")->default_val(1);
  app.add_option("--pp", args.pp, "Pipeline stages")->default_val(1);
  app.add_option("--ep", args.ep,
                 "Expert-parallel groups per stage (mixtures of experts): whole experts spread "
                 "over the TP ranks, tokens exchanged by all-to-all; divides --tp and the experts")
      ->default_val(1);
  app.add_option("--pp-layers", args.pp_layers,
                 "First layer of each stage after the first, e.g. 10,20 (default: even split)");
}

absl::StatusOr<ShardPlan> PlanFor(const ModelConfig& config, const WeightSource& weights,
                                  const ParallelArgs& args) {
  std::vector<int64_t> boundaries;
  if (!args.pp_layers.empty()) {
    SHARDLM_ASSIGN_OR_RETURN(boundaries, ParseLayerList(args.pp_layers));
  }
  return MakeShardPlan(PlanInputFor(config, args.tp, args.pp, boundaries, &weights, args.ep));
}

absl::Status ParallelRun::Agree(const absl::Status& status) const {
  if (!distributed()) return status;
  return AgreeOnStatus(*context->world, status);
}

void ParallelRun::AbortIfDistributed(int code) const {
  // MPI_Abort ends the job and does not return: there is no result to look at.
  if (distributed()) static_cast<void>(MPI_Abort(MPI_COMM_WORLD, code));
}

absl::StatusOr<ParallelRun> StartParallel(const ShardPlan& plan, int requested_threads) {
  ParallelRun run;
  if (plan.world_size() == 1 && !MpiSession::LaunchedByMpirun()) {
    run.context = ParallelContext::Single(plan);
    run.threads = ThreadsPerRank(requested_threads);
    return run;
  }
  if (!MpiSession::LaunchedByMpirun()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "world size 1 (not started by mpirun) != tp x pp = ", plan.tp, " x ", plan.pp, " = ",
        plan.world_size(), ": run it as mpirun -np ", plan.world_size(), " shardlm ..."));
  }
  SHARDLM_ASSIGN_OR_RETURN(run.mpi, MpiSession::Init(nullptr, nullptr));
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> world, MpiCommunicator::World());
  run.rank = world->rank();
  run.world_size = world->size();
  SHARDLM_ASSIGN_OR_RETURN(ParallelContext ctx,
                           ParallelContext::Create(plan, std::shared_ptr<Communicator>(std::move(world))));
  run.context = std::move(ctx);
  SetCheckWorldRank(run.rank);
  run.threads = ThreadsPerRank(requested_threads);
  return run;
}

}  // namespace shardlm::cli
