// Security of the public gRPC API (coordinator/auth.h), with the real CoordinatorServer
// in-process and a fake worker job: TLS, mTLS, the bearer token and both together, each with a
// wrong credential refused; health checks open without the token; bad PEM files named at start;
// `shardlm info` with --tls-ca and --auth-token-file; and the Python client over TLS with a
// token (its own ctest entry, coordinator_security_python_test: it skips without grpcio).
// Certificates are made at test time by tests/tls/make-test-certs.sh.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "coordinator/auth.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/service_fixture.h"

namespace shardlm::coordinator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::FakeWorkerOptions;
using ::testing::HasSubstr;
using testing::IdsRequest;
using testing::kNotServing;
using testing::kServing;

constexpr char kToken[] = "test-token-0123456789abcdef";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  ::chmod(path.c_str(), 0600);
}

// --- The check itself, without a server.

TEST(BearerTokenTest, AcceptsOnlyTheRightToken) {
  const std::string path = "/shardlm.v1.Generation/Generate";
  EXPECT_TRUE(CheckBearerToken(path, {"Bearer test-token-0123456789abcdef"}, kToken).ok());
  EXPECT_TRUE(CheckBearerToken(path, {"bearer  test-token-0123456789abcdef"}, kToken).ok());
  // Any of several values may carry it.
  EXPECT_TRUE(CheckBearerToken(path, {"Basic eA==", std::string("Bearer ") + kToken}, kToken).ok());

  const grpc::Status missing = CheckBearerToken(path, {}, kToken);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.error_message(), HasSubstr("authorization: Bearer"));
  for (const char* wrong :
       {"Bearer test-token-0123456789abcdeX", "Bearer test-token-0123456789abcde",
        "Bearer test-token-0123456789abcdefg", "test-token-0123456789abcdef", "Bearer ",
        "Basic test-token-0123456789abcdef", ""}) {
    const grpc::Status s = CheckBearerToken(path, {wrong}, kToken);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << wrong;
    EXPECT_THAT(s.error_message(), HasSubstr("invalid bearer token")) << wrong;
    EXPECT_THAT(s.error_message(), ::testing::Not(HasSubstr(kToken)));
  }
  // Health checks are open; reflection and everything else are not.
  EXPECT_TRUE(CheckBearerToken("/grpc.health.v1.Health/Check", {}, kToken).ok());
  EXPECT_TRUE(CheckBearerToken("/grpc.health.v1.Health/Watch", {}, kToken).ok());
  EXPECT_FALSE(
      CheckBearerToken("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", {}, kToken)
          .ok());
  EXPECT_FALSE(CheckBearerToken("/grpc.health.v1.HealthX/Check", {}, kToken).ok());
  EXPECT_FALSE(CheckBearerToken("", {}, kToken).ok());
}

TEST(BearerTokenTest, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:1", "127.8.9.10:0", "localhost:5", "LocalHost:5", "[::1]:7",
                        "[::ffff:127.0.0.1]:7", "unix:/tmp/s", "unix-abstract:x"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a :
       {"0.0.0.0:1", "[::]:1", "10.0.0.1:5", "example.com:5", ":5", "128.0.0.1:1", "[::2]:1"}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
}

// --- The server.

