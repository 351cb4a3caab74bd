#include "runtime/backend_setup.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "base/env.h"
#include "base/status_macros.h"
#include "runtime/faulty_backend.h"
#include "spdlog/spdlog.h"

#ifdef SHARDLM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#ifdef SHARDLM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace shardlm {
namespace {

// Every rank's values summed over the world (host communicator), to agree on choices.
absl::StatusOr<std::vector<float>> WorldSum(ParallelContext& ctx, std::vector<float> mine) {
  if (ctx.world->size() > 1) {
    SHARDLM_RETURN_IF_ERROR(ctx.world->AllReduceSum(mine.data(), mine.size()));
  }
  return mine;
}

}  // namespace

void AddBackendOptions(CLI::App& app, BackendOptions& o) {
  app.add_option("--backend", o.kind, "Compute backend: cpu, cuda, or auto (cuda if a GPU is visible)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->default_val(o.kind);
  app.add_option("--device", o.device,
                 "CUDA device of this rank (-1: the node-local rank modulo the visible devices)")
      ->default_val(o.device);
  app.add_option("--nccl", o.nccl,
                 "NCCL for activations between GPUs: auto (when each rank has its own GPU), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->default_val(o.nccl);
  app.add_option("--kv-dtype", o.kv_dtype, "KV cache element type on CUDA: bf16, f16 or f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->default_val(o.kv_dtype);
  app.add_option("--gpu-memory-fraction", o.gpu_memory_fraction,
                 "CUDA: share of the GPU's memory this rank may use; the KV cache gets what the "
                 "weights and activations leave")
      ->check(CLI::Range(0.05, 1.0))
      ->default_val(o.gpu_memory_fraction);
  app.add_option("--cuda-graphs", o.cuda_graphs, "CUDA: record decode steps as CUDA graphs")
      ->default_val(o.cuda_graphs);
  app.add_option("--inject-fault", o.inject_fault,
                 "For tests and failure drills: OP:N[:RANK][:oom|nan|sleep=S] makes the Nth call "
                 "of backend op OP (Linear, Embedding, ...) on world rank RANK (every rank when "
                 "left out) throw a device out-of-memory error (oom), write NaN into its output "
                 "(nan), or sleep S seconds before it runs normally (sleep=S: a long, healthy "
                 "step)");
}

bool CudaBuilt() {
#ifdef SHARDLM_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<BackendSetup> SetUpBackend(const BackendOptions& o, ParallelContext& ctx) {
  BackendSetup setup;
  int devices = 0;
#ifdef SHARDLM_HAVE_CUDA
  if (o.kind != "cpu") devices = CudaDeviceCount();
#endif
  const bool cuda = o.kind == "cuda" || (o.kind == "auto" && devices > 0);
  absl::Status usable;
  if (o.kind == "cuda" && !CudaBuilt()) {
    usable = absl::FailedPreconditionError(
        "--backend cuda: this build has no CUDA backend (configure with -DSHARDLM_CUDA=ON)");
  } else if (cuda && devices == 0) {
    usable = absl::FailedPreconditionError("--backend cuda: no CUDA device is visible");
  } else if (cuda && o.device >= devices) {
    usable = absl::InvalidArgumentError(absl::StrCat("--device ", o.device, ": only ", devices,
                                                     " CUDA devices are visible"));
  }
  // A bad --inject-fault is refused like an unusable backend, after the agreement below.
  std::optional<FaultSpec> fault;
  if (!o.inject_fault.empty()) {
    absl::StatusOr<FaultSpec> parsed = ParseFaultSpec(o.inject_fault);
    if (!parsed.ok()) {
      usable.Update(parsed.status());
    } else {
      fault = *parsed;
      if (fault->rank < 0 || fault->rank == ctx.shard.rank) {
        spdlog::warn("rank {}: --inject-fault {}: call {} of {} will {}", ctx.shard.rank,
                     fault->ToString(), fault->call, fault->op,
                     fault->kind == FaultSpec::Kind::kSleep
                         ? absl::StrCat("sleep ", fault->sleep_s, " s")
                         : std::string("fail"));
      }
    }
  }
  // Every op goes through a FaultyBackend, which names the op a failure comes out of.
  auto guard = [&](BackendSetup& s) {
    s.backend = std::make_unique<FaultyBackend>(std::move(s.backend), ctx.shard.rank, fault);
  };
  // Every rank runs the same backend: a mix would make the collectives disagree. Every rank
  // reaches this sum, failed or not, so that none waits for another.
  SHARDLM_ASSIGN_OR_RETURN(const std::vector<float> first,
                           WorldSum(ctx, {cuda ? 1.0f : 0.0f, usable.ok() ? 0.0f : 1.0f}));
  SHARDLM_RETURN_IF_ERROR(usable);
  if (first[1] > 0) return absl::AbortedError("another rank cannot run the backend (see its log)");
  const float cuda_ranks = first[0];
  if (cuda_ranks != 0.0f && cuda_ranks != static_cast<float>(ctx.world->size())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--backend ", o.kind, ": ", cuda_ranks, " of ", ctx.world->size(),
        " ranks see a CUDA device; every rank must run the same backend"));
  }

  if (!cuda) {
    setup.threads = ThreadsPerRank(o.threads);
    try {
      setup.backend = CreateCpuBackend(setup.threads);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(e.what());
    }
    setup.description =
        absl::StrCat("cpu (", setup.threads, " threads, OpenBLAS ", BlasCoreName(), " kernels)");
    guard(setup);
    return setup;
  }

#ifdef SHARDLM_HAVE_CUDA
  setup.cuda = true;
  setup.device = o.device >= 0 ? o.device : NodeLocalRank() % devices;
  const DType kv = o.kv_dtype == "f32" ? DType::kF32
                                       : (o.kv_dtype == "f16" ? DType::kF16 : DType::kBF16);
  absl::Status created;
  try {
    setup.backend = CreateCudaBackend(setup.device, kv);
  } catch (const std::exception& e) {
    created = absl::FailedPreconditionError(absl::StrCat("CUDA backend on device ", setup.device,
                                                         ": ", e.what()));
  }
  setup.description = absl::StrCat("cuda:", setup.device, " (KV ", o.kv_dtype);
  // NCCL needs one device per rank: ranks that share a GPU (a test on one GPU) go through MPI.
  const bool own_device = NodeLocalSize() <= devices;
  bool want = o.nccl == "on" || (o.nccl == "auto" && own_device);
#ifndef SHARDLM_HAVE_NCCL
  if (o.nccl == "on") {
    created.Update(absl::FailedPreconditionError("--nccl on: this build has no NCCL communicator"));
  }
  want = false;
#endif
  // One agreement on both: a rank that failed must not leave the others in NCCL's set-up.
  SHARDLM_ASSIGN_OR_RETURN(const std::vector<float> sums,
                           WorldSum(ctx, {created.ok() ? 0.0f : 1.0f, want ? 1.0f : 0.0f}));
  SHARDLM_RETURN_IF_ERROR(created);
  if (sums[0] > 0) {
    return absl::AbortedError("another rank failed to create its CUDA backend (see its log)");
  }
  if (ctx.world->size() > 1) {
    const bool nccl = sums[1] == static_cast<float>(ctx.world->size());
    if (o.nccl == "on" && !nccl) {
      return absl::FailedPreconditionError(
          "--nccl on: some ranks share a GPU (more ranks on a node than devices); NCCL needs one "
          "GPU per rank");
    }
#ifdef SHARDLM_HAVE_NCCL
    if (nccl) {
      cudaStream_t stream = CudaBackendStream(*setup.backend);
      auto make = [&](Communicator& bootstrap) -> absl::StatusOr<std::shared_ptr<Communicator>> {
        SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> c,
                                 NcclCommunicator::Create(bootstrap, setup.device, stream));
        static_cast<NcclCommunicator&>(*c).set_synchronous(false);
        return std::shared_ptr<Communicator>(std::move(c));
      };
      SHARDLM_ASSIGN_OR_RETURN(ctx.tp_device, make(*ctx.tp));
      if (ctx.plan.pp > 1) {
        SHARDLM_ASSIGN_OR_RETURN(ctx.world_device, make(*ctx.world));
      }
    }
#endif
    absl::StrAppend(&setup.description, nccl ? ", NCCL" : ", activations through MPI");
  }
  absl::StrAppend(&setup.description, ")");
  guard(setup);
  return setup;
#else
  return absl::FailedPreconditionError("no CUDA backend in this build");
#endif
}

std::optional<uint64_t> KvCacheBudget(const BackendSetup& setup, const BackendOptions& o,
                                      uint64_t reserve) {
  if (!setup.cuda) return std::nullopt;
#ifdef SHARDLM_HAVE_CUDA
  setup.backend->Synchronize();
  const CudaMemory m = CudaMemoryInfo(setup.device);
  const double allowed = o.gpu_memory_fraction * static_cast<double>(m.total);
  const double used = static_cast<double>(m.total - m.free);
  const double budget = allowed - used - static_cast<double>(reserve);
  return budget > 0 ? static_cast<uint64_t>(budget) : 0;
#else
  return std::nullopt;
#endif
}

}  // namespace shardlm
