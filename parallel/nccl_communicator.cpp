#include "parallel/nccl_communicator.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/check.h"
#include "base/env.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace shardlm {

// Every CUDA and NCCL call goes through the checks of base/check.h (SHARDLM_*_RETURN_ON): the
// message names the call, the group and this rank in it (" on nccl tp(color 0) (rank 1 of 2)"),
// the error with NCCL's own description of the last failure on this communicator, the world rank,
// the device and file:line.

// A non-blocking communicator may answer ncclInProgress: the call was accepted and completes in
// the background (Wait polls for it).
#define SHARDLM_NCCL_ACCEPT_ON(statement, comm, context)                              \
  SHARDLM_CHECK_RETURN(                                                               \
      "NCCL", statement, shardlm_rc_ == ncclSuccess || shardlm_rc_ == ncclInProgress, \
      SHARDLM_NCCL_ERROR_TEXT(shardlm_rc_, comm), context, SHARDLM_NCCL_STATUS_CODE(shardlm_rc_))

namespace {

using Clock = std::chrono::steady_clock;

// Spins (yielding) for the first millisecond of a wait, which covers a healthy collective, then
// sleeps 50 µs, doubling up to 1 ms, so that a long wait costs little CPU.
class Backoff {
 public:
  void Pause() {
    if (Clock::now() - start_ < std::chrono::milliseconds(1)) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(1000));
  }

 private:
  Clock::time_point start_ = Clock::now();
  std::chrono::microseconds sleep_{50};
};

absl::StatusCode AsyncErrorCode(ncclResult_t rc) {
  // A remote error is a peer that failed or went away.
  return rc == ncclRemoteError ? absl::StatusCode::kUnavailable : SHARDLM_NCCL_STATUS_CODE(rc);
}

std::string Peers(int size) { return absl::StrCat(size - 1, " other rank(s)"); }

// Polls until `comm` has no operation in progress (ncclCommGetAsyncError gives ncclSuccess) and,
// when `stream` is given, until the stream's work is done (cudaStreamQuery). The first failure:
// an asynchronous NCCL error, a CUDA error, or Unavailable after `timeout`. `op` and `where`
// name what is waited for; `size` is the group's size. Never aborts (the caller does).
absl::Status Poll(ncclComm_t comm, const cudaStream_t* stream, std::chrono::milliseconds timeout,
                  const char* op, const std::string& where, int size) {
  const Clock::time_point deadline = Clock::now() + timeout;
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclSuccess;
    SHARDLM_NCCL_RETURN_ON(ncclCommGetAsyncError(comm, &state), comm,
                           absl::StrCat(where, " (waiting for ", op, ")"));
    if (state != ncclSuccess && state != ncclInProgress) {
      return CheckFailureStatus(
          "NCCL", op, absl::StrCat(where, " (asynchronous error; ", Peers(size), ")"),
          SHARDLM_NCCL_ERROR_TEXT(state, comm), __FILE__, __LINE__, AsyncErrorCode(state));
    }
    if (state == ncclSuccess) {
      if (stream == nullptr) return absl::OkStatus();
      const cudaError_t done = cudaStreamQuery(*stream);
      if (done == cudaSuccess) return absl::OkStatus();
      // Not ready is an answer, not an error: reset it, or the next launch check would report it.
      static_cast<void>(cudaGetLastError());
      if (done != cudaErrorNotReady) {
        return CheckFailureStatus("CUDA", "cudaStreamQuery(stream_)",
                                  absl::StrCat(where, " (after ", op, ")"),
                                  SHARDLM_CUDA_ERROR_TEXT(done), __FILE__, __LINE__);
      }
    }
    if (Clock::now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          op, where, ": not complete after ",
          std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count() / 1000.0,
          " s (SHARDLM_NCCL_TIMEOUT_S): one of the ", Peers(size),
          " stopped calling collectives or died"));
    }
    backoff.Pause();
  }
}

}  // namespace

std::chrono::milliseconds NcclCommunicator::DefaultTimeout() {
  const int seconds = EnvInt("SHARDLM_NCCL_TIMEOUT_S", 0);
  return std::chrono::seconds(seconds > 0 ? seconds : 300);
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Create(
    Communicator& bootstrap, int device, cudaStream_t stream, std::chrono::milliseconds timeout) {
  // "mpi world" -> "nccl world", "mpi tp(color 1)" -> "nccl tp(color 1)".
  std::string name = bootstrap.name();
  name = name.rfind("mpi ", 0) == 0 ? absl::StrCat("nccl ", name.substr(4))
                                    : absl::StrCat("nccl(", name, ")");
  const std::string where =
      absl::StrCat(" on ", name, " (rank ", bootstrap.rank(), " of ", bootstrap.size(), ")");

  // Every rank must reach ncclCommInitRankConfig, or the others wait there until the timeout:
  // agree first that all of them could select their device.
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
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const absl::Status init = [&]() -> absl::Status {
    SHARDLM_NCCL_ACCEPT_ON(
        ncclCommInitRankConfig(&comm, bootstrap.size(), unique.id, bootstrap.rank(), &config),
        nullptr, where);
    return Poll(comm, nullptr, timeout, "ncclCommInitRankConfig", where, bootstrap.size());
  }();
  if (!init.ok()) {
    // A creation that failed or hangs (a peer that never joined) is aborted; its error is the
    // one to report.
    if (comm != nullptr) static_cast<void>(ncclCommAbort(comm));
    return init;
  }
  return Adopt(comm, device, stream, std::move(name), timeout);
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Adopt(
    ncclComm_t comm, int device, cudaStream_t stream, std::string name,
    std::chrono::milliseconds timeout) {
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
    static_cast<void>(ncclCommAbort(comm));
    return status;
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, device, stream, std::move(name), rank, size, scratch, timeout));
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, cudaStream_t stream,
                                   std::string name, int rank, int size, float* scratch,
                                   std::chrono::milliseconds timeout)
    : comm_(comm),
      device_(device),
      stream_(stream),
      name_(std::move(name)),
      rank_(rank),
      size_(size),
      scratch_(scratch),
      timeout_(timeout) {}

