// The worker side of the coordinator's Abort, end to end: a fake coordinator in this process
// (tests/worker/fake_coordinator.h) drives `mpirun -np 2 shardlm-worker` (tp=2, a tiny model)
// into a step in which rank 0 sleeps 60 s (`--inject-fault Linear:5:0:sleep=60`) while rank 1
// waits for it in the layer's all-reduce. Then:
//   - Abort: rank 0's stream thread calls MPI_Abort although MPI is initialised FUNNELED and
//     its main thread is asleep in the step; every rank is gone within seconds;
//   - the stream ends mid-step (the coordinator cancelled the attach or vanished): the job is
//     aborted once --coordinator-lost-grace has passed;
//   - the stream ends while the job is idle: the normal exit, no MPI_Abort.
// Every process started here is killed when its test ends, whatever happens.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "formats/random_weights.h"
#include "tests/e2e/child_process.h"
#include "tests/worker/fake_coordinator.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using shardlm::testing::FakeCoordinator;
using ::testing::HasSubstr;
using ::testing::Not;
using worker::v1::CoordinatorMessage;
using worker::v1::WorkerMessage;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/worker_abort_work";

using e2e::ReadFile;

// Whether `pid` is gone (or a zombie nobody reaped yet).
bool Gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

class WorkerAbortTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::remove_all(kWork);
    fs::create_directories(kWork);
    TinyModelSpec spec;
    spec.heads = 4;
    spec.seed = 7;
    ASSERT_TRUE(WriteTinyModel(spec, kWork + "/llama-tiny").ok());
  }

  enum class Then { kAbort, kCancelMidStep, kEndWhileIdle };

  // The coordinator's side: load, then (unless kEndWhileIdle) one step, then `then`.
  grpc::Status Script(FakeCoordinator::ServerStream* stream, Then then) {
    CoordinatorMessage load;
    worker::v1::LoadCommand* l = load.mutable_load();
    l->set_model(kWork + "/llama-tiny");
    l->set_tp(2);
    l->set_pp(1);
    l->set_kv_block_size(16);
    l->set_kv_cache_bytes(1 << 20);
    l->set_max_batch_tokens(64);
    l->set_threads(1);
    WorkerMessage loaded;
    if (!stream->Write(load) || !stream->Read(&loaded) || !loaded.loaded().ok()) {
      loaded_.set_value(false);
      return grpc::Status(grpc::StatusCode::ABORTED, "load failed");
    }
    loaded_.set_value(true);
    if (then == Then::kEndWhileIdle) {
      std::this_thread::sleep_for(500ms);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is going away");
    }
    CoordinatorMessage step;
    step.mutable_step()->set_step_id(1);
    worker::v1::SeqStep* seq = step.mutable_step()->add_seqs();
    seq->set_seq_id(1);
    for (int32_t id : {1, 2, 3, 4, 5}) seq->add_tokens(id);
    seq->set_start_pos(0);
    seq->add_block_table(0);
    seq->set_sample(true);
    seq->set_prompt_len(5);
    stream->Write(step);
    std::this_thread::sleep_for(1500ms);  // well into the step: rank 0 sleeps, rank 1 waits
    last_move_ = std::chrono::steady_clock::now().time_since_epoch().count();
    if (then == Then::kCancelMidStep) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the coordinator cancelled the attach");
    }
    CoordinatorMessage abort;
    abort.mutable_abort()->set_reason("step 1 missed its deadline (drill)");
    stream->Write(abort);
    WorkerMessage ignored;
    while (stream->Read(&ignored)) {
    }
    return grpc::Status::OK;
  }

  // Runs the job against a fake coordinator playing `then`; returns the job's exit code (nullopt
  // when it did not end within `within` of the script's last move) and fills `log_text`.
  std::optional<int> RunJob(Then then, const std::vector<std::string>& flags,
                            std::chrono::seconds within, std::string& log_text,
                            double* seconds_to_end = nullptr) {
    FakeCoordinator coordinator([&](grpc::ServerContext*, FakeCoordinator::ServerStream* stream) {
      return Script(stream, then);
    });
    const std::string log =
        kWork + "/" + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".log";
    std::vector<std::string> argv = {
        SHARDLM_MPIEXEC,         "--oversubscribe", "--bind-to",          "none", "-np", "2",
        kBin + "shardlm-worker", "--coordinator",   coordinator.address(),
        "--worker-secret-file",  e2e::WriteWorkerSecret(kWork + "/worker.secret")};
    argv.insert(argv.end(), flags.begin(), flags.end());
    e2e::Child job(argv, log, false);
    std::future<bool> loaded = loaded_.get_future();
    EXPECT_EQ(loaded.wait_for(120s), std::future_status::ready) << "no load; see " << log;
    EXPECT_TRUE(loaded.get()) << "see " << log;
    const std::vector<pid_t> ranks = e2e::WorkerRanks(job.pid());
    EXPECT_EQ(ranks.size(), 2u);
    // The script's last move comes 1.5 s into the step (0.5 s after the load when idle).
    std::optional<int> code = job.Wait(within + 2s);
    if (code.has_value() && seconds_to_end != nullptr && then != Then::kEndWhileIdle) {
      const std::chrono::steady_clock::time_point last_move(
          std::chrono::steady_clock::duration(last_move_.load()));
      *seconds_to_end =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - last_move).count();
    }
    // Every rank is gone, not only mpirun.
    const auto end = std::chrono::steady_clock::now() + 5s;
    for (pid_t p : ranks) {
      while (!Gone(p) && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(50ms);
      EXPECT_TRUE(Gone(p)) << "rank process " << p << " was left behind; see " << log;
      if (!Gone(p)) kill(p, SIGKILL);
    }
    log_text = ReadFile(log);
    return code;
  }

  std::promise<bool> loaded_;
  // When the script made its last move mid-step (steady_clock ticks; set on the server's thread).
  std::atomic<int64_t> last_move_{0};
};

