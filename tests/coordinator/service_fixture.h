// The fixture of the coordinator's in-process service tests (service_test.cpp, attach_test.cpp):
// the real CoordinatorServer on free loopback ports with fake worker jobs (fake_worker.h)
// attached over real gRPC streams, and client helpers for Generate, health and ModelInfo.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/server.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/coordinator/fake_worker.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator::testing {

using namespace std::chrono_literals;
using HealthStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;
constexpr HealthStatus kServing = grpc::health::v1::HealthCheckResponse::SERVING;
constexpr HealthStatus kNotServing = grpc::health::v1::HealthCheckResponse::NOT_SERVING;

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  std::vector<v1::GenerateResponse> messages;
  v1::Usage usage;
};

inline v1::GenerateRequest IdsRequest(const std::vector<int32_t>& prompt, int max_new) {
  v1::GenerateRequest r;
  for (int32_t id : prompt) r.mutable_token_ids()->add_ids(id);
  r.set_max_new_tokens(max_new);
  return r;
}

inline std::vector<int32_t> Prompt(int i, int len = 5) {
  std::vector<int32_t> p;
  for (int j = 0; j < len; ++j) p.push_back((31 * i + 7 * j + 3) % 256);
  return p;
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_ = testing::FakeJobCoordinatorOptions();
    options_.max_batch_tokens = 32;
    options_.max_running = 16;
    options_.max_queue = 64;
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    workers_.clear();
  }

  void StartServer(std::unique_ptr<ModelContext> model = testing::TinyModel()) {
    ASSERT_TRUE(ValidateOptions(options_).ok());
    auto server = CoordinatorServer::Start(options_, std::move(model));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel);
    health_ = grpc::health::v1::Health::NewStub(channel);
  }

  // Starts a fake job; with `wait`, until the coordinator serves on it.
  FakeWorker& Attach(FakeWorkerOptions o = {}, bool wait = true) {
    workers_.push_back(std::make_unique<FakeWorker>(server_->worker_address(), o));
    if (wait) {
      EXPECT_TRUE(WaitHealth(kServing, 10s)) << "the fake worker did not attach";
    }
    return *workers_.back();
  }

  HealthStatus Health(const std::string& service = "") {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 2s);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    if (!health_->Check(&ctx, req, &resp).ok()) return grpc::health::v1::HealthCheckResponse::UNKNOWN;
    return resp.status();
  }
  bool WaitHealth(HealthStatus want, std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (Health() == want && Health("shardlm.v1.Generation") == want) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  v1::ModelInfo Info() {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    return info;
  }
  // Waits until `pred(Info())` holds.
  bool WaitInfo(const std::function<bool(const v1::ModelInfo&)>& pred,
                std::chrono::milliseconds timeout = 3s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (pred(Info())) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  // Runs a Generate call; `keep_going` (after each message) returning false cancels it.
  Outcome Generate(const v1::GenerateRequest& req,
                   const std::function<bool(const Outcome&)>& keep_going = {},
                   std::chrono::milliseconds deadline = 30s) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    auto reader = stub_->Generate(&ctx, req);
    Outcome out;
    v1::GenerateResponse resp;
    while (reader->Read(&resp)) {
      out.ids.insert(out.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
      out.text += resp.text();
      if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        out.finish = resp.finish_reason();
        out.usage = resp.usage();
      }
      out.messages.push_back(resp);
      if (keep_going && !keep_going(out)) ctx.TryCancel();
    }
    out.status = reader->Finish();
    return out;
  }

  void ExpectNoWorkerErrors() {
    for (const auto& w : workers_) {
      for (const std::string& e : w->errors()) ADD_FAILURE() << "fake worker: " << e;
    }
  }

  CoordinatorOptions options_;
  std::unique_ptr<CoordinatorServer> server_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace shardlm::coordinator::testing
