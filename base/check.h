// One family of checks for the error codes of the libraries shardlm calls: CUDA, cuBLAS, NCCL and
// MPI. Each macro evaluates its statement once; on failure the message names the statement (and,
// in the *_ON forms, where it ran: " on nccl tp(color 0) (rank 1 of 2)"), the library's error,
// the library, this process's world rank and device, and the file and line:
//
//   cudaMemcpyAsync(...): cudaErrorIllegalAddress (an illegal memory access ...) [CUDA, rank 3,
//   device 1, cuda_backend.cpp:212]
//
// Two forms: *_CHECK throws shardlm::CheckFailure (backend ops, which report through exceptions
// that the step engine turns into a Status), *_RETURN returns an absl::Status from the enclosing
// function (communicators). The library headers must be included where the macros are used: the
// macros expand to the library's own error-string functions there. The .cu files (nvcc, C++17)
// include this header too; the Status forms are hidden from them.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

#if !defined(__CUDACC__)
#include "absl/status/status.h"
#endif

namespace shardlm {

// Context for the messages: the world rank of this process (set once MPI is up) and the device of
// this thread (set by a CUDA backend on the threads it runs on); -1 when unknown, and then left
// out.
void SetCheckWorldRank(int rank);
void SetCheckDevice(int device);
int CheckWorldRank();
int CheckDevice();

// "<statement><context>: <error> [<library>, rank r, device d, <file>:<line>]" (file without its
// directories).
std::string CheckFailureMessage(const char* library, const char* statement,
                                std::string_view context, const std::string& error,
                                const char* file, int line);

// What the throwing checks raise: a library call that failed (device out of memory, a failed
// launch, ...).
class CheckFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void ThrowCheckFailure(const char* library, const char* statement,
                                    std::string_view context, const std::string& error,
                                    const char* file, int line);

#if !defined(__CUDACC__)
absl::Status CheckFailureStatus(const char* library, const char* statement,
                                std::string_view context, const std::string& error,
                                const char* file, int line,
                                absl::StatusCode code = absl::StatusCode::kInternal);
#endif

}  // namespace shardlm

// The general forms. `ok`, `error` and `code` are expressions of shardlm_rc_, the statement's
// result; `context` (a string) is only evaluated on failure.
#define SHARDLM_CHECK_THROW(library, statement, ok, error, context)                          \
  do {                                                                                       \
    const auto shardlm_rc_ = (statement);                                                    \
    if (!(ok)) {                                                                             \
      ::shardlm::ThrowCheckFailure(library, #statement, (context), (error), __FILE__,        \
                                   __LINE__);                                                \
    }                                                                                        \
  } while (0)
#define SHARDLM_CHECK_RETURN(library, statement, ok, error, context, code)                   \
  do {                                                                                       \
    const auto shardlm_rc_ = (statement);                                                    \
    if (!(ok)) {                                                                             \
      return ::shardlm::CheckFailureStatus(library, #statement, (context), (error), __FILE__, \
                                           __LINE__, (code));                                \
    }                                                                                        \
  } while (0)

// CUDA runtime (cuda_runtime_api.h). The text of an error code `rc`.
#define SHARDLM_CUDA_ERROR_TEXT(rc) \
  (::std::string(cudaGetErrorName(rc)) + " (" + cudaGetErrorString(rc) + ")")
#define SHARDLM_CUDA_CHECK(statement)                                                 \
  SHARDLM_CHECK_THROW("CUDA", statement, shardlm_rc_ == cudaSuccess,                  \
                      SHARDLM_CUDA_ERROR_TEXT(shardlm_rc_), ::std::string_view())
#define SHARDLM_CUDA_RETURN_ON(statement, context)                                    \
  SHARDLM_CHECK_RETURN("CUDA", statement, shardlm_rc_ == cudaSuccess,                 \
                       SHARDLM_CUDA_ERROR_TEXT(shardlm_rc_), context,                 \
                       ::absl::StatusCode::kInternal)
#define SHARDLM_CUDA_RETURN(statement) SHARDLM_CUDA_RETURN_ON(statement, ::std::string_view())
// The launch just made on this thread (cudaGetLastError), named `what` ("RmsNormKernel<<<>>>").
#define SHARDLM_CUDA_LAUNCH_CHECK(what)                                                       \
  do {                                                                                        \
    const cudaError_t shardlm_rc_ = cudaGetLastError();                                       \
    if (shardlm_rc_ != cudaSuccess) {                                                         \
      ::shardlm::ThrowCheckFailure("CUDA", what, ::std::string_view(),                        \
                                   SHARDLM_CUDA_ERROR_TEXT(shardlm_rc_), __FILE__, __LINE__); \
    }                                                                                         \
  } while (0)

