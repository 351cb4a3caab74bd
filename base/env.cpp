#include "base/env.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"

namespace shardlm {

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  int out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) && out >= 0 ? out : fallback;
}

int NodeLocalRank() {
  return EnvInt("OMPI_COMM_WORLD_LOCAL_RANK",
                EnvInt("SLURM_LOCALID", EnvInt("MPI_LOCALRANKID", 0)));
}

int NodeLocalSize() {
  return std::max(1, EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE",
                            EnvInt("SLURM_NTASKS_PER_NODE", EnvInt("MPI_LOCALNRANKS", 1))));
}

int ThreadsPerRank(int requested) {
  if (requested > 0) return requested;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / NodeLocalSize());
}

}  // namespace shardlm
