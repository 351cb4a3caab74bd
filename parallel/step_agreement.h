// After every step, every rank of a job learns how the step went on every other rank, in
// bounded time: one MPI_Iallreduce of one verdict per rank on a communicator of the agreement's
// own (so that no message of a step can ever match it), polled with MPI_Test.
//
// Why bounded: a rank whose step failed (a device out of memory in the middle of a layer) left
// collectives that its peers may be blocked in (the TP all-reduce of that layer); they will never
// reach the agreement. A failed rank therefore waits at most a deadline and then knows that the
// job cannot be brought back in step (its caller ends it with MPI_Abort). A rank whose step went
// well waits as long as it takes, with a sleeping poll: either every rank comes, or a failed one
// gives up and ends the job. When every rank comes, every rank gets the same verdicts and the
// message of the lowest failing rank.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "parallel/communicator.h"

namespace shardlm {

class StepAgreement {
 public:
  enum Verdict : int32_t {
    kOk = 0,
    kFailed = 1,  // the step failed here; this rank can run the next one
    kFatal = 2,   // this rank cannot go on (its device is broken, a communication failed)
  };
  struct Outcome {
    std::vector<int32_t> verdicts;  // one per world rank
    int first_failed = -1;          // the lowest rank whose verdict is not kOk; -1 when none
    std::string message;            // that rank's message
    bool ok() const { return first_failed < 0; }
    bool fatal() const;
    int failed_ranks() const;
  };

  // Collective over `world`: an MpiCommunicator (whose communicator is split into the
  // agreement's own), or any communicator of one rank (no MPI at all).
  static absl::StatusOr<std::unique_ptr<StepAgreement>> Create(Communicator& world);
  ~StepAgreement();

  // Collective over the world. `mine` and `message` are this rank's verdict and its account of
  // the failure. A rank with a verdict other than kOk waits at most `timeout` for the others:
  // DeadlineExceeded when they did not all come (some are blocked in a collective this rank
  // left: the job cannot go on). Other errors are MPI failures.
  absl::StatusOr<Outcome> Agree(Verdict mine, const std::string& message, absl::Duration timeout);

  // After a DeadlineExceeded the agreement is still open; this waits for the late ranks and
  // completes it, with the outcome that Agree would have had (tests do, so that every rank
  // leaves the agreement; a job that timed out is aborted instead).
  absl::StatusOr<Outcome> AwaitLateRanks();

  // Time spent in Agree so far, and the number of calls (for the per-step cost).
  absl::Duration total_wait() const { return total_wait_; }
  int64_t agreements() const { return agreements_; }

 private:
  class Impl;
  explicit StepAgreement(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;  // null for a world of one rank
  absl::Duration total_wait_;
  int64_t agreements_ = 0;
};

}  // namespace shardlm
