// End-to-end: `shardlm-coordinator` on a free loopback port and `mpirun -np 2 shardlm-worker`
// (tp=2) serving a tiny model; everything through the public gRPC API. Every process started
// here is in its own process group and is killed in TearDown, whatever happens.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
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
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/work";

using e2e::Child;

using e2e::Shell;

class ServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::create_directories(kWork);
    model_ = kWork + "/llama-256h";
    // Large enough that a long generation takes a while (the worker-death test kills the job
    // mid-stream), small enough to load at once.
    Shell(kBin + "shardlm make-tiny-model --out " + model_ +
        " --vocab 512 --arch llama --layers 4 --hidden 256 --heads 8 --kv-heads 2"
        " --intermediate 768 --seed 5 2>&1");
    coordinator_ = std::make_unique<Child>(
        std::vector<std::string>{kBin + "shardlm-coordinator", "--listen", "127.0.0.1:0",
                                 "--worker-listen", "127.0.0.1:0", "--worker-secret-file",
                                 secret_ = e2e::WriteWorkerSecret(kWork + "/worker.secret"),
                                 "--model", model_, "--tp", "2", "--max-batch-tokens", "64",
                                 "--kv-cache-memory", "1MiB", "--kv-block-size", "4", "--threads",
                                 "1"},
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
    workers_.reset();
    if (coordinator_) coordinator_->Kill(SIGTERM);
    coordinator_.reset();
  }

  static void StartWorkers() {
    workers_ = std::make_unique<Child>(
        std::vector<std::string>{SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np",
                                 "2", kBin + "shardlm-worker", "--coordinator", worker_addr_,
                                 "--worker-secret-file", secret_},
        kWork + "/workers.log", false);
  }
  static e2e::Health::ServingStatus Health() { return e2e::HealthStatus(*health_); }
  static bool WaitHealth(e2e::Health::ServingStatus want, std::chrono::seconds timeout) {
    return e2e::WaitHealth(*health_, want, timeout);
  }
  static v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    return info;
  }
  static void EnsureServing() {
    if (Health() == grpc::health::v1::HealthCheckResponse::SERVING) return;
    if (!workers_) StartWorkers();
    ASSERT_TRUE(WaitHealth(grpc::health::v1::HealthCheckResponse::SERVING, 120s))
        << "workers did not attach; see " << kWork << "/workers.log and coordinator.log";
  }

  struct Outcome {
    grpc::Status status;
    std::vector<int32_t> ids;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  };
  static Outcome Generate(const v1::GenerateRequest& req, std::function<bool(int)> keep_going = {},
                          grpc::ClientContext* ctx_in = nullptr) {
    grpc::ClientContext local;
    grpc::ClientContext& ctx = ctx_in ? *ctx_in : local;
    ctx.set_deadline(std::chrono::system_clock::now() + 120s);
    auto reader = stub_->Generate(&ctx, req);
    Outcome out;
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      out.ids.insert(out.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
      if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.finish = resp.finish_reason();
      if (keep_going && !keep_going(static_cast<int>(out.ids.size()))) ctx.TryCancel();
    }
    out.status = reader->Finish();
    return out;
  }
  static v1::GenerateRequest IdsRequest(std::vector<int32_t> ids, int max_new) {
    v1::GenerateRequest req;
    for (int32_t id : ids) req.mutable_token_ids()->add_ids(id);
    req.set_max_new_tokens(max_new);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0.0f);
    return req;
  }
  // `shardlm generate --model` in one process (greedy unless `flags` say otherwise).
  static std::vector<int32_t> Offline(const std::vector<int32_t>& prompt, int max_new,
                                      const std::string& flags = "") {
    return e2e::OfflineIds(kBin + "shardlm", model_, prompt, max_new, flags);
  }

  static inline std::string model_, addr_, worker_addr_, secret_;
  static inline std::unique_ptr<Child> coordinator_, workers_;
  static inline std::unique_ptr<v1::Generation::Stub> stub_;
  static inline std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_F(ServiceTest, NotServingWithoutWorkersThenServing) {
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  Outcome o = Generate(IdsRequest({1, 2, 3}, 4));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
  EnsureServing();
  const v1::ModelInfo info = Info();
  EXPECT_EQ(info.tp(), 2);
  EXPECT_EQ(info.workers_attached(), 2);
  EXPECT_GT(info.kv_blocks_total(), 0);
  EXPECT_EQ(info.kv_blocks_free(), info.kv_blocks_total());
}

