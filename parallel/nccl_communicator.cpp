#include "parallel/nccl_communicator.h"

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace shardlm {

// Every CUDA and NCCL call goes through the checks of base/check.h (SHARDLM_*_RETURN_ON): the
// message names the call, the group and this rank in it (" on nccl tp(color 0) (rank 1 of 2)"),
// the error with NCCL's own description of the last failure on this communicator, the world rank,
// the device and file:line.

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(Communicator& bootstrap,
                                                                       int device,
                                                                       cudaStream_t stream) {
  // "mpi world" -> "nccl world", "mpi tp(color 1)" -> "nccl tp(color 1)".
  std::string name = bootstrap.name();
  name = name.rfind("mpi ", 0) == 0 ? absl::StrCat("nccl ", name.substr(4))
                                    : absl::StrCat("nccl(", name, ")");
  const std::string where =
      absl::StrCat(" on ", name, " (rank ", bootstrap.rank(), " of ", bootstrap.size(), ")");

  // Every rank must reach ncclCommInitRank, or the others wait there forever: agree first that
  // all of them could select their device.
  const cudaError_t set_device = cudaSetDevice(device);
  float failed = set_device == cudaSuccess ? 0.0f : 1.0f;
  SHARDLM_RETURN_IF_ERROR(bootstrap.AllReduceSum(&failed, 1));
  if (set_device != cudaSuccess) {
    return CheckFailureStatus("CUDA", "cudaSetDevice(device)",
                              absl::StrCat(where, " (device ", device, ")"),
                              SHARDLM_CUDA_ERROR_TEXT(set_device), __FILE__, __LINE__);
  }
  if (failed > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("NcclCommunicator::Create", where, ": ", static_cast<int>(failed),
                     " other rank(s) could not select their CUDA device"));
  }

  // Rank 0 makes the id; its result travels with it so that a failure reaches every rank.
  struct {
    ncclUniqueId id;
    int32_t result;
  } unique{};
  if (bootstrap.rank() == 0) unique.result = ncclGetUniqueId(&unique.id);
  SHARDLM_RETURN_IF_ERROR(bootstrap.Broadcast(&unique, sizeof(unique), /*root=*/0));
  if (unique.result != ncclSuccess) {
    const auto result = static_cast<ncclResult_t>(unique.result);
    return CheckFailureStatus("NCCL", "ncclGetUniqueId(&unique.id)",
                              absl::StrCat(where, " (on rank 0)"), ncclGetErrorString(result),
                              __FILE__, __LINE__, SHARDLM_NCCL_STATUS_CODE(result));
  }

  ncclComm_t comm = nullptr;
  SHARDLM_NCCL_RETURN_ON(ncclCommInitRank(&comm, bootstrap.size(), unique.id, bootstrap.rank()),
                         nullptr, where);
  return Adopt(comm, device, stream, std::move(name));
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Adopt(ncclComm_t comm, int device,
                                                                      cudaStream_t stream,
                                                                      std::string name) {
  int rank = 0;
  int size = 0;
  float* scratch = nullptr;
  absl::Status status = [&]() -> absl::Status {
    const std::string where = absl::StrCat(" on ", name);
    SHARDLM_NCCL_RETURN_ON(ncclCommUserRank(comm, &rank), comm, where);
    SHARDLM_NCCL_RETURN_ON(ncclCommCount(comm, &size), comm, where);
    SHARDLM_CUDA_RETURN_ON(cudaMalloc(reinterpret_cast<void**>(&scratch), sizeof(float)), where);
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    // The error being returned is the one to report; a failed clean-up would only hide it.
    static_cast<void>(ncclCommDestroy(comm));
    return status;
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, device, stream, std::move(name), rank, size, scratch));
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream,
                                   std::string name, int rank, int size, float* scratch)
    : comm_(comm),
      device_(device),
      stream_(stream),
      name_(std::move(name)),
      rank_(rank),
      size_(size),
      scratch_(scratch) {}