TEST_F(WorkerAbortTest, AbortEndsEveryRankAtOnceWhileAStepRuns) {
  std::string log;
  double seconds = -1;
  const std::optional<int> code =
      RunJob(Then::kAbort, {"--inject-fault", "Linear:5:0:sleep=60"}, 10s, log, &seconds);
  ASSERT_TRUE(code.has_value()) << "the job outlived the Abort:\n" << log;
  EXPECT_NE(*code, 0);
  EXPECT_LT(seconds, 10.0);
  EXPECT_THAT(log, HasSubstr("the coordinator aborts the job: step 1 missed its deadline (drill)"));
}

TEST_F(WorkerAbortTest, TheStreamEndingMidStepAbortsTheJobAfterTheGrace) {
  std::string log;
  double seconds = -1;
  const std::optional<int> code =
      RunJob(Then::kCancelMidStep,
             {"--inject-fault", "Linear:5:0:sleep=60", "--coordinator-lost-grace", "2"}, 12s, log,
             &seconds);
  ASSERT_TRUE(code.has_value()) << "the job outlived its coordinator:\n" << log;
  EXPECT_NE(*code, 0);
  EXPECT_GE(seconds, 2.0);
  EXPECT_LT(seconds, 12.0);
  EXPECT_THAT(log, HasSubstr("the coordinator stream ended while this job was busy in a step, "
                             "and it is still busy 2 s later"));
}

TEST_F(WorkerAbortTest, TheStreamEndingWhileIdleEndsTheJobTheNormalWay) {
  std::string log;
  const std::optional<int> code =
      RunJob(Then::kEndWhileIdle, {"--coordinator-lost-grace", "2"}, 10s, log);
  ASSERT_TRUE(code.has_value()) << "the job did not end:\n" << log;
  EXPECT_EQ(*code, 1);
  EXPECT_THAT(log, HasSubstr("coordinator ended the attach stream: 14: the coordinator is going "
                             "away"));
  EXPECT_THAT(log, Not(HasSubstr("MPI_ABORT")));
  EXPECT_THAT(log, Not(HasSubstr("still busy")));
}

}  // namespace
}  // namespace shardlm
