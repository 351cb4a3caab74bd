// The process's environment: integer variables, this rank's place on its node (from whichever
// launcher started it), and the one rule for CPU threads per rank.
#pragma once

namespace shardlm {

// The variable as a non-negative integer; `fallback` when it is unset, empty or not one.
int EnvInt(const char* name, int fallback);

// This process's rank among the ranks on its node and their number, from Open MPI
// (OMPI_COMM_WORLD_LOCAL_RANK / _SIZE), Slurm (SLURM_LOCALID / SLURM_NTASKS_PER_NODE) or
// MPICH/Hydra (MPI_LOCALRANKID / MPI_LOCALNRANKS); 0 and 1 when none says.
int NodeLocalRank();
int NodeLocalSize();

// CPU threads for one rank: `requested` when positive, else this node's cores divided among the
// ranks that share it (at least 1).
int ThreadsPerRank(int requested);

}  // namespace shardlm
