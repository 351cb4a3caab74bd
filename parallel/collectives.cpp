#include "parallel/collectives.h"

#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace shardlm {

absl::Status AgreeOnStatus(Communicator& world, const absl::Status& status) {
  if (world.size() == 1) return status;
  // Each rank contributes 1 at its own index when it failed.
  std::vector<float> failed(static_cast<size_t>(world.size()), 0.0f);
  failed[static_cast<size_t>(world.rank())] = status.ok() ? 0.0f : 1.0f;
  SHARDLM_RETURN_IF_ERROR(world.AllReduceSum(failed.data(), failed.size()));
  if (!status.ok()) return status;
  for (int r = 0; r < world.size(); ++r) {
    if (failed[static_cast<size_t>(r)] != 0.0f) {
      return absl::AbortedError(absl::StrCat("rank ", r, " failed (see its message); stopping"));
    }
  }
  return absl::OkStatus();
}

absl::Status SendToNextStage(Backend& backend, const ParallelContext& ctx, const Tensor& x) {
  const int next = ctx.shard.rank + ctx.plan.tp;
  const int tag = static_cast<int>(MpiTag::kActivations);
  if (x.device() != Device::kCpu && ctx.world_device != nullptr) {
    return ctx.world_device->Send(x.raw(), x.nbytes(), next, tag);
  }
  const Tensor host = backend.ToHost(x);
  return ctx.world->Send(host.raw(), host.nbytes(), next, tag);
}

absl::Status RecvFromPreviousStage(Backend& backend, const ParallelContext& ctx, Tensor& x) {
  const int prev = ctx.shard.rank - ctx.plan.tp;
  const int tag = static_cast<int>(MpiTag::kActivations);
  if (x.device() != Device::kCpu && ctx.world_device != nullptr) {
    return ctx.world_device->Recv(x.raw(), x.nbytes(), prev, tag);
  }
  Tensor host = Tensor::Empty(x.shape(), DType::kF32);
  SHARDLM_RETURN_IF_ERROR(ctx.world->Recv(host.raw(), host.nbytes(), prev, tag));
  x = backend.ToDevice(host);
  return absl::OkStatus();
}

absl::Status SendFrame(Communicator& comm, const std::string& bytes, int peer) {
  const uint64_t size = bytes.size();
  SHARDLM_RETURN_IF_ERROR(
      comm.Send(&size, sizeof(size), peer, static_cast<int>(MpiTag::kFrameSize)));
  return comm.Send(bytes.data(), bytes.size(), peer, static_cast<int>(MpiTag::kFrameBytes));
}

absl::Status RecvFrame(Communicator& comm, std::string& bytes, int peer) {
  uint64_t size = 0;
  SHARDLM_RETURN_IF_ERROR(
      comm.Recv(&size, sizeof(size), peer, static_cast<int>(MpiTag::kFrameSize)));
  bytes.assign(size, '\0');
  return comm.Recv(bytes.data(), size, peer, static_cast<int>(MpiTag::kFrameBytes));
}

}  // namespace shardlm