class SecurityTest : public testing::ServiceTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        (fs::path(::testing::TempDir()) / ("shardlm_tls_" + std::to_string(::getpid()))).string());
    const std::string cmd = "bash " + std::string(SHARDLM_SOURCE_DIR) +
                            "/tests/tls/make-test-certs.sh " + *dir_ + " >/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd << " failed (is openssl installed?)";
    WriteFile(*dir_ + "/token", std::string(kToken) + "\n");
    WriteFile(*dir_ + "/wrong-token", "not-the-token-0123456789\n");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  static std::string F(const std::string& name) { return *dir_ + "/" + name; }

  // Client credentials from files ("" for none), as the CLI reads them.
  static ClientSecurity Sec(const std::string& ca, const std::string& cert = "",
                            const std::string& key = "", const std::string& token = "") {
    auto f = [](const std::string& n) { return n.empty() ? n : F(n); };
    absl::StatusOr<ClientSecurity> s = LoadClientSecurity(f(ca), f(cert), f(key), f(token));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : ClientSecurity();
  }

  void UseTls(bool client_ca) {
    options_.tls_cert = F("server.pem");
    options_.tls_key = F("server.key");
    if (client_ca) options_.tls_client_ca = F("ca.pem");
  }

  // Starts the server, then points the fixture's stubs (Health, Generate, Info) at it with
  // `security` and attaches a fake job.
  void StartAndAttach(const ClientSecurity& security, FakeWorkerOptions worker = {}) {
    StartServer();
    auto channel = CreateClientChannel(server_->address(), security);
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
    Attach(worker);
  }

  // GetModelInfo on a fresh channel with `security`.
  grpc::Status Probe(const ClientSecurity& security) {
    auto stub = v1::Generation::NewStub(CreateClientChannel(server_->address(), security));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::ModelInfo info;
    return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  }
  // grpc.health.v1 Check on a fresh channel with `security`; *status gets the answer.
  grpc::Status ProbeHealth(const ClientSecurity& security,
                           testing::HealthStatus* status = nullptr) {
    auto health =
        grpc::health::v1::Health::NewStub(CreateClientChannel(server_->address(), security));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status s = health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
    if (status != nullptr) *status = resp.status();
    return s;
  }

  // A call to a server-reflection method with `security` (raw bytes: the point is whether the
  // call gets past the token check).
  grpc::Status ProbeReflection(const ClientSecurity& security) {
    grpc::GenericStub stub(CreateClientChannel(server_->address(), security));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    grpc::CompletionQueue cq;
    grpc::ByteBuffer request, response;
    grpc::Status status;
    auto call = stub.PrepareUnaryCall(
        &ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", request, &cq);
    call->StartCall();
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }

  static void ExpectCode(const grpc::Status& s, grpc::StatusCode code, const std::string& what) {
    EXPECT_EQ(s.error_code(), code) << what << ": " << s.error_message();
  }

  static std::string* dir_;
};
std::string* SecurityTest::dir_ = nullptr;

TEST_F(SecurityTest, TlsServesClientsThatTrustItsCa) {
  UseTls(/*client_ca=*/false);
  StartAndAttach(Sec("ca.pem"));
  EXPECT_TRUE(Generate(IdsRequest({4, 5, 6}, 4)).status.ok());
  EXPECT_TRUE(Probe(Sec("ca.pem")).ok());
  // A client trusting another CA refuses the server's certificate; a plaintext client cannot
  // speak to a TLS port.
  ExpectCode(Probe(Sec("other-ca.pem")), grpc::StatusCode::UNAVAILABLE, "trusting other-ca");
  ExpectCode(Probe(ClientSecurity()), grpc::StatusCode::UNAVAILABLE, "plaintext");
  ExpectCode(ProbeHealth(ClientSecurity()), grpc::StatusCode::UNAVAILABLE, "plaintext health");
  ExpectNoWorkerErrors();
}

TEST_F(SecurityTest, MtlsAcceptsOnlyClientCertificatesOfItsCa) {
  UseTls(/*client_ca=*/true);
  StartAndAttach(Sec("ca.pem", "client.pem", "client.key"));
  EXPECT_TRUE(Generate(IdsRequest({4, 5, 6}, 4)).status.ok());
  EXPECT_TRUE(Probe(Sec("ca.pem", "client.pem", "client.key")).ok());
  ExpectCode(Probe(Sec("ca.pem")), grpc::StatusCode::UNAVAILABLE, "no client certificate");
  ExpectCode(Probe(Sec("ca.pem", "other-client.pem", "other-client.key")),
             grpc::StatusCode::UNAVAILABLE, "a client certificate of other-ca");
  // The handshake comes before any call: health checks need the certificate too.
  ExpectCode(ProbeHealth(Sec("ca.pem")), grpc::StatusCode::UNAVAILABLE, "health, no cert");
  ExpectNoWorkerErrors();
}

