// Failures in the worker job, end to end: `shardlm-coordinator` on a free loopback port and
// `mpirun -np 2 shardlm-worker --inject-fault ...` (tp=2) serving a tiny model, through the
// public gRPC API. A fault on every rank (a device out of memory in the same op) fails the
// requests of that step with FINISH_REASON_ERROR naming the rank and the op, frees their KV
// blocks and the job serves on; non-finite logits fail only their request; a fault on one rank
// alone (its peer is then blocked in the layer's all-reduce) ends the job with one error line
// and a non-zero exit, and the coordinator goes NOT_SERVING (and holds the request for a
// relaunched job for --requeue-timeout). Every process started here is
// killed when its test ends, whatever happens.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "formats/random_weights.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using e2e::Health;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/fault_work";

// The lines of `path` that spdlog wrote at level error.
std::vector<std::string> ErrorLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (absl::StrContains(line, "[error]")) lines.push_back(line);
  }
  return lines;
}

class FaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
    model_ = kWork + "/llama-tiny";
    TinyModelSpec spec;
    spec.heads = 4;
    spec.seed = 3;
    ASSERT_TRUE(WriteTinyModel(spec, model_).ok());
    coordinator_ = std::make_unique<e2e::Child>(
        std::vector<std::string>{kBin + "shardlm-coordinator", "--listen", "127.0.0.1:0",
                                 "--worker-listen", "127.0.0.1:0", "--worker-secret-file",
                                 secret_ = e2e::WriteWorkerSecret(kWork + "/worker.secret"),
                                 "--model", model_, "--tp", "2", "--max-batch-tokens", "64",
                                 "--kv-cache-memory", "1MiB", "--kv-block-size", "4",
                                 "--threads", "1", "--requeue-timeout", "2"},
        kWork + "/coordinator.log", true);
    std::string said;
    addr_ = e2e::ListeningAddress(*coordinator_, &said);
    ASSERT_FALSE(addr_.empty()) << "coordinator said: " << said << "; see " << kWork
                                << "/coordinator.log";
    worker_addr_ = e2e::WorkerAttachAddress(*coordinator_, &said);
    ASSERT_FALSE(worker_addr_.empty()) << "coordinator said: " << said;
    auto channel = grpc::CreateChannel(addr_, grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
  }
  static void TearDownTestSuite() {
    if (coordinator_) coordinator_->Kill(SIGTERM);
    coordinator_.reset();
  }
  void TearDown() override {
    workers_.reset();  // kills the job if it still runs
    EXPECT_TRUE(WaitHealth(Health::NOT_SERVING, 10s));
  }

  // Starts `mpirun -np 2 shardlm-worker` with `flags`, its stderr into `log`, and waits until
  // the coordinator serves.
  void StartWorkers(const std::vector<std::string>& flags, const std::string& log) {
    log_ = kWork + "/" + log;
    std::vector<std::string> argv = {SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none",
                                     "-np", "2", kBin + "shardlm-worker"};
    argv.insert(argv.end(), {"--coordinator", worker_addr_, "--worker-secret-file", secret_});
    argv.insert(argv.end(), flags.begin(), flags.end());
    workers_ = std::make_unique<e2e::Child>(argv, log_, false);
    ASSERT_TRUE(WaitHealth(Health::SERVING, 120s)) << "workers did not attach; see " << log_;
  }

  static Health::ServingStatus HealthStatus() { return e2e::HealthStatus(*health_); }
  static bool WaitHealth(Health::ServingStatus want, std::chrono::seconds timeout) {
    return e2e::WaitHealth(*health_, want, timeout);
  }
  static v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    return info;
  }
  // Polls until every KV block is free again.
  static bool AllBlocksFree() {
    for (int i = 0; i < 50; ++i) {
      const v1::ModelInfo info = Info();
      if (info.kv_blocks_free() == info.kv_blocks_total()) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }

  using Outcome = e2e::Outcome;
  static Outcome Generate(const std::vector<int32_t>& prompt, int max_new) {
    return e2e::GenerateIds(*stub_, prompt, max_new, 120s);
  }

  static inline std::string model_, addr_, worker_addr_, secret_;
  static inline std::unique_ptr<e2e::Child> coordinator_;
  static inline std::unique_ptr<v1::Generation::Stub> stub_;
  static inline std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::unique_ptr<e2e::Child> workers_;
  std::string log_;
};

