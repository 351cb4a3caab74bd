// End-to-end: the coordinator's OpenAI-compatible HTTP API (--http-listen 127.0.0.1:0).
//  - OpenAiServeTest: shardlm-coordinator and `mpirun -np 1 shardlm-worker` on SmolLM2 (models/;
//    skipped without it). The official `openai` Python client drives tests/e2e/openai_test.py
//    against it (skipped without the package); a client that hangs up mid-stream, or before a
//    whole answer, has its request leave the batch and its KV blocks freed (checked over gRPC
//    GetModelInfo).
//  - OpenAiSecurityTest: coordinators with no workers on a tiny model: --auth-token-file (a wrong
//    or missing bearer token gets 401) and --tls-cert/--tls-key/--tls-client-ca (certificates
//    from tests/tls/make-test-certs.sh; a client certificate of another CA, none, or plaintext
//    are refused).
// Every process started here is killed when its test suite ends, whatever happens.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/e2e/child_process.h"
#include "tests/e2e/service_client.h"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using e2e::Child;

const std::string kBin = std::string(SHARDLM_BINARY_DIR) + "/bin/";
const std::string kWork = std::string(SHARDLM_BINARY_DIR) + "/tests/e2e/openai_work";
const std::string kSmolLm2 =
    std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kScript = std::string(SHARDLM_SOURCE_DIR) + "/tests/e2e/openai_test.py";

using e2e::ReadFile;

// A coordinator process and its three addresses.
struct Coordinator {
  std::unique_ptr<Child> child;
  std::string grpc, worker, http;
};

// Starts shardlm-coordinator with `extra` flags; empty addresses (and the log's tail in *said)
// when it did not come up.
Coordinator StartCoordinator(const std::string& name, const std::string& model,
                             const std::vector<std::string>& extra, std::string* said) {
  std::vector<std::string> argv = {kBin + "shardlm-coordinator",
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--worker-listen",
                                   "127.0.0.1:0",
                                   "--http-listen",
                                   "127.0.0.1:0",
                                   "--worker-secret-file",
                                   e2e::WriteWorkerSecret(kWork + "/" + name + ".secret"),
                                   "--model",
                                   model};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Coordinator c;
  c.child = std::make_unique<Child>(argv, kWork + "/" + name + ".log", true);
  c.grpc = e2e::ListeningAddress(*c.child, said);
  if (!c.grpc.empty()) c.worker = e2e::WorkerAttachAddress(*c.child, said);
  if (!c.worker.empty()) c.http = e2e::AddressLine(*c.child, "http on ", said);
  if (c.http.empty()) *said += "; log: " + ReadFile(kWork + "/" + name + ".log");
  return c;
}

// Runs openai_test.py in `mode`; skips on its exit code 77, fails on anything but 0.
void RunPython(const std::string& mode, const std::string& base, const std::string& model,
               const std::string& extra_env = "") {
  const std::string log = kWork + "/python_" + mode + ".log";
  const std::string cmd = "SHARDLM_OPENAI_MODE=" + mode + " SHARDLM_HTTP=" + base +
                          " SHARDLM_MODEL=" + model + " " + extra_env + " python3 " + kScript +
                          " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  const std::string output = ReadFile(log);
  if (code == 77) GTEST_SKIP() << "openai_test.py skipped: " << output;
  EXPECT_EQ(code, 0) << log << ":\n" << output;
}

// A raw HTTP/1.1 connection, to hang up at a chosen moment.
class RawConnection {
 public:
  explicit RawConnection(const std::string& address) {
    const size_t colon = address.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) return;
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Close();
    timeval tv{30, 0};
    if (fd_ >= 0) setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawConnection() { Close(); }
  bool ok() const { return fd_ >= 0; }
  bool Post(const std::string& path, const std::string& body) {
    const std::string request = absl::StrCat("POST ", path,
                                             " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                             "application/json\r\nContent-Length: ",
                                             body.size(), "\r\n\r\n", body);
    return send(fd_, request.data(), request.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(request.size());
  }
  // Reads until `count` occurrences of `what` have arrived (false on EOF or timeout).
  bool ReadUntil(const std::string& what, int count) {
    char buf[4096];
    while (true) {
      int seen = 0;
      for (size_t at = received_.find(what); at != std::string::npos;
           at = received_.find(what, at + 1)) {
        ++seen;
      }
      if (seen >= count) return true;
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) return false;
      received_.append(buf, static_cast<size_t>(n));
    }
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  const std::string& received() const { return received_; }

 private:
  int fd_ = -1;
  std::string received_;
};

class OpenAiServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kSmolLm2)) return;
    fs::create_directories(kWork);
    std::string said;
    // A context long enough that the disconnect tests' requests would run for minutes.
    coordinator_ = StartCoordinator(
        "serve", kSmolLm2, {"--max-model-len", "2048", "--max-batch-tokens", "128"}, &said);
    ASSERT_FALSE(coordinator_.http.empty()) << "coordinator said: " << said;
    workers_ = std::make_unique<Child>(
        std::vector<std::string>{SHARDLM_MPIEXEC, "--oversubscribe", "--bind-to", "none", "-np",
                                 "1", kBin + "shardlm-worker", "--coordinator", coordinator_.worker,
                                 "--worker-secret-file", kWork + "/serve.secret"},
        kWork + "/workers.log", false);
    auto channel = grpc::CreateChannel(coordinator_.grpc, grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    serving_ = e2e::WaitHealth(*health_, e2e::Health::SERVING, 120s);
  }
  static void TearDownTestSuite() {
    workers_.reset();
    if (coordinator_.child) coordinator_.child->Kill(SIGTERM);
    coordinator_ = {};
  }
  void SetUp() override {
    if (!fs::exists(kSmolLm2)) {
      GTEST_SKIP() << kSmolLm2 << " is absent (scripts/get-model.sh fetches it)";
    }
    ASSERT_TRUE(serving_) << "the worker job did not attach; see " << kWork << "/workers.log";
  }

  static v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    return info;
  }
  // Polls GetModelInfo every 50 ms until `pred` holds; false after `timeout`.
  static bool WaitInfo(const std::function<bool(const v1::ModelInfo&)>& pred,
                       std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (pred(Info())) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  static bool Idle(const v1::ModelInfo& i) {
    return i.requests_running() == 0 && i.requests_waiting() == 0 &&
           i.kv_blocks_free() == i.kv_blocks_total();
  }

  static inline Coordinator coordinator_;
  static inline std::unique_ptr<Child> workers_;
  static inline std::unique_ptr<v1::Generation::Stub> stub_;
  static inline std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  static inline bool serving_ = false;
};

