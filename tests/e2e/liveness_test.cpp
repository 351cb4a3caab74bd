// Liveness apart from compute, end to end: `shardlm-coordinator` at its default flags (a free
// loopback port, a tiny model, tp=2, one thread a rank) and `mpirun -np 2 shardlm-worker` whose
// ranks both sleep 30 s inside one step (`--inject-fault Linear:5:*:sleep=30`: layer 0's gate
// projection in the first step). The coordinator pings the workers every 2 s and drops a
// connection that leaves a ping unanswered for 2 s; rank 0 answers on its stream thread while
// its main thread is stuck in the step (worker/coordinator_stream.h). The request completes with
// all its tokens, health stays SERVING throughout, and the same job serves the next request.
// Every process started here is killed when the test ends, whatever happens.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "formats/random_weights.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using e2e::Health;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/liveness_work";

using e2e::ReadFile;

TEST(LivenessTest, AThirtySecondStepKeepsTheJobAttachedAndItsRequestCompletes) {
  fs::remove_all(kWork);
  fs::create_directories(kWork);
  const std::string model = kWork + "/llama-tiny";
  TinyModelSpec spec;
  spec.heads = 4;
  spec.seed = 5;
  ASSERT_TRUE(WriteTinyModel(spec, model).ok());
  const std::string secret = e2e::WriteWorkerSecret(kWork + "/worker.secret");
  e2e::Child coordinator({kBin + "shardlm-coordinator", "--listen", "127.0.0.1:0",
                          "--worker-listen", "127.0.0.1:0", "--worker-secret-file", secret,
                          "--model", model, "--tp", "2", "--threads", "1"},
                         kWork + "/coordinator.log", true);
  std::string said;
  const std::string addr = e2e::ListeningAddress(coordinator, &said);
  ASSERT_FALSE(addr.empty()) << "coordinator said: " << said << "; see " << kWork
                             << "/coordinator.log";
  const std::string worker_addr = e2e::WorkerAttachAddress(coordinator, &said);
  ASSERT_FALSE(worker_addr.empty()) << "coordinator said: " << said;
  auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);

  const std::string log = kWork + "/workers.log";
  e2e::Child workers(
      {SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np", "2", kBin + "shardlm-worker",
       "--coordinator", worker_addr, "--worker-secret-file", secret, "--inject-fault",
       "Linear:5:*:sleep=30"},
      log, false);
  ASSERT_TRUE(e2e::WaitHealth(*health, Health::SERVING, 120s))
      << "workers did not attach; see " << log;

  // The request whose first step sleeps; health is polled all the while.
  std::atomic<bool> done{false};
  e2e::Outcome slow;
  const auto t0 = std::chrono::steady_clock::now();
  std::thread request([&] {
    slow = e2e::GenerateIds(*stub, {1, 2, 3, 4, 5}, 6, 120s);
    done = true;
  });
  int polls = 0;
  std::vector<std::string> not_serving;
  while (!done) {
    const Health::ServingStatus s = e2e::HealthStatus(*health);
    ++polls;
    if (s != Health::SERVING) not_serving.push_back(Health::ServingStatus_Name(s));
    std::this_thread::sleep_for(500ms);
  }
  request.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(slow.status.ok()) << slow.status.error_message() << "; see " << log;
  EXPECT_EQ(slow.finish, v1::FINISH_REASON_LENGTH) << slow.error;
  EXPECT_EQ(slow.ids.size(), 6u);
  EXPECT_GE(seconds, 30.0) << "the step did not sleep: is the fault in the first step?";
  EXPECT_GT(polls, 30);
  EXPECT_TRUE(not_serving.empty()) << "health left SERVING " << not_serving.size() << " times, "
                                   << "first " << not_serving[0];

  // The same job is still attached and serves on, in step: the same prompt, the same ids.
  EXPECT_FALSE(workers.Wait(0ms).has_value()) << "the worker job ended; see " << log;
  EXPECT_EQ(e2e::HealthStatus(*health), Health::SERVING);
  const e2e::Outcome next = e2e::GenerateIds(*stub, {1, 2, 3, 4, 5}, 6, 60s);
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(next.ids, slow.ids);
  const std::string logs = ReadFile(log) + ReadFile(kWork + "/coordinator.log");
  EXPECT_FALSE(absl::StrContains(logs, "[error]")) << "see " << log << " and coordinator.log";
  // One attach: the job was never dropped and relaunched.
  const std::string coordinator_log = ReadFile(kWork + "/coordinator.log");
  size_t attaches = 0;
  for (size_t at = 0; (at = coordinator_log.find("attached: loading", at)) != std::string::npos;
       ++at) {
    ++attaches;
  }
  EXPECT_EQ(attaches, 1u) << "see " << kWork << "/coordinator.log";
}

}  // namespace
}  // namespace shardlm
