#include "base/env.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace shardlm {
namespace {

// (rank on this node, ranks on this node) from the first launcher that sets a local rank.
std::pair<int, int> NodeLocalPlace() {
  constexpr int kUnset = -1;
  int rank = EnvInt("OMPI_COMM_WORLD_LOCAL_RANK", kUnset);
  if (rank != kUnset) return {rank, EnvInt("OMPI_COMM_WORLD_LOCAL_SIZE", 1)};
  rank = EnvInt("MPI_LOCALRANKID", kUnset);
  if (rank != kUnset) return {rank, EnvInt("MPI_LOCALNRANKS", 1)};
  rank = EnvInt("SLURM_LOCALID", kUnset);
  if (rank != kUnset) {
    const int node = EnvInt("SLURM_NODEID", 0);
    for (const char* list : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
      const char* value = std::getenv(list);
      const int tasks = value != nullptr ? SlurmTasksOnNode(value, node) : -1;
      if (tasks > rank) return {rank, tasks};
    }
    return {rank, EnvInt("SLURM_NTASKS_PER_NODE", 1)};
  }
  return {0, 1};
}

}  // namespace

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  int out = 0;
  return v != nullptr && absl::SimpleAtoi(v, &out) && out >= 0 ? out : fallback;
}

int SlurmTasksOnNode(std::string_view tasks_per_node, int node) {
  if (node < 0) return -1;
  int64_t first = 0;  // the first node of the current entry
  int found = -1;
  // (This abseil's string_view is its own type.)
  const absl::string_view list(tasks_per_node.data(), tasks_per_node.size());
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    int tasks = 0;
    int64_t repeat = 1;
    const size_t paren = entry.find('(');
    if (paren != absl::string_view::npos) {
      // "N(xM)"
      const absl::string_view times = entry.substr(paren);
      if (times.size() < 4 || times.substr(0, 2) != "(x" || times.back() != ')' ||
          !absl::SimpleAtoi(times.substr(2, times.size() - 3), &repeat) || repeat < 1) {
        return -1;
      }
      entry = entry.substr(0, paren);
    }
    if (!absl::SimpleAtoi(entry, &tasks) || tasks < 0) return -1;
    // The whole list is parsed: a malformed one is not believed anywhere.
    if (found < 0 && node < first + repeat) found = tasks;
    first += repeat;
  }
  return found;
}

int NodeLocalRank() { return NodeLocalPlace().first; }

int NodeLocalSize() {
  const auto [rank, size] = NodeLocalPlace();
  return std::max(size, rank + 1);
}

int ThreadsPerRank(int requested) {
  if (requested > 0) return requested;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / NodeLocalSize());
}

}  // namespace shardlm
