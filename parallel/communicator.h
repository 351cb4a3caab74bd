// Collective and point-to-point communication between the ranks of one group (a TP group, a PP
// pair, the whole world). The model and the parallel layers only see this interface:
//   - LocalCommunicator: one rank, every collective is the identity (tp = pp = 1, no MPI at all);
//   - MpiCommunicator (parallel/mpi_communicator.h): OpenMPI over host memory (CPU backend);
//   - NcclCommunicator (parallel/nccl_communicator.h, CUDA builds): device memory.
// Buffers live in the memory the communicator works on (host for MPI, device for NCCL). Every
// rank of the group must call a collective with the same sizes, in the same order.
//
// Failures (a peer that died, an MPI error) come back as absl::Status naming the operation, the
// group and the ranks involved; they never abort the process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shardlm {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  // For messages: "mpi world", "mpi tp(stage 1)", "local".
  virtual std::string name() const = 0;

  // data[i] = sum over ranks of data[i], in place, for i < count.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // out = the `bytes` of `in` from rank 0, then rank 1, ... (size() * bytes in all).
  virtual absl::Status AllGather(const void* in, void* out, size_t bytes) = 0;
  // Personalised all-to-all (expert parallelism): this rank sends send_bytes[p] bytes to rank p,
  // taken from `in` packed in rank order, and receives recv_bytes[p] bytes from rank p into `out`,
  // packed in rank order. Both spans have size() entries; send_bytes[p] here must equal
  // recv_bytes[this rank] on rank p. `in` and `out` must not overlap.
  virtual absl::Status AllToAllV(const void* in, std::span<const size_t> send_bytes, void* out,
                                 std::span<const size_t> recv_bytes) = 0;
  // The `bytes` at data on `root` are copied to data on every other rank.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
  // Blocking point-to-point transfer of `bytes`; `peer` is a rank of this group. A Send is
  // matched by the Recv of the same tag on the peer.
  virtual absl::Status Send(const void* data, size_t bytes, int peer, int tag = 0) = 0;
  virtual absl::Status Recv(void* data, size_t bytes, int peer, int tag = 0) = 0;
  virtual absl::Status Barrier() = 0;

  // Collective over this group: a new group of the ranks that pass the same `color`, ordered by
  // `key` (then by rank here). `label` names it in messages ("tp", "pp").
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                              const std::string& label) = 0;
};

// A group of one: collectives are the identity (AllGather copies), Send/Recv are errors.
std::unique_ptr<Communicator> CreateLocalCommunicator();

}  // namespace shardlm
