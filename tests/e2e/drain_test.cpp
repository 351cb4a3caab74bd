// Graceful drain, end to end: `shardlm-coordinator` on free loopback ports and
// `mpirun -np 1 shardlm-worker` serving a tiny model big enough that a few hundred tokens take
// seconds. With streams in flight the coordinator gets SIGTERM: health turns NOT_SERVING at once,
// a new request is refused UNAVAILABLE ("draining"), the streams in flight finish with all their
// tokens, the worker job is told to exit and the coordinator exits 0. With --drain-timeout 1, or
// a second SIGTERM, long streams are cut off with UNAVAILABLE instead. Every process started here
// is killed when its test ends, whatever happens. Its own work folder (tests/e2e/drain_work).
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "formats/random_weights.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using e2e::Health;
using ::testing::HasSubstr;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/drain_work";

using e2e::ReadFile;

// One stream read on its own thread; `tokens` counts what has arrived so far.
struct Stream {
  std::atomic<int> tokens{0};
  e2e::Outcome out;
  std::thread thread;
};

class DrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
    // About 25M parameters: a decode step takes milliseconds on one thread, so a few hundred
    // tokens last seconds.
    TinyModelSpec spec;
    spec.layers = 8;
    spec.hidden = 512;
    spec.heads = 8;
    spec.kv_heads = 2;
    spec.intermediate = 1536;
    spec.vocab = 512;
    spec.seed = 7;
    model_ = kWork + "/llama-512h";
    ASSERT_TRUE(WriteTinyModel(spec, model_).ok());
    secret_ = e2e::WriteWorkerSecret(kWork + "/worker.secret");
  }

  // Starts the coordinator (with `flags` added) and a worker job, until SERVING.
  void Start(const std::vector<std::string>& flags) {
    log_ = kWork + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::vector<std::string> argv = {kBin + "shardlm-coordinator",
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--worker-listen",
                                     "127.0.0.1:0",
                                     "--worker-secret-file",
                                     secret_,
                                     "--model",
                                     model_,
                                     "--threads",
                                     "1",
                                     "--kv-cache-memory",
                                     "64MiB"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    coordinator_ = std::make_unique<e2e::Child>(argv, log_ + ".coordinator.log", true);
    std::string said;
    const std::string addr = e2e::ListeningAddress(*coordinator_, &said);
    ASSERT_FALSE(addr.empty()) << "coordinator said: " << said << "; see " << log_
                               << ".coordinator.log";
    const std::string worker_addr = e2e::WorkerAttachAddress(*coordinator_, &said);
    ASSERT_FALSE(worker_addr.empty()) << "coordinator said: " << said;
    if (std::find(flags.begin(), flags.end(), "--http-listen") != flags.end()) {
      http_ = e2e::AddressLine(*coordinator_, "http on ", &said);
      ASSERT_FALSE(http_.empty()) << "coordinator said: " << said;
    }
    auto channel = grpc::CreateChannel(addr, grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    workers_ = std::make_unique<e2e::Child>(
        std::vector<std::string>{SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np",
                                 "1", kBin + "shardlm-worker", "--coordinator", worker_addr,
                                 "--worker-secret-file", secret_},
        log_ + ".workers.log", false);
    ASSERT_TRUE(e2e::WaitHealth(*health_, Health::SERVING, 120s))
        << "workers did not attach; see " << log_ << ".workers.log";
  }
  void TearDown() override {
    for (auto& s : streams_) {
      if (s->thread.joinable()) s->thread.join();
    }
    if (http_thread_.joinable()) http_thread_.join();
    workers_.reset();
    coordinator_.reset();
  }

  // Opens `n` streams of `max_new` tokens and waits until each has streamed a few.
  void OpenStreams(int n, int max_new) {
    for (int i = 0; i < n; ++i) {
      auto s = std::make_unique<Stream>();
      Stream* raw = s.get();
      s->thread = std::thread([this, raw, i, max_new] {
        v1::GenerateRequest req;
        for (int32_t id : {1 + i, 2, 3}) req.mutable_token_ids()->add_ids(id);
        req.set_max_new_tokens(max_new);
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(0.0f);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + 180s);
        auto reader = stub_->Generate(&ctx, req);
        v1::GenerateResponse resp;
        while (reader->Read(&resp)) {
          raw->out.ids.insert(raw->out.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
          raw->tokens = static_cast<int>(raw->out.ids.size());
          if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
            raw->out.finish = resp.finish_reason();
          }
          if (!resp.error().empty()) raw->out.error = resp.error();
        }
        raw->out.status = reader->Finish();
      });
      streams_.push_back(std::move(s));
    }
    const auto end = std::chrono::steady_clock::now() + 60s;
    for (auto& s : streams_) {
      while (s->tokens < 3 && std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(10ms);
      }
      ASSERT_GE(s->tokens, 3) << "a stream got no tokens; see " << log_ << ".coordinator.log";
    }
  }
  void JoinStreams() {
    for (auto& s : streams_) s->thread.join();
  }
  // Sends `sig` to the coordinator process alone (not to its worker job).
  void Signal(int sig) { ASSERT_EQ(::kill(coordinator_->pid(), sig), 0); }

  // The coordinator exits 0 and the worker job (mpirun and its ranks) ends by itself.
  void ExpectCleanExit() {
    const std::optional<int> code = coordinator_->Wait(30s);
    ASSERT_TRUE(code.has_value()) << "the coordinator did not exit";
    EXPECT_EQ(*code, 0) << ReadFile(log_ + ".coordinator.log");
    const pid_t mpirun = workers_->pid();
    const std::optional<int> job = workers_->Wait(30s);
    ASSERT_TRUE(job.has_value()) << "the worker job did not end; ranks left: "
                                 << e2e::WorkerRanks(mpirun).size();
    EXPECT_EQ(*job, 0) << ReadFile(log_ + ".workers.log");
    EXPECT_THAT(ReadFile(log_ + ".workers.log"), Not(HasSubstr("shardlm-worker: error")));
  }

  // An HTTP client of the coordinator's --http-listen address.
  httplib::Client Http() const {
    httplib::Client client("http://" + http_);
    client.set_read_timeout(180, 0);
    return client;
  }

  static inline std::string model_, secret_;
  std::string log_;
  std::string http_;  // HOST:PORT of --http-listen, when given
  std::thread http_thread_;
  std::unique_ptr<e2e::Child> coordinator_, workers_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::vector<std::unique_ptr<Stream>> streams_;
};

