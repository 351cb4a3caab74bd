// base/check.h with a fake library: a call that returns an error code, an error-name function,
// and the library's check macros built from the general forms the way check.h builds CUDA's.
#include "base/check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <thread>

namespace shardlm {
namespace {

using ::testing::HasSubstr;

enum FakeResult { kFakeSuccess = 0, kFakeOutOfMemory = 2, kFakeBadHandle = 7 };

const char* FakeErrorName(FakeResult r) {
  switch (r) {
    case kFakeSuccess: return "kFakeSuccess";
    case kFakeOutOfMemory: return "kFakeOutOfMemory (out of memory)";
    case kFakeBadHandle: return "kFakeBadHandle (bad handle)";
  }
  return "unknown";
}

// A library call that counts how often it runs and returns `result`.
int g_calls = 0;
FakeResult FakeAlloc(FakeResult result) {
  ++g_calls;
  return result;
}

#define FAKE_CHECK(statement)                                                          \
  SHARDLM_CHECK_THROW("Fake", statement, shardlm_rc_ == kFakeSuccess,                  \
                      ::std::string(FakeErrorName(shardlm_rc_)), ::std::string_view())
#define FAKE_RETURN_ON(statement, context)                                             \
  SHARDLM_CHECK_RETURN("Fake", statement, shardlm_rc_ == kFakeSuccess,                 \
                       ::std::string(FakeErrorName(shardlm_rc_)), context,             \
                       shardlm_rc_ == kFakeBadHandle ? absl::StatusCode::kInvalidArgument \
                                                     : absl::StatusCode::kInternal)

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_calls = 0;
    SetCheckWorldRank(-1);
    SetCheckDevice(-1);
  }
  void TearDown() override {
    SetCheckWorldRank(-1);
    SetCheckDevice(-1);
  }
};

TEST_F(CheckTest, ThrowingFormNamesStatementErrorLibraryAndLine) {
  const int line = __LINE__ + 2;
  try {
    FAKE_CHECK(FakeAlloc(kFakeOutOfMemory));
    FAIL() << "no CheckFailure";
  } catch (const CheckFailure& e) {
    EXPECT_EQ(std::string(e.what()),
              "FakeAlloc(kFakeOutOfMemory): kFakeOutOfMemory (out of memory) [Fake, "
              "check_test.cpp:" + std::to_string(line) + "]");
  }
  EXPECT_EQ(g_calls, 1) << "the statement must run once";
}

TEST_F(CheckTest, SuccessRunsTheStatementOnceAndGoesOn) {
  EXPECT_NO_THROW(FAKE_CHECK(FakeAlloc(kFakeSuccess)));
  EXPECT_EQ(g_calls, 1);
}

TEST_F(CheckTest, RankAndDeviceJoinTheMessage) {
  SetCheckWorldRank(3);
  SetCheckDevice(1);
  try {
    FAKE_CHECK(FakeAlloc(kFakeOutOfMemory));
    FAIL() << "no CheckFailure";
  } catch (const CheckFailure& e) {
    EXPECT_THAT(e.what(), HasSubstr("[Fake, rank 3, device 1, check_test.cpp:"));
  }
  // The device belongs to the thread that set it; the rank to the process.
  std::string other;
  std::thread([&] {
    try {
      FAKE_CHECK(FakeAlloc(kFakeBadHandle));
    } catch (const CheckFailure& e) {
      other = e.what();
    }
  }).join();
  EXPECT_THAT(other, HasSubstr("kFakeBadHandle (bad handle) [Fake, rank 3, check_test.cpp:"));
}

absl::Status ReturningCaller(FakeResult result, int* context_built) {
  FAKE_RETURN_ON(FakeAlloc(result), (++*context_built, std::string(" on fake tp (rank 1 of 2)")));
  return absl::OkStatus();
}

TEST_F(CheckTest, ReturningFormCarriesContextAndCode) {
  int context_built = 0;
  EXPECT_TRUE(ReturningCaller(kFakeSuccess, &context_built).ok());
  EXPECT_EQ(context_built, 0) << "the context is built on failure only";

  SetCheckWorldRank(1);
  const absl::Status oom = ReturningCaller(kFakeOutOfMemory, &context_built);
  EXPECT_EQ(oom.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(oom.message()),
              HasSubstr("FakeAlloc(result) on fake tp (rank 1 of 2): kFakeOutOfMemory (out of "
                        "memory) [Fake, rank 1, check_test.cpp:"));
  const absl::Status bad = ReturningCaller(kFakeBadHandle, &context_built);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_EQ(context_built, 2);
  EXPECT_EQ(g_calls, 3);
}

TEST_F(CheckTest, MessageLeavesOutUnknownRankAndDevice) {
  EXPECT_EQ(CheckFailureMessage("MPI", "MPI_Barrier(comm_)", " on mpi world (rank 0 of 2)",
                                "MPI_ERR_COMM: invalid communicator", "/a/b/mpi_communicator.cpp",
                                42),
            "MPI_Barrier(comm_) on mpi world (rank 0 of 2): MPI_ERR_COMM: invalid communicator "
            "[MPI, mpi_communicator.cpp:42]");
}

}  // namespace
}  // namespace shardlm
