// shardlm-coordinator as a process: started on port 0, it prints "listening on HOST:PORT" first
// on stdout and "worker attach on HOST:PORT" second; without workers it is NOT_SERVING and
// refuses Generate with UNAVAILABLE, while GetModelInfo, validation and server reflection work;
// the public port does not offer WorkerControl; SIGTERM ends it with exit code 0. Bad flags (the
// worker secret file included) exit 1 with a message.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "formats/random_weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "reflection.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"

extern char** environ;

namespace shardlm {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

const std::string kCoordinator = std::string(SHARDLM_BINARY_DIR) + "/bin/shardlm-coordinator";

// The coordinator as a child process: stdout through a pipe, stderr into `log`.
class Process {
 public:
  Process(const std::vector<std::string>& args, const std::string& log) {
    int fds[2];
    if (pipe(fds) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out_ = fdopen(fds[0], "r");
  }
  ~Process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ != nullptr) fclose(out_);
  }
  bool started() const { return pid_ > 0; }
  std::string ReadLine() {
    char buf[1024];
    if (out_ == nullptr || fgets(buf, sizeof(buf), out_) == nullptr) return "";
    return buf;
  }
  void Signal(int sig) { kill(pid_, sig); }
  // The exit code, or -1 when it did not exit normally within `timeout`.
  int Wait(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class BinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("coordinator-binary-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    model_ = dir_ + "/tiny";
    ASSERT_TRUE(WriteTinyModel(TinyModelSpec(), model_).ok());
    log_ = dir_ + "/coordinator.log";
    secret_ = WriteSecret("secret", "binary-test-secret-0123456789\n", 0600);
  }
  std::string WriteSecret(const std::string& name, const std::string& bytes, mode_t mode) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << bytes;
    chmod(path.c_str(), mode);
    return path;
  }
  void TearDown() override {
    if (std::getenv("SHARDLM_KEEP_TEST_DIR") != nullptr) return;
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string dir_, model_, log_, secret_;
};

TEST_F(BinaryTest, ServesWithoutWorkersAndStopsOnSigterm) {
  Process p({kCoordinator, "--listen", "127.0.0.1:0", "--worker-listen", "127.0.0.1:0",
             "--worker-secret-file", secret_, "--model", model_, "--tp", "2", "--kv-block-size",
             "8", "--max-model-len", "300"},
            log_);
  ASSERT_TRUE(p.started());
  const std::string line = p.ReadLine();
  ASSERT_EQ(line.rfind("listening on 127.0.0.1:", 0), 0u) << line << ReadFile(log_);
  const std::string address(absl::StripAsciiWhitespace(line.substr(13)));
  const std::string worker_line = p.ReadLine();
  ASSERT_EQ(worker_line.rfind("worker attach on 127.0.0.1:", 0), 0u)
      << worker_line << ReadFile(log_);
  const std::string worker_address(absl::StripAsciiWhitespace(worker_line.substr(17)));
  EXPECT_NE(worker_address, address);
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);

