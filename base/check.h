// One family of checks for the error codes of the libraries shardlm calls: CUDA, cuBLAS, NCCL and
// MPI. Each macro evaluates its statement once; on failure the message names the statement, the
// library's error, the library, this process's world rank and device, and the file and line:
//
//   cudaMemcpyAsync(...): cudaErrorIllegalAddress (an illegal memory access ...) [CUDA, rank 3,
//   device 1, cuda_backend.cpp:212]
//
// Two forms: *_CHECK throws shardlm::CheckFailure (backend ops, which report through exceptions
// that the step runner turns into a Status), *_RETURN returns an absl::Status from the enclosing
// function (communicators). The library headers must be included where the macros are used.
#pragma once

#include <stdexcept>
#include <string>

#if !defined(__CUDACC__)
#include "absl/status/status.h"
#endif

namespace shardlm {

// Context for the messages: the world rank of this process (set once MPI is up) and the device of
// this thread (set by a CUDA backend on its thread); -1 when unknown, and then left out.
void SetCheckWorldRank(int rank);
void SetCheckDevice(int device);
int CheckWorldRank();

std::string CheckFailureMessage(const char* library, const char* statement,
                                const std::string& error, const char* file, int line);

// What the throwing checks raise: a library call that failed (device out of memory, a failed
// launch, ...).
class CheckFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void ThrowCheckFailure(const char* library, const char* statement,
                                    const std::string& error, const char* file, int line);

#if !defined(__CUDACC__)
absl::Status CheckFailureStatus(const char* library, const char* statement,
                                const std::string& error, const char* file, int line,
                                absl::StatusCode code = absl::StatusCode::kInternal);
#endif

}  // namespace shardlm

// The general forms: `ok` and `error` are expressions of shardlm_rc_, the statement's result.
#define SHARDLM_CHECK_THROW(library, statement, ok, error)                                    \
  do {                                                                                        \
    const auto shardlm_rc_ = (statement);                                                     \
    if (!(ok)) ::shardlm::ThrowCheckFailure(library, #statement, (error), __FILE__, __LINE__); \
  } while (0)
#define SHARDLM_CHECK_RETURN(library, statement, ok, error)                                    \
  do {                                                                                         \
    const auto shardlm_rc_ = (statement);                                                      \
    if (!(ok)) {                                                                               \
      return ::shardlm::CheckFailureStatus(library, #statement, (error), __FILE__, __LINE__);  \
    }                                                                                          \
  } while (0)

// CUDA runtime (cuda_runtime_api.h).
#define SHARDLM_CUDA_ERROR_TEXT                                  \
  (::std::string(cudaGetErrorName(shardlm_rc_)) + " (" +         \
   cudaGetErrorString(shardlm_rc_) + ")")
#define SHARDLM_CUDA_CHECK(statement) \
  SHARDLM_CHECK_THROW("CUDA", statement, shardlm_rc_ == cudaSuccess, SHARDLM_CUDA_ERROR_TEXT)
#define SHARDLM_CUDA_RETURN(statement) \
  SHARDLM_CHECK_RETURN("CUDA", statement, shardlm_rc_ == cudaSuccess, SHARDLM_CUDA_ERROR_TEXT)
// The launch just made on this thread (cudaGetLastError), named `what`.
#define SHARDLM_CUDA_LAUNCH_CHECK(what)                                                     \
  do {                                                                                      \
    const cudaError_t shardlm_rc_ = cudaGetLastError();                                     \
    if (shardlm_rc_ != cudaSuccess) {                                                       \
      ::shardlm::ThrowCheckFailure("CUDA", what, SHARDLM_CUDA_ERROR_TEXT, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)

// cuBLAS (cublas_v2.h).
#define SHARDLM_CUBLAS_CHECK(statement)                                              \
  SHARDLM_CHECK_THROW("cuBLAS", statement, shardlm_rc_ == CUBLAS_STATUS_SUCCESS,     \
                      ::std::string(cublasGetStatusName(shardlm_rc_)) + " (" +       \
                          cublasGetStatusString(shardlm_rc_) + ")")

// NCCL (nccl.h): the error string, and NCCL's own description of the last failure.
#define SHARDLM_NCCL_RETURN(statement)                                                   \
  SHARDLM_CHECK_RETURN("NCCL", statement, shardlm_rc_ == ncclSuccess,                    \
                       ::std::string(ncclGetErrorString(shardlm_rc_)) + " (" +           \
                           ncclGetLastError(nullptr) + ")")

// MPI (mpi.h): communicators set MPI_ERRORS_RETURN, so calls report codes.
#define SHARDLM_MPI_RETURN(statement)                                          \
  SHARDLM_CHECK_RETURN("MPI", statement, shardlm_rc_ == MPI_SUCCESS, [&] {     \
    char shardlm_text_[MPI_MAX_ERROR_STRING];                                  \
    int shardlm_len_ = 0;                                                      \
    return MPI_Error_string(shardlm_rc_, shardlm_text_, &shardlm_len_) == MPI_SUCCESS \
               ? ::std::string(shardlm_text_, static_cast<size_t>(shardlm_len_))      \
               : "MPI error code " + ::std::to_string(shardlm_rc_);            \
  }())
