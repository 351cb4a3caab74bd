// MPI (Open MPI) process groups over host memory: the CPU backend's communicator, and the host
// bootstrap channel the NCCL communicator uses to exchange its unique id.
//
// Every communicator here works on its own duplicate of an MPI communicator with
// MPI_ERRORS_RETURN set, so MPI failures come back as absl::Status instead of aborting.
// All calls are blocking and must come from the thread that initialized MPI (MPI_THREAD_FUNNELED).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace shardlm {

// Owns MPI initialization for the lifetime of the process: create it first thing in main(),
// destroy it after every MpiCommunicator is gone.
class MpiSession {
 public:
  // MPI_Init_thread(MPI_THREAD_FUNNELED). When MPI is already initialized (by someone else),
  // returns a session that does not finalize it. Fails once MPI has been finalized.
  static absl::StatusOr<std::unique_ptr<MpiSession>> Init(int* argc, char*** argv);

  // Whether this process was started by mpirun/mpiexec/srun (checks the environment they set:
  // OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK). The CLI uses it to decide whether to touch MPI.
  static bool LaunchedByMpirun();

  ~MpiSession();  // MPI_Finalize, when this session initialized MPI.
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Whether this session called MPI_Init_thread (and so will call MPI_Finalize).
  bool owns_mpi() const { return owns_mpi_; }

 private:
  explicit MpiSession(bool owns_mpi) : owns_mpi_(owns_mpi) {}
  bool owns_mpi_;
};

class MpiCommunicator final : public Communicator {
 public:
  // All processes of the job, on a duplicate of MPI_COMM_WORLD ("mpi world"). MPI must be
  // initialized (MpiSession).
  static absl::StatusOr<std::unique_ptr<Communicator>> World();

  ~MpiCommunicator() override;  // MPI_Comm_free, unless MPI is already finalized.
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const void* in, void* out, size_t bytes) override;
  absl::Status AllToAllV(const void* in, std::span<const size_t> send_bytes, void* out,
                         std::span<const size_t> recv_bytes) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
  absl::Status Send(const void* data, size_t bytes, int peer, int tag = 0) override;
  absl::Status Recv(void* data, size_t bytes, int peer, int tag = 0) override;
  absl::Status Barrier() override;
  // MPI_Comm_split; the new group is named "mpi <label>(color <color>)".
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key,
                                                      const std::string& label) override;

  // The underlying MPI communicator (owned by this object).
  MPI_Comm comm() const { return comm_; }

  // MPI counts are ints: transfers larger than this many bytes (INT_MAX by default) are split
  // into several MPI calls. Tests lower it to exercise the chunked paths with small buffers.
  static void SetMaxChunkBytesForTesting(size_t bytes);

 private:
  // Takes ownership of `comm`, which already has MPI_ERRORS_RETURN set.
  static absl::StatusOr<std::unique_ptr<Communicator>> Adopt(MPI_Comm comm, std::string name);
  MpiCommunicator(MPI_Comm comm, std::string name, int rank, int size)
      : comm_(comm), name_(std::move(name)), rank_(rank), size_(size) {}

  // " on <name> (rank r of n)": the context of the MPI checks' messages (base/check.h).
  std::string Where() const;
  absl::Status CheckPeer(const char* op, int peer) const;

  MPI_Comm comm_;
  std::string name_;
  int rank_;
  int size_;
};

}  // namespace shardlm
