#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace shardlm {
namespace {

// Largest transfer, in bytes, done by a single MPI call (MPI counts are ints).
size_t g_max_chunk_bytes = INT_MAX;

bool Overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto a0 = reinterpret_cast<uintptr_t>(a);
  const auto b0 = reinterpret_cast<uintptr_t>(b);
  return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

int ChunkCount(size_t bytes) { return static_cast<int>(std::min(bytes, g_max_chunk_bytes)); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// MpiSession

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Init(int* argc, char*** argv) {
  int initialized = 0;
  int finalized = 0;
  SHARDLM_MPI_RETURN(MPI_Initialized(&initialized));
  SHARDLM_MPI_RETURN(MPI_Finalized(&finalized));
  if (finalized) return absl::FailedPreconditionError("MPI_Init: MPI is already finalized");
  if (initialized) return std::unique_ptr<MpiSession>(new MpiSession(/*owns_mpi=*/false));

  // FUNNELED: OpenMP threads compute, but only the main thread calls MPI.
  int provided = MPI_THREAD_SINGLE;
  SHARDLM_MPI_RETURN(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  if (provided < MPI_THREAD_FUNNELED) {
    spdlog::warn("MPI_Init_thread: asked for MPI_THREAD_FUNNELED, the library provides level {}",
                 provided);
  }
  // Errors on MPI_COMM_WORLD itself (e.g. in MPI_Comm_dup) come back as codes too.
  SHARDLM_MPI_RETURN(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  return std::unique_ptr<MpiSession>(new MpiSession(/*owns_mpi=*/true));
}

bool MpiSession::LaunchedByMpirun() {
  // Open MPI's mpirun, PMI (MPICH/Hydra, Slurm srun --mpi=pmi2) and PMIx launchers.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

MpiSession::~MpiSession() {
  if (!owns_mpi_) return;
  // A destructor has nobody to report to, and the process is ending: results are dropped.
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) static_cast<void>(MPI_Finalize());
}

// ---------------------------------------------------------------------------------------------
// MpiCommunicator

void MpiCommunicator::SetMaxChunkBytesForTesting(size_t bytes) {
  g_max_chunk_bytes = std::clamp<size_t>(bytes, 1, INT_MAX);
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::World() {
  int initialized = 0;
  SHARDLM_MPI_RETURN(MPI_Initialized(&initialized));
  if (!initialized) {
    return absl::FailedPreconditionError("MpiCommunicator::World: MPI is not initialized");
  }
  MPI_Comm comm = MPI_COMM_NULL;
  SHARDLM_MPI_RETURN(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  return Adopt(comm, "mpi world");
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::Adopt(MPI_Comm comm,
                                                                     std::string name) {
  int rank = 0;
  int size = 0;
  absl::Status status = [&]() -> absl::Status {
    const std::string where = absl::StrCat(" setting up ", name);
    SHARDLM_MPI_RETURN_ON(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), where);
    SHARDLM_MPI_RETURN_ON(MPI_Comm_rank(comm, &rank), where);
    SHARDLM_MPI_RETURN_ON(MPI_Comm_size(comm, &size), where);
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    // The error being returned is the one to report; a failed clean-up would only hide it.
    static_cast<void>(MPI_Comm_free(&comm));
    return status;
  }
  return std::unique_ptr<Communicator>(new MpiCommunicator(comm, std::move(name), rank, size));
}

MpiCommunicator::~MpiCommunicator() {
  // A destructor cannot report: a communicator that fails to free is dropped with the process.
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized && comm_ != MPI_COMM_NULL) {
    static_cast<void>(MPI_Comm_free(&comm_));
  }
}

std::string MpiCommunicator::Where() const {
  return absl::StrCat(" on ", name_, " (rank ", rank_, " of ", size_, ")");
}

absl::Status MpiCommunicator::CheckPeer(const char* op, int peer) const {
  if (peer >= 0 && peer < size_) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, " on ", name_, " (rank ", rank_, " of ",
                                                 size_, "): rank ", peer, " is not in the group"));
}

absl::Status MpiCommunicator::AllReduceSum(float* data, size_t count) {
  const size_t chunk = std::max<size_t>(g_max_chunk_bytes / sizeof(float), 1);
  for (size_t done = 0; done < count; done += chunk) {
    const int n = static_cast<int>(std::min(count - done, chunk));
    SHARDLM_MPI_RETURN_ON(MPI_Allreduce(MPI_IN_PLACE, data + done, n, MPI_FLOAT, MPI_SUM, comm_),
                          Where());
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllGather(const void* in, void* out, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  char* out_bytes = static_cast<char*>(out);
  const char* in_bytes = static_cast<const char*>(in);
  const size_t total = bytes * static_cast<size_t>(size_);
  // MPI forbids aliasing the send and receive buffers except through MPI_IN_PLACE, which takes
  // this rank's piece from its slot in `out`.
  const bool in_place = in_bytes == out_bytes + static_cast<size_t>(rank_) * bytes;
  std::vector<char> copy;
  if (!in_place && Overlaps(in_bytes, bytes, out_bytes, total)) {
    copy.assign(in_bytes, in_bytes + bytes);
    in_bytes = copy.data();
  }

  if (bytes <= g_max_chunk_bytes) {
    const int n = static_cast<int>(bytes);
    SHARDLM_MPI_RETURN_ON(MPI_Allgather(in_place ? MPI_IN_PLACE : in_bytes, n, MPI_BYTE,
                                        out_bytes, n, MPI_BYTE, comm_),
                          Where());
    return absl::OkStatus();
  }
  // Too large for an int count: gather piece by piece. A piece of `n` bytes is received with a
  // type whose extent is `bytes`, so rank r's piece lands at out + r * bytes + done.
  for (size_t done = 0; done < bytes; done += g_max_chunk_bytes) {
    const int n = ChunkCount(bytes - done);
    MPI_Datatype piece = MPI_DATATYPE_NULL;
    MPI_Datatype strided = MPI_DATATYPE_NULL;
    const absl::Status gathered = [&]() -> absl::Status {
      SHARDLM_MPI_RETURN_ON(MPI_Type_contiguous(n, MPI_BYTE, &piece), Where());
      SHARDLM_MPI_RETURN_ON(
          MPI_Type_create_resized(piece, 0, static_cast<MPI_Aint>(bytes), &strided), Where());
      SHARDLM_MPI_RETURN_ON(MPI_Type_commit(&strided), Where());
      SHARDLM_MPI_RETURN_ON(MPI_Allgather(in_place ? MPI_IN_PLACE : in_bytes + done, n, MPI_BYTE,
                                          out_bytes + done, 1, strided, comm_),
                            Where());
      return absl::OkStatus();
    }();
    // Freeing the types can only fail for a type that was never made: nothing to report then.
    if (strided != MPI_DATATYPE_NULL) static_cast<void>(MPI_Type_free(&strided));
    if (piece != MPI_DATATYPE_NULL) static_cast<void>(MPI_Type_free(&piece));
    SHARDLM_RETURN_IF_ERROR(gathered);
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::AllToAllV(const void* in, std::span<const size_t> send_bytes,
                                        void* out, std::span<const size_t> recv_bytes) {
  const size_t n = static_cast<size_t>(size_);
  if (send_bytes.size() != n || recv_bytes.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("MPI_Alltoallv", Where(), ": expected ", n,
                                                   " send and receive counts, got ",
                                                   send_bytes.size(), " and ", recv_bytes.size()));
  }
  // MPI counts and displacements are ints; the exchanges of one step stay far below that.
  std::vector<int> counts(4 * n);
  int* send_counts = counts.data();
  int* send_displs = send_counts + n;
  int* recv_counts = send_displs + n;
  int* recv_displs = recv_counts + n;
  size_t sent = 0, received = 0;
  for (size_t p = 0; p < n; ++p) {
    if (sent + send_bytes[p] > INT_MAX || received + recv_bytes[p] > INT_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("MPI_Alltoallv", Where(), ": more than ", INT_MAX,
                       " bytes in one exchange (", sent + send_bytes[p], " sent, ",
                       received + recv_bytes[p], " received by rank ", p, ")"));
    }
    send_counts[p] = static_cast<int>(send_bytes[p]);
    send_displs[p] = static_cast<int>(sent);
    recv_counts[p] = static_cast<int>(recv_bytes[p]);
    recv_displs[p] = static_cast<int>(received);
    sent += send_bytes[p];
    received += recv_bytes[p];
  }
  SHARDLM_MPI_RETURN_ON(MPI_Alltoallv(in, send_counts, send_displs, MPI_BYTE, out, recv_counts,
                                      recv_displs, MPI_BYTE, comm_),
                        Where());
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Broadcast(void* data, size_t bytes, int root) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("MPI_Bcast", root));
  char* p = static_cast<char*>(data);
  for (size_t done = 0; done < bytes; done += g_max_chunk_bytes) {
    SHARDLM_MPI_RETURN_ON(MPI_Bcast(p + done, ChunkCount(bytes - done), MPI_BYTE, root, comm_),
                          Where());
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("MPI_Send", peer));
  const char* p = static_cast<const char*>(data);
  // A zero-byte message still goes out, so it matches the peer's zero-byte Recv.
  size_t done = 0;
  do {
    SHARDLM_MPI_RETURN_ON(MPI_Send(p + done, ChunkCount(bytes - done), MPI_BYTE, peer, tag, comm_),
                          Where());
    done += g_max_chunk_bytes;
  } while (done < bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("MPI_Recv", peer));
  char* p = static_cast<char*>(data);
  size_t done = 0;
  do {
    const int n = ChunkCount(bytes - done);
    MPI_Status status;
    SHARDLM_MPI_RETURN_ON(MPI_Recv(p + done, n, MPI_BYTE, peer, tag, comm_, &status), Where());
    // A shorter message than expected is not an MPI error, but it is one here.
    int got = 0;
    SHARDLM_MPI_RETURN_ON(MPI_Get_count(&status, MPI_BYTE, &got), Where());
    if (got != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("MPI_Recv on ", name_, " (rank ", rank_, " of ", size_, "): expected ",
                       bytes, " bytes from rank ", peer, " (tag ", tag, "), got ", done + got));
    }
    done += g_max_chunk_bytes;
  } while (done < bytes);
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Barrier() {
  SHARDLM_MPI_RETURN_ON(MPI_Barrier(comm_), Where());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiCommunicator::Split(int color, int key,
                                                                     const std::string& label) {
  MPI_Comm comm = MPI_COMM_NULL;
  SHARDLM_MPI_RETURN_ON(MPI_Comm_split(comm_, color, key, &comm), Where());
  if (comm == MPI_COMM_NULL) {  // color == MPI_UNDEFINED
    return absl::InvalidArgumentError(absl::StrCat("MPI_Comm_split on ", name_, " (rank ", rank_,
                                                   " of ", size_, "): color ", color,
                                                   " gives no group"));
  }
  return Adopt(comm, absl::StrCat("mpi ", label, "(color ", color, ")"));
}

}  // namespace shardlm
