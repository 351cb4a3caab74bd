#include "tests/parallel/mpi_gtest_main.h"

#include <mpi.h>

#include <cstdio>
#include <memory>

#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "tests/gtest_outcome.h"

namespace shardlm::mpitest {
namespace {

Communicator* g_world = nullptr;

// On ranks other than 0 (which keep gtest's own printer): only the failures, with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                   info.name());
    }
  }

 private:
  int rank_;
};

// After a fatal failure this rank left its test early: the others would wait in a collective it
// never calls (until the ctest TIMEOUT). Abort the job instead; mpirun then exits non-zero.
class AbortOnFatalFailure : public ::testing::EmptyTestEventListener {
 public:
  explicit AbortOnFatalFailure(int rank) : rank_(rank) {}
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!info.result()->HasFatalFailure()) return;
    std::fprintf(stderr, "[rank %d] fatal failure in %s.%s: aborting the MPI job\n", rank_,
                 info.test_suite_name(), info.name());
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }

 private:
  int rank_;
};

}  // namespace

Communicator& World() { return *g_world; }

}  // namespace shardlm::mpitest

int main(int argc, char** argv) {
  using shardlm::MpiCommunicator;
  using shardlm::MpiSession;
  absl::StatusOr<std::unique_ptr<MpiSession>> session = MpiSession::Init(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", session.status().ToString().c_str());
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  absl::StatusOr<std::unique_ptr<shardlm::Communicator>> world = MpiCommunicator::World();
  if (!world.ok()) {
    std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
    return 1;
  }
  shardlm::mpitest::g_world = world->get();
  const int rank = (*world)->rank();

  ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new shardlm::mpitest::RankFailurePrinter(rank));
  }
  // Appended last, so it sees OnTestEnd first (gtest reverses the order for "end" events).
  listeners.Append(new shardlm::mpitest::AbortOnFatalFailure(rank));

  const int result = RUN_ALL_TESTS();
  using shardlm::testing::GtestOutcome;
  int local = static_cast<int>(shardlm::testing::OnlyListingTests()
                                   ? (result == 0 ? GtestOutcome::kPassed : GtestOutcome::kFailed)
                                   : shardlm::testing::LocalGtestOutcome(result, rank == 0));
  // Every rank exits with the worst outcome (failed > skipped > passed), so each one's exit code
  // tells how the job went: 0, 77 (ctest: Skipped, SKIP_RETURN_CODE of shardlm_add_mpi_test) or 1.
  int worst = local;
  if (MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD) != MPI_SUCCESS) {
    worst = static_cast<int>(GtestOutcome::kFailed);
  }
  if (worst == static_cast<int>(GtestOutcome::kFailed) && rank == 0 &&
      local != static_cast<int>(GtestOutcome::kFailed)) {
    std::fprintf(stderr, "rank 0 passed, but another rank failed (see its [rank r] lines)\n");
  }
  shardlm::mpitest::g_world = nullptr;
  world->reset();  // MPI_Comm_free before MPI_Finalize (the session's destructor)
  return shardlm::testing::ExitCodeFor(static_cast<GtestOutcome>(worst));
}
