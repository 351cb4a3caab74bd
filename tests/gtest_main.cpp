// main() of every shardlm_add_gtest binary: gtest's and gmock's flags, then the exit code of
// tests/gtest_outcome.h (77 when a test skipped and none failed, so ctest reports Skipped).
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/gtest_outcome.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleMock(&argc, argv);
  const int result = RUN_ALL_TESTS();
  if (shardlm::testing::OnlyListingTests()) return result;
  return shardlm::testing::ExitCodeFor(shardlm::testing::LocalGtestOutcome(result));
}