TEST_F(OpenAiServeTest, OpenAiPythonClient) {
  RunPython("serve", "http://" + coordinator_.http, kSmolLm2);
}

// 1,500 tokens take minutes here; the request must be gone within seconds of the hang-up.
const std::string kLongBody =
    R"({"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": true, "temperature": 0)";

TEST_F(OpenAiServeTest, HangingUpMidStreamCancelsAndFreesBlocks) {
  ASSERT_TRUE(WaitInfo(Idle, 10s)) << "not idle before the test";
  RawConnection conn(coordinator_.http);
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(conn.Post("/v1/completions", kLongBody + R"(, "stream": true})"));
  ASSERT_TRUE(conn.ReadUntil("data: ", 4)) << conn.received();
  const v1::ModelInfo during = Info();
  EXPECT_EQ(during.requests_running(), 1);
  EXPECT_LT(during.kv_blocks_free(), during.kv_blocks_total());
  conn.Close();
  EXPECT_TRUE(WaitInfo(Idle, 5s)) << Info().DebugString();
}

TEST_F(OpenAiServeTest, HangingUpBeforeAWholeAnswerCancelsAndFreesBlocks) {
  ASSERT_TRUE(WaitInfo(Idle, 10s)) << "not idle before the test";
  RawConnection conn(coordinator_.http);
  ASSERT_TRUE(conn.ok());
  ASSERT_TRUE(conn.Post("/v1/completions", kLongBody + "}"));
  ASSERT_TRUE(WaitInfo([](const v1::ModelInfo& i) { return i.requests_running() == 1; }, 10s));
  std::this_thread::sleep_for(300ms);  // some tokens generated
  conn.Close();
  EXPECT_TRUE(WaitInfo(Idle, 5s)) << Info().DebugString();
}

class OpenAiSecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::create_directories(kWork);
    tiny_ = kWork + "/tiny-llama";
    const std::string cmd = kBin + "shardlm make-tiny-model --out " + tiny_ +
                            " --vocab 64 --arch llama --layers 1 --hidden 32 --heads 2"
                            " --kv-heads 1 --intermediate 64 --seed 3 > " +
                            kWork + "/tiny.log 2>&1";
    made_ = std::system(cmd.c_str()) == 0;
  }
  void SetUp() override {
    ASSERT_TRUE(made_) << "make-tiny-model failed: " << kWork << "/tiny.log";
  }
  static inline std::string tiny_;
  static inline bool made_ = false;
};

TEST_F(OpenAiSecurityTest, BearerToken) {
  const std::string token_file = kWork + "/token";
  std::ofstream(token_file, std::ios::trunc) << "e2e-http-token-" << getpid() << "-0123456789\n";
  fs::permissions(token_file, fs::perms::owner_read | fs::perms::owner_write);
  std::string said;
  Coordinator c = StartCoordinator("token", tiny_, {"--auth-token-file", token_file}, &said);
  ASSERT_FALSE(c.http.empty()) << said;
  RunPython("token", "http://" + c.http, tiny_, "SHARDLM_TOKEN_FILE=" + token_file);
  c.child->Kill(SIGTERM);
}

TEST_F(OpenAiSecurityTest, TlsAndMutualTls) {
  const std::string certs = kWork + "/certs";
  const std::string make = "bash " + std::string(SHARDLM_SOURCE_DIR) +
                           "/tests/tls/make-test-certs.sh " + certs + " > " + kWork +
                           "/certs.log 2>&1";
  ASSERT_EQ(std::system(make.c_str()), 0) << ReadFile(kWork + "/certs.log");
  std::string said;
  Coordinator c = StartCoordinator("tls", tiny_,
                                   {"--tls-cert", certs + "/server.pem", "--tls-key",
                                    certs + "/server.key", "--tls-client-ca", certs + "/ca.pem"},
                                   &said);
  ASSERT_FALSE(c.http.empty()) << said;
  RunPython("tls", "https://" + c.http, tiny_, "SHARDLM_CERTS=" + certs);
  c.child->Kill(SIGTERM);
}

}  // namespace
}  // namespace shardlm
