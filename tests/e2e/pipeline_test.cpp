// End-to-end: pipeline micro-batches. `shardlm-coordinator --pp N` and `mpirun -np N
// shardlm-worker` (N = 2, 3 stages, one rank each) serving a tiny model with several steps in
// flight (the default pp + 1): each stage runs a different micro-batch at once, plans are deltas
// that rank 0 expands, and decodes planned before their input came back run the workers' own
// sample. Concurrent greedy, seeded and penalized requests of different lengths (so that
// sequences join and leave the micro-batches mid-flight, and prompts are prefilled in chunks)
// must give exactly the ids of a single-process `shardlm generate`. Every process started here
// is killed in TearDown, whatever happens.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/pipeline_work";

using e2e::Shell;

struct Request {
  std::vector<int32_t> prompt;
  int max_new = 0;
  std::string flags;  // `shardlm generate` sampling flags; "" = greedy
  v1::SamplingParams sampling;
  int logprobs = 0;
};

// The flags' sampling parameters, for the service.
Request Sampled(std::vector<int32_t> prompt, int max_new, float temperature, uint64_t seed,
                bool penalties) {
  Request r{std::move(prompt), max_new, "", {}};
  r.sampling.set_temperature(temperature);
  r.sampling.set_top_p(0.9f);
  r.sampling.set_seed(seed);
  r.flags = absl::StrCat("--temperature ", temperature, " --top-p 0.9 --seed ", seed);
  if (penalties) {
    r.sampling.set_repetition_penalty(1.3f);
    r.sampling.set_frequency_penalty(0.4f);
    absl::StrAppend(&r.flags, " --repetition-penalty 1.3 --frequency-penalty 0.4");
  }
  return r;
}

class PipelineTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    const int pp = GetParam();
    work_ = absl::StrCat(kWork, "/pp", pp);
    fs::create_directories(work_);
    model_ = kWork + "/llama-6l";
    if (!fs::exists(model_ + "/config.json")) {
      Shell(kBin + "shardlm make-tiny-model --out " + model_ +
            " --vocab 384 --arch llama --layers 6 --hidden 128 --heads 4 --kv-heads 2"
            " --intermediate 384 --seed 11 2>&1");
    }
    const std::string secret = e2e::WriteWorkerSecret(work_ + "/worker.secret");
    coordinator_ = std::make_unique<e2e::Child>(
        std::vector<std::string>{kBin + "shardlm-coordinator", "--listen", "127.0.0.1:0",
                                 "--worker-listen", "127.0.0.1:0", "--worker-secret-file", secret,
                                 "--model", model_, "--pp", std::to_string(pp),
                                 "--max-batch-tokens", "24", "--kv-cache-memory", "1MiB",
                                 "--kv-block-size", "4", "--threads", "1"},
        work_ + "/coordinator.log", true);
    std::string said;
    const std::string addr = e2e::ListeningAddress(*coordinator_, &said);
    ASSERT_FALSE(addr.empty()) << "coordinator said: " << said;
    const std::string worker_addr = e2e::WorkerAttachAddress(*coordinator_, &said);
    ASSERT_FALSE(worker_addr.empty()) << "coordinator said: " << said;
    // A small eager limit: step results with top-20 logprobs and the plans travel by MPI's
    // rendezvous protocol, as large results do in production (the last stage sends results
    // without blocking, worker/pipeline.cpp, so that no cycle of sends can wait on itself).
    workers_ = std::make_unique<e2e::Child>(
        std::vector<std::string>{SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none",
                                 "--mca", "btl_vader_eager_limit", "1024", "-np",
                                 std::to_string(pp), kBin + "shardlm-worker", "--coordinator",
                                 worker_addr, "--worker-secret-file", secret},
        work_ + "/workers.log", false);
    auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    ASSERT_TRUE(e2e::WaitHealth(*health_, grpc::health::v1::HealthCheckResponse::SERVING, 120s))
        << "workers did not attach; see " << work_ << "/workers.log and coordinator.log";
  }
  void TearDown() override {
    workers_.reset();
    if (coordinator_) coordinator_->Kill(SIGTERM);
    coordinator_.reset();
  }

  e2e::Outcome Generate(const Request& r) {
    v1::GenerateRequest req;
    for (int32_t id : r.prompt) req.mutable_token_ids()->add_ids(id);
    req.set_max_new_tokens(r.max_new);
    req.set_ignore_eos(true);
    req.set_logprobs(r.logprobs);
    *req.mutable_sampling() = r.sampling;
    if (r.flags.empty()) req.mutable_sampling()->set_temperature(0.0f);
    return e2e::Generate(*stub_, req, 120s);
  }
  // `shardlm generate` in one process (no stages).
  std::vector<int32_t> Offline(const Request& r) {
    return e2e::OfflineIds(kBin + "shardlm", model_, r.prompt, r.max_new, r.flags);
  }

  std::string work_, model_;
  std::unique_ptr<e2e::Child> coordinator_, workers_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_P(PipelineTest, ConcurrentRequestsGiveTheSingleProcessIds) {
  std::vector<Request> requests;
  for (int i = 0; i < 10; ++i) {
    std::vector<int32_t> p;
    // 3 to 48 tokens: the longer ones are prefilled in chunks of the 24-token step budget.
    for (int j = 0; j < 3 + 5 * i; ++j) p.push_back((13 * i + 29 * j + 7) % 384);
    // Top-20 logprobs on every other one: results of several KiB per step.
    requests.push_back({p, 4 + 3 * (i % 4), "", {}, i % 2 == 0 ? 20 : 0});
  }
  requests.push_back(Sampled({5, 6, 7, 8, 9}, 14, 0.8f, 4242, false));
  requests.push_back(Sampled({9, 8, 7, 6, 5, 4}, 12, 0.7f, 99, true));
  std::vector<e2e::Outcome> got(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      // Staggered, so that some join while others run.
      std::this_thread::sleep_for(std::chrono::milliseconds(15 * (i % 5)));
      got[i] = Generate(requests[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(got[i].status.ok()) << "request " << i << ": " << got[i].status.error_message();
    EXPECT_EQ(got[i].finish, v1::FINISH_REASON_LENGTH) << "request " << i;
    EXPECT_EQ(got[i].ids, Offline(requests[i])) << "request " << i;
  }
  // And alone, after the crowd: the same.
  const e2e::Outcome alone = Generate(requests.back());
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
  EXPECT_EQ(alone.ids, got.back().ids);
  // The job is still whole (no rank ended).
  EXPECT_EQ(e2e::HealthStatus(*health_), grpc::health::v1::HealthCheckResponse::SERVING);
}

INSTANTIATE_TEST_SUITE_P(Stages, PipelineTest, ::testing::Values(2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat("pp", info.param);
                         });

}  // namespace
}  // namespace shardlm