TEST_F(ServiceTest, ConcurrentGreedyEqualsSoloAndOffline) {
  EnsureServing();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> p;
    for (int j = 0; j <= 3 + 2 * i; ++j) p.push_back((17 * i + 31 * j + 5) % 256);
    prompts.push_back(p);
  }
  const int max_new = 8;
  std::vector<Outcome> together(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(IdsRequest(prompts[i], max_new)); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].finish, v1::FINISH_REASON_LENGTH);
    const Outcome solo = Generate(IdsRequest(prompts[i], max_new));
    ASSERT_TRUE(solo.status.ok()) << solo.status.error_message();
    EXPECT_EQ(together[i].ids, solo.ids) << "prompt " << i;
    EXPECT_EQ(solo.ids, Offline(prompts[i], max_new)) << "prompt " << i;
  }
}

TEST_F(ServiceTest, SeededSamplingIsTheSameAloneAndInABatch) {
  EnsureServing();
  auto sampled = [](std::vector<int32_t> prompt, uint64_t seed) {
    v1::GenerateRequest req = IdsRequest(prompt, 12);
    req.mutable_sampling()->set_temperature(0.8f);
    req.mutable_sampling()->set_top_p(0.9f);
    req.mutable_sampling()->set_seed(seed);
    return req;
  };
  const v1::GenerateRequest mine = sampled({9, 8, 7, 6}, 4242);
  const Outcome alone = Generate(mine);
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
  std::vector<Outcome> crowd(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      crowd[i] = Generate(i == 3 ? mine : sampled({i + 1, 2 * i + 3, 5}, 100 + i));
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_TRUE(crowd[3].status.ok());
  EXPECT_EQ(crowd[3].ids, alone.ids);
  EXPECT_NE(alone.ids, Offline({9, 8, 7, 6}, 12));  // it really sampled
}

// Offline `shardlm generate` runs the worker's engine and sampler: with the same seed and
// sampling flags it gives the service's tokens (tp=2 there, one process here), for plain
// sampling (drawn by the backend offline, on the host at tp=2) and with the three penalties.
TEST_F(ServiceTest, SeededSamplingOfflineEqualsService) {
  EnsureServing();
  const std::vector<int32_t> prompt = {9, 8, 7, 6, 9, 8};
  v1::GenerateRequest plain = IdsRequest(prompt, 16);
  plain.mutable_sampling()->set_temperature(0.8f);
  plain.mutable_sampling()->set_top_p(0.9f);
  plain.mutable_sampling()->set_seed(4242);
  const Outcome served_plain = Generate(plain);
  ASSERT_TRUE(served_plain.status.ok()) << served_plain.status.error_message();
  EXPECT_EQ(served_plain.ids, Offline(prompt, 16, "--temperature 0.8 --top-p 0.9 --seed 4242"));

  v1::GenerateRequest penalized = IdsRequest(prompt, 16);
  v1::SamplingParams* s = penalized.mutable_sampling();
  s->set_temperature(0.7f);
  s->set_top_k(40);
  s->set_min_p(0.05f);
  s->set_repetition_penalty(1.3f);
  s->set_presence_penalty(0.5f);
  s->set_frequency_penalty(0.4f);
  s->set_seed(99);
  const Outcome served_penalized = Generate(penalized);
  ASSERT_TRUE(served_penalized.status.ok()) << served_penalized.status.error_message();
  EXPECT_EQ(served_penalized.ids,
            Offline(prompt, 16,
                    "--temperature 0.7 --top-k 40 --min-p 0.05 --repetition-penalty 1.3 "
                    "--presence-penalty 0.5 --frequency-penalty 0.4 --seed 99"));
  // Both really sampled, and differently.
  const std::vector<int32_t> greedy = Offline(prompt, 16);
  EXPECT_NE(served_plain.ids, greedy);
  EXPECT_NE(served_penalized.ids, greedy);
  EXPECT_NE(served_plain.ids, served_penalized.ids);
}

TEST_F(ServiceTest, CancellationFreesBlocks) {
  EnsureServing();
  const int64_t total = Info().kv_blocks_total();
  v1::GenerateRequest req = IdsRequest({5, 6, 7}, 200);
  int seen = 0;
  const Outcome o = Generate(req, [&](int n) {
    seen = n;
    return n < 3;
  });
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_GE(seen, 3);
  bool freed = false;
  for (int i = 0; i < 50 && !freed; ++i) {
    freed = Info().kv_blocks_free() == total;
    if (!freed) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(freed) << Info().kv_blocks_free() << " of " << total << " free";
  // Abort by id, from another call, once tokens flow.
  req.set_request_id("abort-me");
  bool found = false;
  const Outcome aborted = Generate(req, [&](int n) {
    if (n >= 3 && !found) {
      grpc::ClientContext actx;
      v1::AbortRequest areq;
      areq.set_request_id("abort-me");
      v1::AbortResponse aresp;
      EXPECT_TRUE(stub_->Abort(&actx, areq, &aresp).ok());
      found = aresp.found();
      EXPECT_TRUE(found);
    }
    return true;
  });
  EXPECT_EQ(aborted.finish, v1::FINISH_REASON_CANCELLED) << aborted.status.error_message();
  EXPECT_LT(aborted.ids.size(), 200u);
}

TEST_F(ServiceTest, BadFieldsAreRefusedByName) {
  EnsureServing();
  struct Bad {
    std::string field;
    std::function<void(v1::GenerateRequest&)> spoil;
  };
  const std::vector<Bad> bad = {
      {"temperature", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }},
      {"top_p", [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0); }},
      {"max_new_tokens", [](v1::GenerateRequest& r) { r.set_max_new_tokens(0); }},
      {"token_ids", [](v1::GenerateRequest& r) { r.mutable_token_ids()->add_ids(512); }},
      {"prompt", [](v1::GenerateRequest& r) { r.clear_token_ids(); }},
  };
  for (const Bad& b : bad) {
    v1::GenerateRequest req = IdsRequest({1, 2, 3}, 4);
    b.spoil(req);
    const Outcome o = Generate(req);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.field;
    EXPECT_THAT(o.status.error_message(), testing::HasSubstr(b.field));
  }
  // The server is still fine.
  EXPECT_TRUE(Generate(IdsRequest({1, 2, 3}, 2)).status.ok());
}