TEST_F(DrainTest, SigtermLetsStreamsInFlightFinishAndExitsZero) {
  // --drain-timeout: its default, 30 s.
  ASSERT_NO_FATAL_FAILURE(Start({"--http-listen", "127.0.0.1:0"}));
  const int max_new = 150;
  // An HTTP completion in flight too: it must be answered whole.
  // (Shared with the thread: an early ASSERT return leaves it to TearDown's join.)
  auto http_in_flight = std::make_shared<std::optional<httplib::Result>>();
  http_thread_ = std::thread([this, http_in_flight, max_new] {
    http_in_flight->emplace(Http().Post(
        "/v1/completions",
        absl::StrCat(R"({"prompt": [9, 8, 7], "temperature": 0, "ignore_eos": true, )",
                     R"("max_tokens": )", max_new, "}"),
        "application/json"));
  });
  ASSERT_NO_FATAL_FAILURE(OpenStreams(4, max_new));
  // ... admitted before the signal: 4 gRPC streams + 1 HTTP completion live.
  bool all_live = false;
  for (int i = 0; i < 500 && !all_live; ++i) {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    all_live = info.requests_running() + info.requests_waiting() == 5;
    if (!all_live) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(all_live) << "the HTTP completion did not arrive";
  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(Signal(SIGTERM));
  std::vector<int> at_signal;
  for (auto& s : streams_) at_signal.push_back(s->tokens);

  // NOT_SERVING at once (within a second).
  bool not_serving = false;
  while (std::chrono::steady_clock::now() - signalled < 1s) {
    if (e2e::HealthStatus(*health_) == Health::NOT_SERVING) {
      not_serving = true;
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(not_serving) << "health still SERVING 1 s after SIGTERM";
  // A new request is refused.
  const e2e::Outcome refused = e2e::GenerateIds(*stub_, {5, 6, 7}, 4, 10s);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  EXPECT_THAT(refused.status.error_message(), HasSubstr("draining"));
  EXPECT_TRUE(refused.ids.empty());
  // The same over HTTP: /health and new completions say 503.
  httplib::Result health = Http().Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 503);
  httplib::Result refused_http =
      Http().Post("/v1/completions", R"({"prompt": [5, 6, 7], "max_tokens": 4})",
                  "application/json");
  ASSERT_TRUE(refused_http) << httplib::to_string(refused_http.error());
  EXPECT_EQ(refused_http->status, 503) << refused_http->body;
  EXPECT_THAT(refused_http->body, HasSubstr("draining"));

  JoinStreams();
  http_thread_.join();
  ASSERT_TRUE(http_in_flight->has_value());
  const httplib::Result& http = **http_in_flight;
  ASSERT_TRUE(http) << httplib::to_string(http.error());
  EXPECT_EQ(http->status, 200) << http->body;
  const auto completion = nlohmann::json::parse(http->body, nullptr, false);
  ASSERT_FALSE(completion.is_discarded()) << http->body;
  EXPECT_EQ(completion["usage"]["completion_tokens"], max_new);
  EXPECT_EQ(completion["choices"][0]["finish_reason"], "length");
  bool any_in_flight = false;
  for (size_t i = 0; i < streams_.size(); ++i) {
    const e2e::Outcome& o = streams_[i]->out;
    SCOPED_TRACE(i);
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(static_cast<int>(o.ids.size()), max_new);
    EXPECT_TRUE(o.error.empty()) << o.error;
    if (at_signal[i] < max_new) any_in_flight = true;
  }
  EXPECT_TRUE(any_in_flight) << "every stream had ended before SIGTERM: nothing was drained";
  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit());
  EXPECT_THAT(ReadFile(log_ + ".coordinator.log"), HasSubstr("drained: every request finished"));
}

TEST_F(DrainTest, TheDrainTimeoutCutsLongStreamsOffWithUnavailable) {
  ASSERT_NO_FATAL_FAILURE(Start({"--drain-timeout", "1"}));
  const int max_new = 480;
  ASSERT_NO_FATAL_FAILURE(OpenStreams(3, max_new));
  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(Signal(SIGTERM));
  JoinStreams();
  const double ended_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - signalled).count();
  for (size_t i = 0; i < streams_.size(); ++i) {
    const e2e::Outcome& o = streams_[i]->out;
    SCOPED_TRACE(i);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
    EXPECT_LT(static_cast<int>(o.ids.size()), max_new);
    EXPECT_EQ(o.finish, v1::FINISH_REASON_ERROR);
  }
  EXPECT_GE(ended_s, 0.9) << "the streams were cut before the drain timeout";
  EXPECT_LT(ended_s, 15.0);
  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit());
}

TEST_F(DrainTest, ASecondSigtermEndsTheDrainAtOnce) {
  ASSERT_NO_FATAL_FAILURE(Start({"--drain-timeout", "120"}));
  const int max_new = 480;
  ASSERT_NO_FATAL_FAILURE(OpenStreams(2, max_new));
  ASSERT_NO_FATAL_FAILURE(Signal(SIGTERM));
  ASSERT_TRUE(e2e::WaitHealth(*health_, Health::NOT_SERVING, 5s));
  const auto second = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(Signal(SIGTERM));
  JoinStreams();
  const double ended_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - second).count();
  for (auto& s : streams_) {
    EXPECT_EQ(s->out.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << s->out.status.error_message();
    EXPECT_LT(static_cast<int>(s->out.ids.size()), max_new);
  }
  EXPECT_LT(ended_s, 5.0) << "the second SIGTERM did not end the drain";
  ASSERT_NO_FATAL_FAILURE(ExpectCleanExit());
}

}  // namespace
}  // namespace shardlm
