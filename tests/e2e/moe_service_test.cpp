// Expert parallelism through the whole service: `shardlm-coordinator --tp 2 --ep 2` on free
// loopback ports and `mpirun -np 2 shardlm-worker` serving a tiny Qwen3-MoE (6 experts, top 3
// without renormalisation, its last layer dense): each rank holds 3 whole experts and tokens
// cross ranks by all-to-all. Concurrent greedy requests give the ids of offline `shardlm
// generate` on one rank; an --ep that does not divide the experts is refused at start, naming
// both numbers. Every process started here is killed when the test ends, whatever happens. Its
// own work folder (tests/e2e/moe_work).
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "formats/random_weights.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using e2e::Health;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/moe_work";

class MoeServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
    TinyModelSpec spec;
    spec.arch = Arch::kQwen3Moe;
    spec.layers = 3;
    spec.hidden = 128;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.intermediate = 192;
    spec.vocab = 512;
    spec.seed = 21;
    model_ = kWork + "/qwen3-moe";
    ASSERT_TRUE(WriteTinyModel(spec, model_).ok());
    secret_ = e2e::WriteWorkerSecret(kWork + "/worker.secret");
  }

  std::vector<std::string> CoordinatorArgs(const std::string& tp, const std::string& ep) const {
    return {kBin + "shardlm-coordinator", "--listen", "127.0.0.1:0", "--worker-listen",
            "127.0.0.1:0", "--worker-secret-file", secret_, "--model", model_, "--tp", tp,
            "--ep", ep, "--threads", "1", "--max-batch-tokens", "64", "--kv-cache-memory",
            "4MiB"};
  }

  // `shardlm generate` on one rank, greedy.
  static std::vector<int32_t> Offline(const std::vector<int32_t>& prompt, int max_new) {
    return e2e::OfflineIds(kBin + "shardlm", model_, prompt, max_new);
  }

  void TearDown() override {
    workers_.reset();
    coordinator_.reset();
  }

  static inline std::string model_, secret_;
  std::unique_ptr<e2e::Child> coordinator_, workers_;
};

TEST_F(MoeServiceTest, Tp2Ep2GivesTheIdsOfOneRank) {
  coordinator_ = std::make_unique<e2e::Child>(CoordinatorArgs("2", "2"),
                                              kWork + "/coordinator.log", true);
  std::string said;
  const std::string addr = e2e::ListeningAddress(*coordinator_, &said);
  ASSERT_FALSE(addr.empty()) << "coordinator said: " << said << "; see " << kWork
                             << "/coordinator.log";
  const std::string worker_addr = e2e::WorkerAttachAddress(*coordinator_, &said);
  ASSERT_FALSE(worker_addr.empty()) << "coordinator said: " << said;
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);
  workers_ = std::make_unique<e2e::Child>(
      std::vector<std::string>{SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np",
                               "2", kBin + "shardlm-worker", "--coordinator", worker_addr,
                               "--worker-secret-file", secret_},
      kWork + "/workers.log", false);
  ASSERT_TRUE(e2e::WaitHealth(*health, Health::SERVING, 120s))
      << "workers did not attach; see " << kWork << "/workers.log";
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.tp(), 2);
    EXPECT_EQ(info.ep(), 2);
    EXPECT_EQ(info.workers_attached(), 2);
  }
  // Prompts of different lengths at once: prefill and decode tokens of several sequences share
  // steps, so each step's tokens are split between the ranks unevenly (and one rank may route
  // none).
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int j = 0; j <= 2 + 3 * i; ++j) p.push_back((37 * i + 11 * j + 3) % 512);
    prompts.push_back(p);
  }
  const int max_new = 10;
  std::vector<e2e::Outcome> served(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back(
        [&, i] { served[i] = e2e::GenerateIds(*stub, prompts[i], max_new, 120s); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(served[i].status.ok()) << served[i].status.error_message();
    EXPECT_EQ(served[i].ids.size(), static_cast<size_t>(max_new)) << "prompt " << i;
    EXPECT_EQ(served[i].ids, Offline(prompts[i], max_new)) << "prompt " << i;
  }
}

TEST_F(MoeServiceTest, EpThatDoesNotDivideTheExpertsIsRefused) {
  coordinator_ = std::make_unique<e2e::Child>(CoordinatorArgs("4", "4"),
                                              kWork + "/refused.log", true);
  const std::optional<int> code = coordinator_->Wait(30s);
  ASSERT_TRUE(code.has_value()) << "the coordinator did not exit";
  EXPECT_NE(*code, 0);
  EXPECT_THAT(e2e::ReadFile(kWork + "/refused.log"),
              ::testing::HasSubstr("--ep 4 does not divide the 6 experts"));
}

}  // namespace
}  // namespace shardlm