NcclCommunicator::~NcclCommunicator() {
  // Destructors cannot return a Status: log and go on.
  if (cudaSetDevice(device_) != cudaSuccess) {
    spdlog::warn("~NcclCommunicator{}: cannot select device {}", Where(), device_);
  }
  if (scratch_ != nullptr && cudaFree(scratch_) != cudaSuccess) {
    spdlog::warn("~NcclCommunicator{}: cudaFree of the barrier scratch failed", Where());
  }
  const ncclResult_t result = ncclCommDestroy(comm_);
  if (result != ncclSuccess) {
    spdlog::warn("ncclCommDestroy{}: {}", Where(), ncclGetErrorString(result));
  }
}

std::string NcclCommunicator::Where() const {
  return absl::StrCat(" on ", name_, " (rank ", rank_, " of ", size_, ")");
}

absl::Status NcclCommunicator::SetDevice() const {
  SetCheckDevice(device_);
  SHARDLM_CUDA_RETURN_ON(cudaSetDevice(device_), Where());
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Sync(const char* op) const {
  // The `where` arguments are only built on failure. While the stream is captured into a CUDA
  // graph nothing may wait on it; in stream-ordered mode nothing needs to.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SHARDLM_CUDA_RETURN_ON(cudaStreamIsCapturing(stream_, &capture), Where());
  if (synchronous_ && capture == cudaStreamCaptureStatusNone) {
    SHARDLM_CUDA_RETURN_ON(cudaStreamSynchronize(stream_),
                           absl::StrCat(Where(), " (after ", op, ")"));
  }
  ncclResult_t async = ncclSuccess;
  SHARDLM_NCCL_RETURN_ON(ncclCommGetAsyncError(comm_, &async), comm_,
                         absl::StrCat(Where(), " (after ", op, ")"));
  // The asynchronous error is the result of `op`, which ran on the stream after its call returned.
  if (async != ncclSuccess) {
    return CheckFailureStatus("NCCL", op, absl::StrCat(Where(), " (asynchronous error)"),
                              SHARDLM_NCCL_ERROR_TEXT(async, comm_), __FILE__, __LINE__,
                              SHARDLM_NCCL_STATUS_CODE(async));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::CheckPeer(const char* op, int peer) const {
  if (peer >= 0 && peer < size_) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, Where(), ": rank ", peer, " is not in the group"));
}

// Each operation below enqueues on stream_ and, when synchronous_, waits for it (see header).

absl::Status NcclCommunicator::AllReduceSum(float* data, size_t count) {
  if (count == 0) return absl::OkStatus();
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_),
                         comm_, Where());
  return Sync("ncclAllReduce");
}

absl::Status NcclCommunicator::AllGather(const void* in, void* out, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclAllGather(in, out, bytes, ncclChar, comm_, stream_), comm_, Where());
  return Sync("ncclAllGather");
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclBroadcast", root));
  if (bytes == 0) return absl::OkStatus();
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_), comm_,
                         Where());
  return Sync("ncclBroadcast");
}

absl::Status NcclCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclSend", peer));
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclSend(data, bytes, ncclChar, peer, comm_, stream_), comm_,
                         absl::StrCat(Where(), " to rank ", peer));
  return Sync("ncclSend");
}

absl::Status NcclCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclRecv", peer));
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclRecv(data, bytes, ncclChar, peer, comm_, stream_), comm_,
                         absl::StrCat(Where(), " from rank ", peer));
  return Sync("ncclRecv");
}

absl::Status NcclCommunicator::Barrier() {
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  SHARDLM_NCCL_RETURN_ON(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_),
                         comm_, absl::StrCat(Where(), " (barrier)"));
  return Sync("barrier");
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Split(int color, int key,
                                                                      const std::string& label) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  SHARDLM_RETURN_IF_ERROR(SetDevice());
  ncclComm_t comm = nullptr;
  // config nullptr: the new communicator inherits this one's configuration.
  SHARDLM_NCCL_RETURN_ON(ncclCommSplit(comm_, color, key, &comm, nullptr), comm_, Where());
  if (comm == nullptr) {  // color == NCCL_SPLIT_NOCOLOR
    return absl::InvalidArgumentError(
        absl::StrCat("ncclCommSplit", Where(), ": color ", color, " gives no group"));
  }
  return Adopt(comm, device_, stream_, absl::StrCat("nccl ", label, "(color ", color, ")"));
#else
  return absl::UnimplementedError(absl::StrCat(
      "Split", Where(), ": ncclCommSplit needs NCCL >= 2.18, built with ", NCCL_VERSION_CODE));
#endif
}

}  // namespace shardlm