TEST_F(SecurityTest, TokenOnPlaintextRefusesCallersWithoutIt) {
  options_.auth_token = kToken;
  StartServer();
  // Health answers without the token (probes), before and after the job attaches.
  testing::HealthStatus health;
  ASSERT_TRUE(ProbeHealth(ClientSecurity(), &health).ok());
  EXPECT_EQ(health, kNotServing);
  auto channel = CreateClientChannel(server_->address(), Sec("", "", "", "token"));
  stub_ = v1::Generation::NewStub(channel);
  health_ = grpc::health::v1::Health::NewStub(channel);
  Attach();
  ASSERT_TRUE(ProbeHealth(ClientSecurity(), &health).ok());
  EXPECT_EQ(health, kServing);

  EXPECT_TRUE(Generate(IdsRequest({4, 5, 6}, 4)).status.ok());
  EXPECT_TRUE(Probe(Sec("", "", "", "token")).ok());
  const grpc::Status missing = Probe(ClientSecurity());
  ExpectCode(missing, grpc::StatusCode::UNAUTHENTICATED, "no token");
  EXPECT_THAT(missing.error_message(), HasSubstr("requires a bearer token"));
  const grpc::Status wrong = Probe(Sec("", "", "", "wrong-token"));
  ExpectCode(wrong, grpc::StatusCode::UNAUTHENTICATED, "wrong token");
  EXPECT_THAT(wrong.error_message(), HasSubstr("invalid bearer token"));

  // A stream without the token is refused before it reaches the service.
  auto bare = v1::Generation::NewStub(CreateClientChannel(server_->address(), ClientSecurity()));
  grpc::ClientContext ctx;
  auto reader = bare->Generate(&ctx, IdsRequest({4, 5, 6}, 4));
  v1::GenerateResponse resp;
  EXPECT_FALSE(reader->Read(&resp));
  ExpectCode(reader->Finish(), grpc::StatusCode::UNAUTHENTICATED, "Generate without token");

  // Reflection maps the API: it needs the token.
  ExpectCode(ProbeReflection(ClientSecurity()), grpc::StatusCode::UNAUTHENTICATED,
             "reflection without token");
  EXPECT_NE(ProbeReflection(Sec("", "", "", "token")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ExpectNoWorkerErrors();
}

TEST_F(SecurityTest, TokenAndTlsTogether) {
  UseTls(/*client_ca=*/false);
  options_.auth_token = kToken;
  StartAndAttach(Sec("ca.pem", "", "", "token"));
  EXPECT_TRUE(Generate(IdsRequest({4, 5, 6}, 4)).status.ok());
  EXPECT_TRUE(Probe(Sec("ca.pem", "", "", "token")).ok());
  ExpectCode(Probe(Sec("ca.pem")), grpc::StatusCode::UNAUTHENTICATED, "TLS, no token");
  ExpectCode(Probe(Sec("ca.pem", "", "", "wrong-token")), grpc::StatusCode::UNAUTHENTICATED,
             "TLS, wrong token");
  ExpectCode(Probe(Sec("other-ca.pem", "", "", "token")), grpc::StatusCode::UNAVAILABLE,
             "token, trusting other-ca");
  ExpectCode(Probe(Sec("", "", "", "token")), grpc::StatusCode::UNAVAILABLE, "token, plaintext");
  testing::HealthStatus health;
  ASSERT_TRUE(ProbeHealth(Sec("ca.pem"), &health).ok());
  EXPECT_EQ(health, kServing);
  ExpectNoWorkerErrors();
}

TEST_F(SecurityTest, BadPemFilesAreNamedAtStart) {
  struct Case {
    std::string cert, key, client_ca, flag;
  };
  const std::vector<Case> cases = {
      {F("missing.pem"), F("server.key"), "", "--tls-cert " + F("missing.pem")},
      {F("token"), F("server.key"), "", "--tls-cert " + F("token")},
      {F("server.pem"), F("ca.pem"), "", "--tls-key " + F("ca.pem")},
      // A real key, not the certificate's.
      {F("server.pem"), F("other-server.key"), "", "--tls-key " + F("other-server.key")},
      {F("server.pem"), F("server.key"), F("server.key"), "--tls-client-ca " + F("server.key")},
  };
  for (const Case& c : cases) {
    options_.tls_cert = c.cert;
    options_.tls_key = c.key;
    options_.tls_client_ca = c.client_ca;
    auto server = CoordinatorServer::Start(options_, testing::TinyModel());
    ASSERT_FALSE(server.ok()) << c.flag;
    EXPECT_THAT(std::string(server.status().message()), HasSubstr(c.flag));
  }
  // The client side names its flags too.
  auto s = LoadClientSecurity(F("token"), "", "", "");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--tls-ca " + F("token")));
  s = LoadClientSecurity(F("ca.pem"), F("client.pem"), "", "");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--tls-key"));
  s = LoadClientSecurity("", "", "", F("missing-token"));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("--auth-token-file"));
}

// `shardlm info --server` with --tls-ca and --auth-token-file (the other client commands share
// MakeChannel and its flags).
TEST_F(SecurityTest, CliInfoWithTlsAndToken) {
  UseTls(/*client_ca=*/false);
  options_.auth_token = kToken;
  StartAndAttach(Sec("ca.pem", "", "", "token"));
  auto run = [&](const std::string& flags, std::string* out, std::string* err) {
    const std::string o = F("cli.out"), e = F("cli.err");
    const std::string cmd = std::string(SHARDLM_BINARY_DIR) + "/bin/shardlm info --server " +
                            server_->address() + " " + flags + " >" + o + " 2>" + e;
    const int status = std::system(cmd.c_str());
    *out = ReadAll(o);
    *err = ReadAll(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string out, err;
  ASSERT_EQ(run("--tls-ca " + F("ca.pem") + " --auth-token-file " + F("token"), &out, &err), 0)
      << err;
  const nlohmann::json info = nlohmann::json::parse(out);
  EXPECT_EQ(info["workers_attached"], 1);
  EXPECT_EQ(info["model"], "tiny");

  EXPECT_EQ(run("--tls-ca " + F("ca.pem") + " --auth-token-file " + F("wrong-token"), &out, &err),
            1);
  EXPECT_THAT(err, HasSubstr("UNAUTHENTICATED"));
  EXPECT_EQ(run("--tls-ca " + F("ca.pem"), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("UNAUTHENTICATED"));
  EXPECT_EQ(run("--auth-token-file " + F("token"), &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("UNAVAILABLE"));
  EXPECT_EQ(run("--tls-ca " + F("ca.pem") + " --tls-cert " + F("client.pem") +
                    " --auth-token-file " + F("token"),
                &out, &err),
            1);
  EXPECT_THAT(err, HasSubstr("--tls-cert and --tls-key"));
}

// clients/python/test_client.py over TLS with the token (and its checks that callers without
// them are refused). The fake job takes 5 ms a step, so that its abort and deadline tests catch
// streams mid-way.
TEST_F(SecurityTest, PythonClientWithTlsAndToken) {
  UseTls(/*client_ca=*/false);
  options_.auth_token = kToken;
  FakeWorkerOptions slow;
  slow.step_delay = 5ms;
  StartAndAttach(Sec("ca.pem", "", "", "token"), slow);
  const std::string script = std::string(SHARDLM_SOURCE_DIR) + "/clients/python/test_client.py";
  const std::string log = F("python_client.log");
  const std::string cmd = "SHARDLM_SERVER=" + server_->address() +
                          " SHARDLM_TLS_CA=" + F("ca.pem") +
                          " SHARDLM_AUTH_TOKEN_FILE=" + F("token") +
                          " SHARDLM_READY_TIMEOUT=20 python3 " + script + " >" + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  const std::string output = ReadAll(log);
  // 0 passed, 1 failed, 77 skipped (a missing Python package; its output says which).
  if (code == 77) GTEST_SKIP() << "test_client.py skipped: " << output;
  EXPECT_EQ(code, 0) << output;
  ExpectNoWorkerErrors();
}

}  // namespace
}  // namespace shardlm::coordinator