NcclCommunicator::~NcclCommunicator() {
  // Destructors cannot return a Status: log and go on.
  if (cudaSetDevice(device_) != cudaSuccess) {
    spdlog::warn("~NcclCommunicator{}: cannot select device {}", Where(), device_);
  }
  if (scratch_ != nullptr && cudaFree(scratch_) != cudaSuccess) {
    spdlog::warn("~NcclCommunicator{}: cudaFree of the barrier scratch failed", Where());
  }
  if (comm_ == nullptr) return;  // aborted
  // ncclCommDestroy would wait for queued work, forever when a peer is gone: finalize (flush)
  // with the timeout first, and abort when that fails.
  const ncclResult_t finalize = ncclCommFinalize(comm_);
  absl::Status flushed =
      finalize == ncclSuccess || finalize == ncclInProgress
          ? Poll(comm_, nullptr, timeout_, "ncclCommFinalize", Where(), size_)
          : absl::InternalError(absl::StrCat("ncclCommFinalize: ", ncclGetErrorString(finalize)));
  if (!flushed.ok()) {
    spdlog::warn("~NcclCommunicator{}: {}; aborting the communicator", Where(), flushed.ToString());
    static_cast<void>(ncclCommAbort(comm_));
    return;
  }
  const ncclResult_t result = ncclCommDestroy(comm_);
  if (result != ncclSuccess) {
    spdlog::warn("ncclCommDestroy{}: {}", Where(), ncclGetErrorString(result));
  }
}

std::string NcclCommunicator::Where() const {
  return absl::StrCat(" on ", name_, " (rank ", rank_, " of ", size_, ")");
}

absl::Status NcclCommunicator::Ready() const {
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("the NCCL communicator", Where(),
                     " was aborted after an earlier failure: ", aborted_.message()));
  }
  SetCheckDevice(device_);
  SHARDLM_CUDA_RETURN_ON(cudaSetDevice(device_), Where());
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Abort(absl::Status why) {
  if (comm_ != nullptr) {
    // ncclCommAbort ends the communicator's kernels still waiting for peers and frees it.
    const ncclResult_t result = ncclCommAbort(comm_);
    if (result != ncclSuccess) {
      spdlog::warn("ncclCommAbort{}: {}", Where(), ncclGetErrorString(result));
    }
    comm_ = nullptr;
  }
  aborted_ = absl::Status(why.code(), absl::StrCat(why.message(), " (communicator aborted)"));
  return aborted_;
}

absl::Status NcclCommunicator::Wait(const char* op, bool wait_stream) {
  // While the stream is captured into a CUDA graph nothing may wait on it; in stream-ordered
  // mode nothing needs to. The enqueue itself is always waited for (a non-blocking
  // communicator may still be enqueueing when the call returns).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SHARDLM_CUDA_RETURN_ON(cudaStreamIsCapturing(stream_, &capture), Where());
  const bool stream = wait_stream && capture == cudaStreamCaptureStatusNone;
  absl::Status status = Poll(comm_, stream ? &stream_ : nullptr, timeout_, op, Where(), size_);
  if (!status.ok()) return Abort(std::move(status));
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
  SHARDLM_RETURN_IF_ERROR(Ready());
  SHARDLM_NCCL_ACCEPT_ON(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_),
                         comm_, Where());
  return Wait("ncclAllReduce", synchronous_);
}

absl::Status NcclCommunicator::AllGather(const void* in, void* out, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  SHARDLM_RETURN_IF_ERROR(Ready());
  SHARDLM_NCCL_ACCEPT_ON(ncclAllGather(in, out, bytes, ncclChar, comm_, stream_), comm_, Where());
  return Wait("ncclAllGather", synchronous_);
}