  auto health = grpc::health::v1::Health::NewStub(channel);
  for (const char* service : {"", "shardlm.v1.Generation"}) {
    grpc::ClientContext ctx;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    ASSERT_TRUE(health->Check(&ctx, req, &resp).ok()) << service;
    EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING) << service;
  }

  v1::GenerateRequest req;
  for (int32_t id : {1, 2, 3}) req.mutable_token_ids()->add_ids(id);
  req.set_max_new_tokens(4);
  {
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(st.error_message(), HasSubstr("no workers attached"));
  }
  {
    v1::GenerateRequest bad = req;
    bad.mutable_token_ids()->set_ids(0, 999);
    grpc::ClientContext ctx;
    auto reader = stub->Generate(&ctx, bad);
    v1::GenerateResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("token_ids.ids[0]: 999"));
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.model(), model_);
    EXPECT_EQ(info.architecture(), "llama");
    EXPECT_EQ(info.tp(), 2);
    EXPECT_EQ(info.workers_expected(), 2);
    EXPECT_EQ(info.workers_attached(), 0);
    EXPECT_EQ(info.context_length(), 300);
    EXPECT_EQ(info.kv_block_size(), 8);
    EXPECT_EQ(info.vocab_size(), 256);
  }
  // The services each port lists (server reflection): the worker service only on its own.
  auto list_services = [](const std::shared_ptr<grpc::Channel>& ch) {
    auto reflection = grpc::reflection::v1alpha::ServerReflection::NewStub(ch);
    grpc::ClientContext ctx;
    auto stream = reflection->ServerReflectionInfo(&ctx);
    grpc::reflection::v1alpha::ServerReflectionRequest list;
    list.set_list_services("*");
    std::set<std::string> services;
    EXPECT_TRUE(stream->Write(list));
    stream->WritesDone();
    grpc::reflection::v1alpha::ServerReflectionResponse resp;
    EXPECT_TRUE(stream->Read(&resp));
    for (const auto& s : resp.list_services_response().service()) services.insert(s.name());
    EXPECT_TRUE(stream->Finish().ok());
    return services;
  };
  {
    const std::set<std::string> services = list_services(channel);
    for (const char* want : {"shardlm.v1.Generation", "grpc.health.v1.Health"}) {
      EXPECT_EQ(services.count(want), 1u) << want;
    }
    EXPECT_EQ(services.count("shardlm.worker.v1.WorkerControl"), 0u);
    const std::set<std::string> on_worker_port =
        list_services(grpc::CreateChannel(worker_address, grpc::InsecureChannelCredentials()));
    EXPECT_EQ(on_worker_port.count("shardlm.worker.v1.WorkerControl"), 1u);
    EXPECT_EQ(on_worker_port.count("shardlm.v1.Generation"), 0u);
    EXPECT_EQ(on_worker_port.count("grpc.health.v1.Health"), 0u);
  }
  p.Signal(SIGTERM);
  EXPECT_EQ(p.Wait(10s), 0) << ReadFile(log_);
  EXPECT_THAT(ReadFile(log_), HasSubstr("shutting down"));
}

TEST_F(BinaryTest, BadFlagsAndModelsExitWithAMessage) {
  {
    Process p({kCoordinator, "--listen", "127.0.0.1:0", "--worker-secret-file", secret_, "--model",
               dir_ + "/missing"},
              log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--model"));
  }
  {
    Process p({kCoordinator, "--model", model_, "--worker-secret-file", secret_,
               "--kv-cache-memory", "lots"},
              log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--kv-cache-memory"));
  }
  {
    Process p(
        {kCoordinator, "--model", model_, "--worker-secret-file", secret_, "--max-running", "0"},
        log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--max-running"));
  }
}

TEST_F(BinaryTest, TheWorkerSecretFileIsRequiredAndChecked) {
  {
    Process p({kCoordinator, "--model", model_}, log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--worker-secret-file is required"));
  }
  {
    Process p({kCoordinator, "--model", model_, "--worker-secret-file", dir_ + "/none"}, log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--worker-secret-file " + dir_ + "/none: cannot read"));
  }
  {
    Process p(
        {kCoordinator, "--model", model_, "--worker-secret-file", WriteSecret("empty", "\n", 0600)},
        log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("the file is empty"));
  }
  {
    Process p({kCoordinator, "--model", model_, "--worker-secret-file",
               WriteSecret("short", "hunter2\n", 0600)},
              log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("the secret is 7 bytes, expected at least 16"));
  }
  {
    // Readable by others: a warning, then on to the next check (here the model).
    Process p({kCoordinator, "--model", dir_ + "/missing", "--worker-secret-file",
               WriteSecret("open", "0123456789abcdefgh\n", 0644)},
              log_);
    EXPECT_EQ(p.Wait(10s), 1);
    const std::string log = ReadFile(log_);
    EXPECT_THAT(log, HasSubstr("may be read by every user (mode 644): chmod 600 it"));
    EXPECT_THAT(log, HasSubstr("--model"));
  }
  {
    Process p({kCoordinator, "--model", model_, "--worker-secret-file", secret_, "--listen",
               "127.0.0.1:50999", "--worker-listen", "127.0.0.1:50999"},
              log_);
    EXPECT_EQ(p.Wait(10s), 1);
    EXPECT_THAT(ReadFile(log_), HasSubstr("--worker-listen: expected an address other than"));
  }
}

}  // namespace
}  // namespace shardlm
