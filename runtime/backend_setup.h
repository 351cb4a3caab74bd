// Choosing and creating a rank's compute backend: the CPU backend, or the CUDA backend on the GPU
// that the node-local rank picks, with NCCL communicators for the activations when each rank has
// a GPU of its own. Shared by `shardlm generate`, `shardlm-worker` and the benchmarks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "parallel/layers.h"

namespace CLI {
class App;
}

namespace shardlm {

struct BackendOptions {
  std::string kind = "cpu";     // cpu | cuda | auto (cuda when a device is visible)
  int threads = 0;              // CPU: 0 = the cores / the ranks on this node
  int device = -1;              // CUDA: -1 = node-local rank % visible devices
  std::string nccl = "auto";    // auto | on | off: NCCL for TP all-reduces and PP transfers
  std::string kv_dtype = "bf16";  // CUDA KV cache: bf16 | f16 | f32
  double gpu_memory_fraction = 0.9;  // CUDA: share of the device the rank may fill (KV blocks)
  bool cuda_graphs = true;      // CUDA: record decode steps as graphs
  // "OP:N[:RANK][:oom|nan|sleep=S]": the Nth call of backend op OP fails (or sleeps S seconds)
  // on RANK (every rank when left out), for tests and failure drills (runtime/faulty_backend.h).
  // Empty: none.
  std::string inject_fault;
};

// --backend, --device, --nccl, --kv-dtype, --gpu-memory-fraction, --cuda-graphs, --inject-fault
// (not --threads).
void AddBackendOptions(CLI::App& app, BackendOptions& options);

struct BackendSetup {
  // The rank's backend behind a FaultyBackend, which names the op of a failure (and injects the
  // fault of --inject-fault).
  std::unique_ptr<Backend> backend;
  bool cuda = false;
  int device = -1;
  int threads = 0;
  std::string description;  // "cpu (8 threads)", "cuda:0 (NVIDIA H100 ..., NCCL)"
};

// Whether this build has the CUDA backend.
bool CudaBuilt();

// Creates this rank's backend. With CUDA and several ranks, collective over ctx.world: when every
// rank has a device of its own (nccl auto/on), adds NCCL twins of ctx.world / ctx.tp on the
// backend's stream; ranks that share a device (more local ranks than devices) keep the host path,
// since NCCL refuses two ranks on one device. Errors name the option and the reason.
absl::StatusOr<BackendSetup> SetUpBackend(const BackendOptions& options, ParallelContext& ctx);

// CUDA: the bytes KV blocks may take on this rank: gpu_memory_fraction x the device's memory,
// less what is in use now (weights, workspaces) and `reserve` (activations of the largest step);
// nullopt for the CPU backend.
std::optional<uint64_t> KvCacheBudget(const BackendSetup& setup, const BackendOptions& options,
                                      uint64_t reserve);

}  // namespace shardlm
