// A worker job's logprobs reach the client finite, whatever it sends: -inf becomes the floor,
// and NaN ends that request with INTERNAL (and no token) while the job keeps serving others.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>

#include "base/logprob.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/coordinator/fake_worker.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;

struct Outcome {
  grpc::Status status;
  std::vector<v1::GenerateResponse> messages;
};

Outcome Generate(v1::Generation::Stub& stub, int32_t logprobs) {
  v1::GenerateRequest request;
  for (int32_t id : {3, 4, 5}) request.mutable_token_ids()->add_ids(id);
  request.set_max_new_tokens(3);
  request.set_logprobs(logprobs);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  Outcome run;
  auto reader = stub.Generate(&ctx, request);
  v1::GenerateResponse m;
  while (reader->Read(&m)) run.messages.push_back(m);
  run.status = reader->Finish();
  return run;
}

// Starts a coordinator on the tiny model with a fake job that reports `logprob`; runs `check`.
template <typename Check>
void WithWorker(float logprob, Check check) {
  const CoordinatorOptions options = testing::FakeJobCoordinatorOptions();
  auto server = CoordinatorServer::Start(options, testing::TinyModel());
  ASSERT_TRUE(server.ok()) << server.status();
  testing::FakeWorkerOptions worker_options;
  worker_options.logprob = logprob;
  testing::FakeWorker worker((*server)->worker_address(), worker_options);
  auto stub = v1::Generation::NewStub(
      grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 500; ++i) {  // until the fake job is attached (at most 10 s)
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    if (stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok() &&
        info.workers_attached() == info.workers_expected() && info.workers_attached() > 0) {
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  check(*stub);
  (*server)->Shutdown();
}

TEST(WorkerNumbersTest, MinusInfinityIsReportedAsTheFloor) {
  WithWorker(-std::numeric_limits<float>::infinity(), [](v1::Generation::Stub& stub) {
    const Outcome run = Generate(stub, 2);
    ASSERT_TRUE(run.status.ok()) << run.status.error_message();
    int seen = 0;
    for (const v1::GenerateResponse& m : run.messages) {
      for (const v1::Logprobs& lp : m.logprobs()) {
        EXPECT_EQ(lp.chosen().logprob(), kLogprobFloor);
        for (const v1::TokenLogprob& t : lp.top()) EXPECT_EQ(t.logprob(), kLogprobFloor);
        ++seen;
      }
    }
    EXPECT_EQ(seen, 3);
  });
}

TEST(WorkerNumbersTest, NanEndsTheRequestWithInternal) {
  WithWorker(std::numeric_limits<float>::quiet_NaN(), [](v1::Generation::Stub& stub) {
    const Outcome run = Generate(stub, 1);
    EXPECT_EQ(run.status.error_code(), grpc::StatusCode::INTERNAL);
    EXPECT_THAT(run.status.error_message(), ::testing::HasSubstr("logprob nan"));
    for (const v1::GenerateResponse& m : run.messages) {
      EXPECT_TRUE(m.token_ids().empty());  // the token with the NaN is not sent
      if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
        EXPECT_EQ(m.finish_reason(), v1::FINISH_REASON_ERROR);
        EXPECT_THAT(m.error(), ::testing::HasSubstr("logprob nan"));
      }
    }
    // Without logprobs the same job serves the next request.
    const Outcome next = Generate(stub, 0);
    EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  });
}

}  // namespace
}  // namespace shardlm::coordinator
