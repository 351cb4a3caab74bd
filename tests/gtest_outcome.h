// How a gtest binary ends for ctest: exit 0 when every test that ran passed, 77 when none failed
// and at least one skipped (GTEST_SKIP; ctest's SKIP_RETURN_CODE turns it into "Skipped"), and
// 1 when any failed or when no test matched the filter (a stale --gtest_filter would otherwise
// pass by running nothing). Used by tests/gtest_main.cpp and tests/parallel/mpi_gtest_main.cpp.
#pragma once

#include <cstdio>

#include "gtest/gtest.h"

namespace shardlm::testing {

inline constexpr int kSkipExitCode = 77;

// Ordered from best to worst, so that ranks can agree on the worst with a max.
enum class GtestOutcome : int { kPassed = 0, kSkipped = 1, kFailed = 2 };

// The outcome of this process's RUN_ALL_TESTS() (which returned `result`); with `print`, says why
// when it is not a plain pass.
inline GtestOutcome LocalGtestOutcome(int result, bool print = true) {
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  if (result != 0) return GtestOutcome::kFailed;
  if (unit.test_to_run_count() == 0) {
    if (print) std::printf("no test matches the filter: failing (a ctest entry must run one)\n");
    return GtestOutcome::kFailed;
  }
  if (unit.skipped_test_count() > 0) {
    if (print) {
      std::printf("%d of %d tests skipped, none failed: exit %d (ctest: Skipped)\n",
                  unit.skipped_test_count(), unit.test_to_run_count(), kSkipExitCode);
    }
    return GtestOutcome::kSkipped;
  }
  return GtestOutcome::kPassed;
}

inline int ExitCodeFor(GtestOutcome outcome) {
  switch (outcome) {
    case GtestOutcome::kPassed:
      return 0;
    case GtestOutcome::kSkipped:
      return kSkipExitCode;
    case GtestOutcome::kFailed:
      break;
  }
  return 1;
}

// --gtest_list_tests and the like run no test: their result is RUN_ALL_TESTS()'s own.
inline bool OnlyListingTests() { return GTEST_FLAG_GET(list_tests); }

}  // namespace shardlm::testing
