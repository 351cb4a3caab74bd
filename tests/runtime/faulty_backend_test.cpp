// FaultyBackend and --inject-fault's spec, on the CPU backend: a fault fires once, at the Nth
// call of its op on its rank, the way the real backend fails; nan poisons the first row of the
// op's output only; sleep=S delays its call and then runs it; every failure leaving an op keeps
// the op's name and its own type.
#include "runtime/faulty_backend.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <stdexcept>

#include "base/check.h"
#include "kernels/cpu/cpu_backend.h"

namespace shardlm {
namespace {

using ::testing::HasSubstr;

TEST(FaultSpecTest, ParsesEveryForm) {
  absl::StatusOr<FaultSpec> s = ParseFaultSpec("Linear:5");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->op, "Linear");
  EXPECT_EQ(s->call, 5);
  EXPECT_EQ(s->rank, -1);
  EXPECT_EQ(s->kind, FaultSpec::Kind::kOutOfMemory);
  s = ParseFaultSpec("Embedding:2:1:nan");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rank, 1);
  EXPECT_EQ(s->kind, FaultSpec::Kind::kNan);
  EXPECT_EQ(s->ToString(), "Embedding:2:1:nan");
  s = ParseFaultSpec("Argmax:1:oom");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rank, -1);
  s = ParseFaultSpec("Add:3:*:nan");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->ToString(), "Add:3:*:nan");
  s = ParseFaultSpec("Linear:5:sleep=30");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rank, -1);
  EXPECT_EQ(s->kind, FaultSpec::Kind::kSleep);
  EXPECT_EQ(s->sleep_s, 30.0);
  EXPECT_EQ(s->ToString(), "Linear:5:*:sleep=30");
  s = ParseFaultSpec("Argmax:2:1:sleep=0.25");  // any op may sleep, for fractions of a second too
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rank, 1);
  EXPECT_EQ(s->sleep_s, 0.25);
  EXPECT_EQ(s->ToString(), "Argmax:2:1:sleep=0.25");
}

TEST(FaultSpecTest, RefusesBadSpecsNamingThePart) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"Linear", "wrong number"},
      {"Lineer:1", "unknown op 'Lineer'"},
      {"Linear:0", "N must be a call number >= 1, got '0'"},
      {"Linear:x", "got 'x'"},
      {"Linear:1:-2", "'-2' is neither"},
      {"Linear:1:nan:0", "the kind (oom, nan or sleep=S) comes last"},
      {"Linear:1:sleep=5:0", "the kind (oom, nan or sleep=S) comes last"},
      {"Linear:1:sleep=0", "sleep needs seconds > 0 and <= 3600, got '0'"},
      {"Linear:1:*:sleep=", "got ''"},
      {"Linear:1:sleep=x", "got 'x'"},
      {"Linear:1:sleep=-1", "got '-1'"},
      {"Linear:1:sleep=nan", "got 'nan'"},
      {"Linear:1:sleep=3601", "got '3601'"},
      {"Linear:1:sleep30", "'sleep30' is neither"},
      {"Argmax:1:nan", "nan needs an op with an f32 output"},
      {"Linear:1:2:3:4", "wrong number"},
  };
  for (const auto& [text, why] : bad) {
    absl::StatusOr<FaultSpec> s = ParseFaultSpec(text);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(why)) << text;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr("--inject-fault '" + text + "'"));
  }
}

class FaultyBackendTest : public ::testing::Test {
 protected:
  void SetUp() override { cpu_ = CreateCpuBackend(1); }
  // x [2, 3] of ones, w [2, 3] of ones: y = 3 everywhere.
  void Linear(Backend& b, Tensor& y) {
    Tensor x = b.ToDevice(Ones({2, 3}));
    Tensor w = b.PrepareWeight(Ones({2, 3}));
    y = b.Allocate({2, 2});
    b.Linear(x, w, nullptr, y);
  }
  static Tensor Ones(std::vector<int64_t> shape) {
    Tensor t = Tensor::Empty(std::move(shape), DType::kF32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 1.0f;
    return t;
  }
  std::unique_ptr<Backend> cpu_;
};

TEST_F(FaultyBackendTest, FailsOnceAtTheNthCallOfItsOpLikeTheDevice) {
  FaultyBackend b(*cpu_, /*rank=*/1, FaultSpec{"Linear", 2});
  Tensor y;
  EXPECT_NO_THROW(Linear(b, y));
  try {
    Linear(b, y);
    FAIL() << "the second Linear did not fail";
  } catch (const CheckFailure& e) {
    EXPECT_THAT(e.what(), HasSubstr("cudaMallocAsync(&ptr, bytes, stream_) (injected by "
                                    "--inject-fault Linear:2:*:oom): cudaErrorMemoryAllocation "
                                    "(out of memory) [CUDA"));
  }
  EXPECT_EQ(b.failed_op(), "Linear");
  EXPECT_EQ(FailedBackendOp(b), "Linear");
  ClearFailedBackendOp(b);
  EXPECT_EQ(b.failed_op(), "");
  EXPECT_NO_THROW(Linear(b, y)) << "a fault fires once";
  EXPECT_EQ(y.data<float>()[0], 3.0f);
}

TEST_F(FaultyBackendTest, AFaultForAnotherRankNeverFires) {
  FaultyBackend b(*cpu_, /*rank=*/0, FaultSpec{"Linear", 1, /*rank=*/1});
  Tensor y;
  for (int i = 0; i < 3; ++i) EXPECT_NO_THROW(Linear(b, y));
}

TEST_F(FaultyBackendTest, NanPoisonsTheFirstRowOfTheOutputOnly) {
  FaultyBackend b(*cpu_, 0);
  b.Arm({"Linear", 1, -1, FaultSpec::Kind::kNan});
  Tensor y;
  Linear(b, y);
  EXPECT_TRUE(std::isnan(y.data<float>()[0]));
  EXPECT_TRUE(std::isnan(y.data<float>()[1]));
  EXPECT_EQ(y.data<float>()[2], 3.0f);
  EXPECT_EQ(y.data<float>()[3], 3.0f);
  EXPECT_EQ(b.failed_op(), "");
}

TEST_F(FaultyBackendTest, SleepDelaysTheNthCallOnceThenItRunsNormally) {
  FaultSpec sleep{"Linear", 2};
  sleep.kind = FaultSpec::Kind::kSleep;
  sleep.sleep_s = 0.3;
  FaultyBackend b(*cpu_, 0, sleep);
  Tensor y;
  auto timed = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    Linear(b, y);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  EXPECT_LT(timed(), 0.25) << "the first call is not due";
  EXPECT_GE(timed(), 0.3) << "the second call sleeps";
  EXPECT_EQ(y.data<float>()[0], 3.0f) << "and then runs";
  EXPECT_EQ(y.data<float>()[3], 3.0f);
  EXPECT_EQ(b.failed_op(), "");
  EXPECT_LT(timed(), 0.25) << "a fault fires once";
}

TEST_F(FaultyBackendTest, RealFailuresKeepTheirTypeAndNameTheOp) {
  FaultyBackend b(*cpu_, 0);
  Tensor x = b.ToDevice(Ones({2, 3}));
  Tensor w = b.PrepareWeight(Ones({4, 5}));  // does not fit x
  Tensor y = b.Allocate({2, 4});
  EXPECT_THROW(b.Linear(x, w, nullptr, y), std::invalid_argument);
  EXPECT_EQ(b.failed_op(), "Linear");
}

}  // namespace
}  // namespace shardlm
