// NCCL process groups over DEVICE memory (CUDA builds): the GPU backend's communicator.
//
// One communicator drives one GPU on one CUDA stream. Every operation is enqueued on that stream.
// By default the stream is then synchronized before the call returns, so buffers can be reused
// (and errors are known) as soon as a call comes back. set_synchronous(false) makes the calls
// stream-ordered only: for a communicator on the compute backend's own stream (the model's
// all-reduces), whose later kernels are ordered after it anyway. While the stream is being
// captured into a CUDA graph no call waits.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace shardlm {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap` (a host-memory communicator, e.g. MpiCommunicator::World()):
  // selects `device`, rank 0 creates the NCCL unique id and broadcasts it through `bootstrap`,
  // then every rank joins with ncclCommInitRank(bootstrap.size(), id, bootstrap.rank()).
  // Operations run on `stream` (nullptr: the legacy default stream); the caller keeps ownership
  // of the stream and must keep it alive as long as the communicator.
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(Communicator& bootstrap, int device,
                                                              cudaStream_t stream = nullptr);

  ~NcclCommunicator() override;  // ncclCommDestroy + frees the scratch buffer.
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  // All pointers are device pointers on this communicator's device.
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const void* in, void* out, size_t bytes) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  // NCCL has no tags: `tag` is ignored, sends and receives between two ranks match in order.
  absl::Status Send(const void* data, size_t bytes, int peer, int tag = 0) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag = 0) override;
  // An all-reduce of one float on a device scratch buffer, then a stream synchronize.
  absl::Status Barrier() override;
  // ncclCommSplit (NCCL >= 2.18, else Unimplemented); named "nccl <label>(color <color>)".
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      const std::string& label) override;

  void set_synchronous(bool synchronous) { synchronous_ = synchronous; }
  ncclComm_t comm() const { return comm_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

 private:
  // Takes ownership of `comm`; allocates the barrier scratch buffer.
  static absl::StatusOr<std::unique_ptr<Communicator>> Adopt(ncclComm_t comm, int device,
                                                             cudaStream_t stream,
                                                             std::string name);
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream, std::string name, int rank,
                   int size, float* scratch);

  // " on <name> (rank r of n)", for messages.
  std::string Where() const;
  // Makes `device_` current, the calling thread may have switched.
  absl::Status SetDevice() const;
  // Synchronizes the stream, then reports any asynchronous NCCL error.
  absl::Status Sync(const char* op) const;
  absl::Status CheckPeer(const char* op, int peer) const;

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  std::string name_;
  int rank_;
  int size_;
  float* scratch_;  // one float on the device, for Barrier
  bool synchronous_ = true;
};

}  // namespace shardlm