TEST_F(ServiceTest, PythonClientStreams) {
  EnsureServing();
  const std::string script = std::string(SHARDLM_SOURCE_DIR) + "/clients/python/test_client.py";
  ASSERT_TRUE(fs::exists(script)) << script << " is part of the repository";
  const std::string log = kWork + "/python_client.log";
  const int rc = std::system(
      ("SHARDLM_SERVER=" + addr_ + " python3 " + script + " > " + log + " 2>&1").c_str());
  const int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream in(log);
  const std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // test_client.py's exit codes: 0 passed, 1 failed, 77 skipped (SHARDLM_SERVER unset, which
  // cannot happen here, or a missing Python package; its output says which).
  if (code == 77) GTEST_SKIP() << "test_client.py skipped: " << output;
  EXPECT_EQ(code, 0) << log << ":\n" << output;
}

// Last: kill -9 of one rank mid-stream, then the job is relaunched. No accepted request is lost:
// a greedy and a seeded stream, both cut mid-way, complete with exactly the ids of an
// undisturbed run (no token repeated or missing), recomputed on the new job from their prompt
// plus what they had streamed. Prints the detection and resume times.
TEST_F(ServiceTest, RankKilledMidStreamThenRelaunchedResumesExactly) {
  EnsureServing();
  constexpr int kTokens = 40;
  v1::GenerateRequest greedy = IdsRequest({3, 14, 15, 92, 6}, kTokens);
  v1::GenerateRequest seeded = IdsRequest({2, 71, 82, 8}, kTokens);
  seeded.mutable_sampling()->set_temperature(0.8f);
  seeded.mutable_sampling()->set_top_p(0.9f);
  seeded.mutable_sampling()->set_seed(777);
  const Outcome greedy_ref = Generate(greedy);
  const Outcome seeded_ref = Generate(seeded);
  ASSERT_TRUE(greedy_ref.status.ok()) << greedy_ref.status.error_message();
  ASSERT_TRUE(seeded_ref.status.ok()) << seeded_ref.status.error_message();
  ASSERT_EQ(greedy_ref.ids.size(), static_cast<size_t>(kTokens));
  ASSERT_EQ(seeded_ref.ids.size(), static_cast<size_t>(kTokens));

  using Clock = std::chrono::steady_clock;
  struct Stream {
    Outcome out;
    std::mutex mu;
    std::vector<std::pair<Clock::time_point, int>> arrivals;  // (when, ids so far)
  };
  Stream streams[2];
  grpc::ClientContext contexts[2];
  std::atomic<int> greedy_seen{0};
  std::vector<std::thread> threads;
  // On a failed assertion the streams are cancelled and joined before they go out of scope.
  struct JoinAll {
    std::vector<std::thread>& threads;
    grpc::ClientContext* contexts;
    ~JoinAll() {
      for (auto& t : threads) {
        if (!t.joinable()) continue;
        for (int k = 0; k < 2; ++k) contexts[k].TryCancel();
        t.join();
      }
    }
  } join_all{threads, contexts};
  for (int k = 0; k < 2; ++k) {
    threads.emplace_back([&, k] {
      streams[k].out = Generate(
          k == 0 ? greedy : seeded,
          [&, k](int n) {
            {
              std::lock_guard<std::mutex> lock(streams[k].mu);
              streams[k].arrivals.emplace_back(Clock::now(), n);
            }
            if (k == 0) greedy_seen = n;
            return true;
          },
          &contexts[k]);
    });
  }
  const Clock::time_point started = Clock::now();
  while (greedy_seen < 8 && Clock::now() - started < 60s) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const std::vector<pid_t> ranks = e2e::WorkerRanks(workers_->pid());
  ASSERT_EQ(ranks.size(), 2u) << "expected the 2 ranks of the job under mpirun";
  ASSERT_EQ(kill(ranks.back(), SIGKILL), 0);
  const Clock::time_point t_kill = Clock::now();
  const int seen_at_kill = greedy_seen;
  // Detected: the coordinator says NOT_SERVING.
  Clock::time_point t_detect = t_kill;
  while (Health() != grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
    ASSERT_LT(Clock::now() - t_kill, 30s) << "the lost rank was not noticed";
    std::this_thread::sleep_for(10ms);
  }
  t_detect = Clock::now();
  // mpirun ends the rest of the job; then the job is relaunched, as a supervisor would.
  const std::optional<int> code = workers_->Wait(30s);
  ASSERT_TRUE(code.has_value()) << "mpirun did not end after a rank was killed";
  workers_.reset();
  EXPECT_EQ(Info().requests_waiting(), 2) << "the two requests are held";
  const Clock::time_point t_relaunch = Clock::now();
  StartWorkers();
  for (auto& t : threads) t.join();

  const Outcome& g = streams[0].out;
  const Outcome& r = streams[1].out;
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(g.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(g.ids, greedy_ref.ids) << "greedy stream after the relaunch";
  EXPECT_EQ(r.ids, seeded_ref.ids) << "seeded stream after the relaunch";
  // It was really cut mid-stream: tokens came before the kill and after the relaunch.
  EXPECT_GE(seen_at_kill, 8);
  EXPECT_LT(seen_at_kill, kTokens) << "the stream ended before the kill";
  Clock::time_point first_after = t_relaunch;
  bool resumed = false;
  {
    std::lock_guard<std::mutex> lock(streams[0].mu);
    for (const auto& [when, n] : streams[0].arrivals) {
      if (when > t_relaunch) {
        first_after = when;
        resumed = true;
        break;
      }
    }
  }
  ASSERT_TRUE(resumed) << "no greedy token arrived after the relaunch";
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf("[ measured ] kill -9 of rank pid %d after %d of %d tokens: NOT_SERVING after "
              "%.0f ms; relaunched %.0f ms after the kill; first resumed token %.0f ms after "
              "the relaunch (%.0f ms after the kill)\n",
              static_cast<int>(ranks.back()), seen_at_kill, kTokens, ms(t_detect - t_kill),
              ms(t_relaunch - t_kill), ms(first_after - t_relaunch), ms(first_after - t_kill));
  RecordProperty("detection_ms", static_cast<int>(ms(t_detect - t_kill)));
  RecordProperty("resume_after_relaunch_ms", static_cast<int>(ms(first_after - t_relaunch)));
  EXPECT_EQ(Health(), grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace shardlm
