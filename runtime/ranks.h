// Turning --tp / --pp / --pp-layers into this process's ParallelContext: MPI is initialized only
// when the job has more than one rank or was started by mpirun.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "formats/config.h"
#include "formats/weight_source.h"
#include "parallel/layers.h"
#include "parallel/mpi_communicator.h"

namespace shardlm::cli {

struct ParallelArgs {
  int tp = 1;
  int pp = 1;
  int ep = 1;             // expert parallelism: divides tp and the experts
  std::string pp_layers;  // "10,20"
};
void AddParallelOptions(CLI::App& app, ParallelArgs& args);

// The shard plan for `config` (quantization blocks of `weights` respected).
absl::StatusOr<ShardPlan> PlanFor(const ModelConfig& config, const WeightSource& weights,
                                  const ParallelArgs& args);

struct ParallelRun {
  std::unique_ptr<MpiSession> mpi;  // declared first: destroyed after the communicators
  std::optional<ParallelContext> context;
  int rank = 0;
  int world_size = 1;
  // CPU threads for this rank: `requested`, or when 0 the cores divided among the ranks that
  // share this node.
  int threads = 0;

  bool distributed() const { return world_size > 1; }
  // In a distributed run every rank learns whether all ranks got `status` OK (one all-reduce);
  // the error names the first failing rank. Call it where ranks may fail independently (loading)
  // so that no rank is left waiting in a collective.
  absl::Status Agree(const absl::Status& status) const;
  // Ends the whole job after an error in the middle of collectives (MPI_Abort), since peers may
  // be blocked waiting for this rank; a no-op with one rank.
  void AbortIfDistributed(int code) const;
};

// Starts MPI if needed and builds this rank's context. A world size other than tp x pp is an
// error on every rank, naming both numbers.
absl::StatusOr<ParallelRun> StartParallel(const ShardPlan& plan, int requested_threads);

}  // namespace shardlm::cli