absl::Status NcclCommunicator::AllToAllV(const void* in, std::span<const size_t> send_bytes,
                                         void* out, std::span<const size_t> recv_bytes) {
  const size_t n = static_cast<size_t>(size_);
  if (send_bytes.size() != n || recv_bytes.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("AllToAllV", Where(), ": expected ", n,
                                                   " send and receive counts, got ",
                                                   send_bytes.size(), " and ", recv_bytes.size()));
  }
  SHARDLM_RETURN_IF_ERROR(Ready());
  // One group of sends and receives, one pair per peer (NCCL has no all-to-all-v collective).
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  SHARDLM_NCCL_ACCEPT_ON(ncclGroupStart(), comm_, Where());
  const absl::Status queued = [&]() -> absl::Status {
    for (size_t p = 0; p < n; ++p) {
      const int peer = static_cast<int>(p);
      if (send_bytes[p] > 0) {
        SHARDLM_NCCL_ACCEPT_ON(ncclSend(src, send_bytes[p], ncclChar, peer, comm_, stream_), comm_,
                               absl::StrCat(Where(), " (all-to-all) to rank ", peer));
      }
      if (recv_bytes[p] > 0) {
        SHARDLM_NCCL_ACCEPT_ON(ncclRecv(dst, recv_bytes[p], ncclChar, peer, comm_, stream_), comm_,
                               absl::StrCat(Where(), " (all-to-all) from rank ", peer));
      }
      src += send_bytes[p];
      dst += recv_bytes[p];
    }
    return absl::OkStatus();
  }();
  // The group is closed even when a call in it failed.
  SHARDLM_NCCL_ACCEPT_ON(ncclGroupEnd(), comm_, Where());
  SHARDLM_RETURN_IF_ERROR(queued);
  return Wait("all-to-all", synchronous_);
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t bytes, int root) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclBroadcast", root));
  if (bytes == 0) return absl::OkStatus();
  SHARDLM_RETURN_IF_ERROR(Ready());
  SHARDLM_NCCL_ACCEPT_ON(ncclBroadcast(data, data, bytes, ncclChar, root, comm_, stream_), comm_,
                         Where());
  return Wait("ncclBroadcast", synchronous_);
}

absl::Status NcclCommunicator::Send(const void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclSend", peer));
  SHARDLM_RETURN_IF_ERROR(Ready());
  SHARDLM_NCCL_ACCEPT_ON(ncclSend(data, bytes, ncclChar, peer, comm_, stream_), comm_,
                         absl::StrCat(Where(), " to rank ", peer));
  return Wait("ncclSend", synchronous_);
}

absl::Status NcclCommunicator::Recv(void* data, size_t bytes, int peer, int tag) {
  SHARDLM_RETURN_IF_ERROR(CheckPeer("ncclRecv", peer));
  SHARDLM_RETURN_IF_ERROR(Ready());
  SHARDLM_NCCL_ACCEPT_ON(ncclRecv(data, bytes, ncclChar, peer, comm_, stream_), comm_,
                         absl::StrCat(Where(), " from rank ", peer));
  return Wait("ncclRecv", synchronous_);
}

absl::Status NcclCommunicator::Barrier() {
  SHARDLM_RETURN_IF_ERROR(Ready());
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  SHARDLM_CUDA_RETURN_ON(cudaStreamIsCapturing(stream_, &capture), Where());
  if (capture != cudaStreamCaptureStatusNone) {
    return absl::FailedPreconditionError(
        absl::StrCat("Barrier", Where(), ": the stream is being captured into a CUDA graph"));
  }
  SHARDLM_NCCL_ACCEPT_ON(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_),
                         comm_, absl::StrCat(Where(), " (barrier)"));
  // A barrier returns once every rank has reached it: wait for the all-reduce in either mode.
  return Wait("barrier", /*wait_stream=*/true);
}

absl::StatusOr<std::unique_ptr<Communicator>> NcclCommunicator::Split(int color, int key,
                                                                      const std::string& label) {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  SHARDLM_RETURN_IF_ERROR(Ready());
  ncclComm_t comm = nullptr;
  const std::string name = absl::StrCat("nccl ", label, "(color ", color, ")");
  // config nullptr: the new communicator inherits this one's configuration (non-blocking).
  SHARDLM_NCCL_ACCEPT_ON(ncclCommSplit(comm_, color, key, &comm, nullptr), comm_, Where());
  // A collective over this group: wait for it here, then for the new group's creation.
  absl::Status status = Poll(comm_, nullptr, timeout_, "ncclCommSplit", Where(), size_);
  if (!status.ok()) {
    if (comm != nullptr) static_cast<void>(ncclCommAbort(comm));
    return Abort(std::move(status));
  }
  if (comm == nullptr) {  // color == NCCL_SPLIT_NOCOLOR
    return absl::InvalidArgumentError(
        absl::StrCat("ncclCommSplit", Where(), ": color ", color, " gives no group"));
  }
  // (Its size is not known before its creation completes: the message counts this group's.)
  status = Poll(comm, nullptr, timeout_, "ncclCommSplit", absl::StrCat(" on ", name), size_);
  if (!status.ok()) {
    static_cast<void>(ncclCommAbort(comm));
    return status;
  }
  return Adopt(comm, device_, stream_, name, timeout_);
#else
  return absl::UnimplementedError(absl::StrCat(
      "Split", Where(), ": ncclCommSplit needs NCCL >= 2.18, built with ", NCCL_VERSION_CODE));
#endif
}

}  // namespace shardlm