// cuBLAS (cublas_v2.h).
#define SHARDLM_CUBLAS_CHECK(statement)                                          \
  SHARDLM_CHECK_THROW("cuBLAS", statement, shardlm_rc_ == CUBLAS_STATUS_SUCCESS, \
                      ::std::string(cublasGetStatusName(shardlm_rc_)) + " (" +   \
                          cublasGetStatusString(shardlm_rc_) + ")",              \
                      ::std::string_view())

// NCCL (nccl.h): the error string, and NCCL's own description of the last failure on `comm`
// ("peer 1 unreachable", ...; `comm` may be nullptr). Bad arguments and bad usage are
// InvalidArgument, the rest Internal.
#define SHARDLM_NCCL_ERROR_TEXT(rc, comm)                                                   \
  ([&] {                                                                                    \
    ::std::string shardlm_text_ = ncclGetErrorString(rc);                                   \
    const char* shardlm_last_ = ncclGetLastError(comm);                                     \
    if (shardlm_last_ != nullptr && shardlm_last_[0] != '\0') {                             \
      shardlm_text_ += ::std::string(" (") + shardlm_last_ + ")";                           \
    }                                                                                       \
    return shardlm_text_;                                                                   \
  }())
#define SHARDLM_NCCL_STATUS_CODE(rc)                                  \
  ((rc) == ncclInvalidArgument || (rc) == ncclInvalidUsage            \
       ? ::absl::StatusCode::kInvalidArgument                         \
       : ::absl::StatusCode::kInternal)
#define SHARDLM_NCCL_RETURN_ON(statement, comm, context)                                     \
  SHARDLM_CHECK_RETURN("NCCL", statement, shardlm_rc_ == ncclSuccess,                        \
                       SHARDLM_NCCL_ERROR_TEXT(shardlm_rc_, comm), context,                  \
                       SHARDLM_NCCL_STATUS_CODE(shardlm_rc_))
#define SHARDLM_NCCL_RETURN(statement) \
  SHARDLM_NCCL_RETURN_ON(statement, nullptr, ::std::string_view())

// MPI (mpi.h): communicators set MPI_ERRORS_RETURN, so calls report codes. A wrong argument (a
// count, rank, root, tag, a size mismatch) is InvalidArgument, the rest Internal.
#define SHARDLM_MPI_ERROR_TEXT(rc)                                                       \
  ([&] {                                                                                 \
    char shardlm_text_[MPI_MAX_ERROR_STRING];                                            \
    int shardlm_len_ = 0;                                                                \
    return MPI_Error_string(rc, shardlm_text_, &shardlm_len_) == MPI_SUCCESS             \
               ? ::std::string(shardlm_text_, static_cast<size_t>(shardlm_len_))         \
               : "MPI error code " + ::std::to_string(rc);                               \
  }())
#define SHARDLM_MPI_STATUS_CODE(rc)                                                        \
  ([&] {                                                                                   \
    int shardlm_class_ = MPI_ERR_OTHER;                                                    \
    if (MPI_Error_class(rc, &shardlm_class_) != MPI_SUCCESS) shardlm_class_ = MPI_ERR_OTHER; \
    switch (shardlm_class_) {                                                              \
      case MPI_ERR_BUFFER:                                                                 \
      case MPI_ERR_COUNT:                                                                  \
      case MPI_ERR_TYPE:                                                                   \
      case MPI_ERR_TAG:                                                                    \
      case MPI_ERR_RANK:                                                                   \
      case MPI_ERR_ROOT:                                                                   \
      case MPI_ERR_ARG:                                                                    \
      case MPI_ERR_TRUNCATE:                                                               \
        return ::absl::StatusCode::kInvalidArgument;                                       \
      default:                                                                             \
        return ::absl::StatusCode::kInternal;                                              \
    }                                                                                      \
  }())
#define SHARDLM_MPI_RETURN_ON(statement, context)                                     \
  SHARDLM_CHECK_RETURN("MPI", statement, shardlm_rc_ == MPI_SUCCESS,                  \
                       SHARDLM_MPI_ERROR_TEXT(shardlm_rc_), context,                  \
                       SHARDLM_MPI_STATUS_CODE(shardlm_rc_))
#define SHARDLM_MPI_RETURN(statement) SHARDLM_MPI_RETURN_ON(statement, ::std::string_view())