TEST_F(FaultTest, OutOfMemoryOnEveryRankFailsThatStepAndServingGoesOn) {
  // The 5th Linear of each rank: layer 0's gate projection in the first step, on both TP ranks.
  StartWorkers({"--inject-fault", "Linear:5"}, "oom_every_rank.log");
  const Outcome failed = Generate({1, 2, 3, 4, 5}, 6);
  EXPECT_EQ(failed.finish, v1::FINISH_REASON_ERROR) << failed.status.error_message();
  EXPECT_THAT(failed.error, HasSubstr("failed on the workers: rank 0 failed in Linear: "
                                     "cudaMallocAsync"));
  EXPECT_THAT(failed.error, HasSubstr("cudaErrorMemoryAllocation (out of memory) [CUDA, rank 0"));
  EXPECT_THAT(failed.error, HasSubstr("(2 ranks failed)"));
  EXPECT_TRUE(AllBlocksFree()) << "the failed request's KV blocks were not freed";

  // The job serves on, and in step: the same prompt twice gives the whole answer, twice alike.
  const Outcome first = Generate({1, 2, 3, 4, 5}, 6);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(first.ids.size(), 6u);
  const Outcome second = Generate({1, 2, 3, 4, 5}, 6);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.ids, first.ids);
  EXPECT_EQ(HealthStatus(), Health::SERVING);
  // One error line in the workers' log, from rank 0, for the failed step.
  const std::vector<std::string> errors = ErrorLines(log_);
  ASSERT_EQ(errors.size(), 1u) << "see " << log_;
  EXPECT_THAT(errors[0], HasSubstr("failed: rank 0 failed in Linear"));
  EXPECT_THAT(errors[0], HasSubstr("serving goes on"));
}

TEST_F(FaultTest, NonFiniteLogitsFailOnlyTheirRequest) {
  // Rank 0's first Embedding writes NaN into the first token's row: the first request's logits.
  StartWorkers({"--inject-fault", "Embedding:1:0:nan"}, "nan.log");
  const Outcome failed = Generate({7, 8, 9}, 4);
  EXPECT_EQ(failed.finish, v1::FINISH_REASON_ERROR) << failed.status.error_message();
  EXPECT_THAT(failed.error, HasSubstr("logits are not finite (NaN or Inf)"));
  EXPECT_TRUE(AllBlocksFree());
  const Outcome next = Generate({7, 8, 9}, 4);
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(next.ids.size(), 4u);
  EXPECT_EQ(HealthStatus(), Health::SERVING);
}

TEST_F(FaultTest, FaultOnOneRankEndsTheJobWithOneLine) {
  // Rank 1 alone fails in layer 0's gate projection; rank 0 goes on into the layer's all-reduce
  // and waits there for rank 1, which gives up on the agreement after 2 s and aborts the job.
  StartWorkers({"--inject-fault", "Linear:5:1", "--step-agreement-timeout", "2"}, "one_rank.log");
  const auto t0 = std::chrono::steady_clock::now();
  // The request is held for a relaunched job (none comes here) for --requeue-timeout 2 s.
  const Outcome lost = Generate({1, 2, 3, 4, 5}, 6);
  EXPECT_EQ(lost.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << lost.status.error_message();
  EXPECT_THAT(lost.status.error_message(), HasSubstr("none re-attached within --requeue-timeout"));
  const std::optional<int> code = workers_->Wait(30s);
  ASSERT_TRUE(code.has_value()) << "the worker job did not end; see " << log_;
  EXPECT_NE(*code, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 30s);
  EXPECT_TRUE(WaitHealth(Health::NOT_SERVING, 5s));
  const std::vector<std::string> errors = ErrorLines(log_);
  ASSERT_EQ(errors.size(), 1u) << "see " << log_;
  EXPECT_THAT(errors[0], HasSubstr("rank 1: step "));
  EXPECT_THAT(errors[0], HasSubstr("failed: rank 1 failed in Linear: cudaMallocAsync"));
  EXPECT_THAT(errors[0], HasSubstr("not every rank reached the step agreement within 2s"));
  EXPECT_THAT(errors[0], HasSubstr("aborting the job"));
}

}  // namespace
}  // namespace shardlm
