#include "parallel/step_agreement.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "parallel/mpi_communicator.h"

namespace shardlm {

bool StepAgreement::Outcome::fatal() const {
  return std::any_of(verdicts.begin(), verdicts.end(), [](int32_t v) { return v == kFatal; });
}

int StepAgreement::Outcome::failed_ranks() const {
  return static_cast<int>(
      std::count_if(verdicts.begin(), verdicts.end(), [](int32_t v) { return v != kOk; }));
}

class StepAgreement::Impl {
 public:
  explicit Impl(std::unique_ptr<Communicator> comm)
      : comm_(std::move(comm)), mpi_(static_cast<MpiCommunicator&>(*comm_).comm()) {}

  absl::StatusOr<Outcome> Agree(Verdict mine, const std::string& message,
                                absl::Duration timeout) {
    if (pending_) {
      return absl::FailedPreconditionError(
          "StepAgreement: an earlier agreement timed out; the job cannot go on");
    }
    const int size = comm_->size();
    const int rank = comm_->rank();
    // Each rank fills its own slot: the sum is every rank's verdict.
    verdicts_.assign(static_cast<size_t>(size), kOk);
    verdicts_[static_cast<size_t>(rank)] = mine;
    SHARDLM_MPI_RETURN_ON(MPI_Iallreduce(MPI_IN_PLACE, verdicts_.data(), size, MPI_INT32_T,
                                         MPI_SUM, mpi_, &request_),
                          Where());
    pending_ = true;
    message_ = message;
    // Healthy ranks arrive within microseconds of each other (they leave the same last
    // collective): spin briefly, then sleep between polls so that a rank waiting for a slow
    // pipeline stage does not burn the cores that stage computes on.
    const absl::Time start = absl::Now();
    const absl::Time deadline =
        mine == kOk ? absl::InfiniteFuture() : start + std::max(timeout, absl::ZeroDuration());
    auto sleep = std::chrono::microseconds(50);
    while (true) {
      int done = 0;
      SHARDLM_MPI_RETURN_ON(MPI_Test(&request_, &done, MPI_STATUS_IGNORE), Where());
      if (done) break;
      const absl::Time now = absl::Now();
      if (now >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat(
            "not every rank reached the step agreement within ", absl::FormatDuration(timeout),
            ": some are blocked in a collective that this rank left"));
      }
      if (now - start > absl::Microseconds(200)) {
        std::this_thread::sleep_for(sleep);
        sleep = std::min(sleep * 2, std::chrono::microseconds(1000));
      }
    }
    pending_ = false;
    return Finish();
  }

  absl::StatusOr<Outcome> AwaitLateRanks() {
    if (!pending_) {
      return absl::FailedPreconditionError("StepAgreement: no agreement is waiting for ranks");
    }
    SHARDLM_MPI_RETURN_ON(MPI_Wait(&request_, MPI_STATUS_IGNORE), Where());
    pending_ = false;
    return Finish();
  }

  bool pending() const { return pending_; }

 private:
  // Once the reduction is complete: the verdicts, and the message of the lowest failing rank,
  // broadcast from it.
  absl::StatusOr<Outcome> Finish() {
    const int size = comm_->size();
    const int rank = comm_->rank();
    Outcome out;
    out.verdicts = verdicts_;
    for (int r = 0; r < size; ++r) {
      if (out.verdicts[static_cast<size_t>(r)] != kOk) {
        out.first_failed = r;
        break;
      }
    }
    if (out.first_failed >= 0) {
      // Every rank has come, so every rank takes part in this broadcast: no one can be left in it.
      std::string text = rank == out.first_failed ? message_ : std::string();
      uint64_t length = text.size();
      SHARDLM_RETURN_IF_ERROR(comm_->Broadcast(&length, sizeof(length), out.first_failed));
      text.resize(length);
      SHARDLM_RETURN_IF_ERROR(comm_->Broadcast(text.data(), length, out.first_failed));
      out.message = std::move(text);
    }
    return out;
  }

  std::string Where() const {
    return absl::StrCat(" on ", comm_->name(), " (rank ", comm_->rank(), " of ", comm_->size(),
                        ")");
  }

  std::unique_ptr<Communicator> comm_;
  MPI_Comm mpi_;
  std::vector<int32_t> verdicts_;  // the reduction's buffer: kept while it is posted
  std::string message_;            // this rank's message in the agreement in progress
  MPI_Request request_ = MPI_REQUEST_NULL;
  bool pending_ = false;
};

absl::StatusOr<std::unique_ptr<StepAgreement>> StepAgreement::Create(Communicator& world) {
  if (world.size() == 1) return std::unique_ptr<StepAgreement>(new StepAgreement(nullptr));
  auto* mpi = dynamic_cast<MpiCommunicator*>(&world);
  if (mpi == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StepAgreement: the world communicator '", world.name(), "' of ", world.size(),
        " ranks is not an MPI communicator"));
  }
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                           mpi->Split(/*color=*/0, mpi->rank(), "step agreement"));
  return std::unique_ptr<StepAgreement>(new StepAgreement(std::make_unique<Impl>(std::move(comm))));
}

StepAgreement::StepAgreement(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// A reduction still posted (the job timed out and is being aborted) keeps its buffer: the
// communicator is not freed under it.
StepAgreement::~StepAgreement() {
  if (impl_ != nullptr && impl_->pending()) static_cast<void>(impl_.release());
}

absl::StatusOr<StepAgreement::Outcome> StepAgreement::Agree(Verdict mine,
                                                            const std::string& message,
                                                            absl::Duration timeout) {
  const absl::Time start = absl::Now();
  absl::StatusOr<Outcome> out;
  if (impl_ == nullptr) {
    Outcome alone;
    alone.verdicts = {mine};
    if (mine != kOk) {
      alone.first_failed = 0;
      alone.message = message;
    }
    out = std::move(alone);
  } else {
    out = impl_->Agree(mine, message, timeout);
  }
  total_wait_ += absl::Now() - start;
  ++agreements_;
  return out;
}

absl::StatusOr<StepAgreement::Outcome> StepAgreement::AwaitLateRanks() {
  if (impl_ == nullptr) {
    return absl::FailedPreconditionError("StepAgreement: no agreement is waiting for ranks");
  }
  return impl_->AwaitLateRanks();
}

}  // namespace shardlm
