// The process's environment: integer variables, this rank's place on its node (from whichever
// launcher started it), and the one rule for CPU threads per rank.
#pragma once

#include <string_view>

namespace shardlm {

// The variable as a non-negative integer; `fallback` when it is unset, empty or not one.
int EnvInt(const char* name, int fallback);

// This process's rank among the ranks on its node and their number, from the launcher whose
// local-rank variable is set, both from the same one (an mpirun inside a Slurm job inherits the
// job's SLURM_LOCALID, so MPI launchers come first):
//   Open MPI      OMPI_COMM_WORLD_LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_SIZE
//   MPICH/Hydra   MPI_LOCALRANKID / MPI_LOCALNRANKS
//   Slurm (srun)  SLURM_LOCALID / the entry of this node (SLURM_NODEID) in
//                 SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE, else SLURM_NTASKS_PER_NODE
// 0 and 1 when none says; the size is never below rank + 1.
int NodeLocalRank();
int NodeLocalSize();

// The number of tasks on node `node` (0-based) from a Slurm task list such as
// SLURM_TASKS_PER_NODE: comma-separated counts, each optionally repeated "(xN)" times ("2(x3),1":
// 2 tasks on each of nodes 0..2, 1 on node 3); -1 when the list is malformed or has no such node.
int SlurmTasksOnNode(std::string_view tasks_per_node, int node);

// CPU threads for one rank: `requested` when positive, else this node's cores divided among the
// ranks that share it (at least 1).
int ThreadsPerRank(int requested);

}  // namespace shardlm
