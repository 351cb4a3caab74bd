// NCCL process groups over DEVICE memory (CUDA builds): the GPU backend's communicator.
//
// One communicator drives one GPU on one CUDA stream. Every operation is enqueued on that stream.
// By default the stream is then synchronized before the call returns, so buffers can be reused
// (and errors are known) as soon as a call comes back. set_synchronous(false) makes the calls
// stream-ordered only: for a communicator on the compute backend's own stream (the model's
// all-reduces), whose later kernels are ordered after it anyway. While the stream is being
// captured into a CUDA graph no call waits for the stream. Barrier always waits: it is a barrier
// in both modes.
//
// Failures: a peer that died or stopped calling collectives must not hang this rank. The NCCL
// communicators are non-blocking (ncclConfig_t blocking = 0): no NCCL call blocks the host, and
// every wait (creation, split, an operation's enqueue, the stream's completion) polls
// ncclCommGetAsyncError and cudaStreamQuery with short sleeps, up to a timeout
// (SHARDLM_NCCL_TIMEOUT_S, default 300 s; set_timeout). On an asynchronous NCCL error or the
// timeout the communicator is aborted (ncclCommAbort: its queued kernels end), the call returns
// the error naming the operation, the group and the number of peers (Unavailable for a timeout or
// a remote failure), and every later call returns FailedPrecondition with that first error.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
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
  // then every rank joins with ncclCommInitRankConfig(bootstrap.size(), id, bootstrap.rank()),
  // non-blocking, polled up to `timeout`.
  // Operations run on `stream` (nullptr: the legacy default stream); the caller keeps ownership
  // of the stream and must keep it alive as long as the communicator.
  // `timeout`: how long any one wait may take (see above).
  static absl::StatusOr<std::unique_ptr<Communicator>> Create(
      Communicator& bootstrap, int device, cudaStream_t stream = nullptr,
      std::chrono::milliseconds timeout = DefaultTimeout());

  // SHARDLM_NCCL_TIMEOUT_S seconds when set to a positive integer, else 300 s.
  static std::chrono::milliseconds DefaultTimeout();

  // Frees the scratch buffer; ncclCommFinalize (flushing what is queued, polled up to the
  // timeout) and ncclCommDestroy, or ncclCommAbort when that fails or times out.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  // All pointers are device pointers on this communicator's device.
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const void* in, void* out, size_t bytes) override;
  absl::Status AllToAllV(const void* in, std::span<const size_t> send_bytes, void* out,
                         std::span<const size_t> recv_bytes) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  // NCCL has no tags: `tag` is ignored, sends and receives between two ranks match in order.
  absl::Status Send(const void* data, size_t bytes, int peer, int tag = 0) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag = 0) override;
  // An all-reduce of one float on a device scratch buffer, then a wait for the stream, in both
  // modes (FailedPrecondition while the stream is captured: a graph cannot wait).
  absl::Status Barrier() override;
  // ncclCommSplit (NCCL >= 2.18, else Unimplemented); named "nccl <label>(color <color>)"; the
  // new group has this one's timeout.
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      const std::string& label) override;

  void set_synchronous(bool synchronous) { synchronous_ = synchronous; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  // The first failure that aborted the communicator; OK while it works.
  const absl::Status& aborted() const { return aborted_; }
  ncclComm_t comm() const { return comm_; }  // nullptr once aborted
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

 private:
  // Takes ownership of `comm` (whose creation has completed); allocates the barrier scratch
  // buffer.
  static absl::StatusOr<std::unique_ptr<Communicator>> Adopt(ncclComm_t comm, int device,
                                                             cudaStream_t stream, std::string name,
                                                             std::chrono::milliseconds timeout);
  NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream, std::string name, int rank,
                   int size, float* scratch, std::chrono::milliseconds timeout);

  // " on <name> (rank r of n)", for messages.
  std::string Where() const;
  // Makes `device_` current (the calling thread may have switched); FailedPrecondition once the
  // communicator was aborted.
  absl::Status Ready() const;
  // After `op` was enqueued: waits until NCCL has enqueued it and, when `wait_stream` (and the
  // stream is not being captured), until the stream's work is done; aborts on failure.
  absl::Status Wait(const char* op, bool wait_stream);
  // ncclCommAbort, once; returns `why` with a note that the communicator is gone.
  absl::Status Abort(absl::Status why);
  absl::Status CheckPeer(const char* op, int peer) const;

  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  std::string name_;
  int rank_;
  int size_;
  float* scratch_;  // one float on the device, for Barrier
  std::chrono::milliseconds timeout_;
  bool synchronous_ = true;
  absl::Status aborted_;  // the failure that aborted comm_
};

}  // namespace shardlm
