// The guarded worker attach, with the coordinator in-process and fake attach clients: the worker
// port apart from the public one, the shared secret, the hello deadline, range checks of what a
// job reports (Loaded.kv_blocks, every StepResult against its plan) and one job at a time.
#include <chrono>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/server.h"
#include "coordinator/worker_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shardlm/v1/worker.pb.h"
#include "tests/coordinator/proc_memory.h"
#include "tests/coordinator/service_fixture.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::FakeWorker;
using testing::FakeWorkerOptions;
using testing::IdsRequest;
using testing::kNotServing;
using testing::kServing;
using testing::Outcome;
using testing::Prompt;
using testing::RssKib;
using ServiceTest = testing::ServiceTest;

TEST_F(ServiceTest, OneJobAtATimeWithTheRightWorldSize) {
  options_.tp = 2;
  StartServer();
  FakeWorkerOptions wrong;
  wrong.world_size = 3;
  FakeWorker& w = Attach(wrong, /*wait=*/false);
  grpc::Status st = w.Join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "world size 3 != tp x pp = 2 x 1");
  EXPECT_EQ(Health(), kNotServing);

  FakeWorkerOptions right;
  right.world_size = 2;
  Attach(right);
  FakeWorker& second = Attach(right, /*wait=*/false);
  st = second.Join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("already attached"));
  EXPECT_EQ(Health(), kServing);
  EXPECT_TRUE(Generate(IdsRequest({4, 5}, 3)).status.ok());
}

TEST_F(ServiceTest, WorkerControlIsOnlyOnTheWorkerPort) {
  StartServer();
  EXPECT_NE(server_->address(), server_->worker_address());
  FakeWorker on_public(server_->address(), FakeWorkerOptions());
  EXPECT_EQ(on_public.Join().error_code(), grpc::StatusCode::UNIMPLEMENTED);
  Attach();  // on the worker port
  EXPECT_TRUE(Generate(IdsRequest({4, 5}, 3)).status.ok());
  // And the worker port serves nothing else.
  auto worker_channel =
      grpc::CreateChannel(server_->worker_address(), grpc::InsecureChannelCredentials());
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  EXPECT_EQ(v1::Generation::NewStub(worker_channel)
                ->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info)
                .error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(ServiceTest, AWrongSecretIsPermissionDeniedAndTheSlotStaysFree) {
  StartServer();
  for (const std::string& secret : {std::string("fake-worker-secret-012345678X"),
                                    std::string("fake-worker-secret-0"), std::string()}) {
    FakeWorkerOptions intruder;
    intruder.secret = secret;
    FakeWorker& w = Attach(intruder, /*wait=*/false);
    const grpc::Status st = w.Join();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << secret;
    // Nothing that helps guessing (no length, no part of the secret), nothing of the model.
    EXPECT_EQ(st.error_message(), "worker attach refused: wrong secret (see --worker-secret-file)");
    EXPECT_FALSE(w.loaded());
    EXPECT_TRUE(w.load().model().empty());
  }
  EXPECT_EQ(Health(), kNotServing);
  // The slot is free: the real job attaches.
  Attach();
  EXPECT_TRUE(Generate(IdsRequest({4, 5}, 3)).status.ok());
}

TEST_F(ServiceTest, ASilentStreamIsCutOffAtTheHelloDeadlineAndHoldsNoSlot) {
  options_.worker_hello_timeout = 1500ms;
  StartServer();
  FakeWorkerOptions silent;
  silent.send_hello = false;
  const auto opened = std::chrono::steady_clock::now();
  FakeWorker& quiet = Attach(silent, /*wait=*/false);
  // While it sits there, the real job attaches and serves: the slot is claimed only by a hello
  // with the right secret.
  Attach();
  EXPECT_TRUE(Generate(IdsRequest({4, 5}, 3)).status.ok());
  const grpc::Status st = quiet.Join();
  const auto waited = std::chrono::steady_clock::now() - opened;
  EXPECT_FALSE(st.ok());
  EXPECT_GE(waited, 1400ms);
  EXPECT_LT(waited, 4s);
  EXPECT_EQ(Health(), kServing);
}

TEST_F(ServiceTest, ASilentStreamIsCutOffAfterAShortDeadline) {
  options_.worker_hello_timeout = 300ms;
  StartServer();
  FakeWorkerOptions silent;
  silent.send_hello = false;
  const auto opened = std::chrono::steady_clock::now();
  FakeWorker& quiet = Attach(silent, /*wait=*/false);
  EXPECT_FALSE(quiet.Join().ok());
  EXPECT_LT(std::chrono::steady_clock::now() - opened, 2s);
  Attach();
  EXPECT_TRUE(Generate(IdsRequest({1}, 1)).status.ok());
}

TEST_F(ServiceTest, AbsurdKvBlocksAreRefusedAndAllocateNothing) {
  StartServer();
  const int64_t before = RssKib();
  FakeWorkerOptions liar;
  liar.reported_kv_blocks = std::numeric_limits<int32_t>::max();
  FakeWorker& w = Attach(liar, /*wait=*/false);
  const grpc::Status st = w.Join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(),
              HasSubstr("Loaded.kv_blocks = 2147483647, expected at most 16777216"));
  EXPECT_EQ(Health(), kNotServing);
  const v1::ModelInfo info = Info();
  EXPECT_EQ(info.kv_blocks_total(), 0);  // the block manager was never sized from it
  EXPECT_EQ(info.workers_attached(), 0);
  if (before > 0) {
    EXPECT_LT(RssKib() - before, 256 * 1024) << "KiB grown";
  }

  // No block at all is RESOURCE_EXHAUSTED; the bound itself is accepted.
  FakeWorkerOptions none;
  none.reported_kv_blocks = 0;
  EXPECT_EQ(Attach(none, /*wait=*/false).Join().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  FakeWorkerOptions most;
  most.reported_kv_blocks = kMaxKvBlocks;  // the toy store keeps 64: requests use a few
  Attach(most);
  EXPECT_EQ(Info().kv_blocks_total(), kMaxKvBlocks);
  Outcome o = Generate(IdsRequest(Prompt(3), 4));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.ids, FakeWorker::Reference(Prompt(3), 4));
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, AMalformedStepResultTakesTheLinkDownWithTheReason) {
  // Each broken job's request fails at once instead of being held for the next (broken) job.
  options_.requeue_timeout_s = 0;
  StartServer();
  struct Case {
    std::string name;
    std::function<void(const worker::v1::StepPlan&, worker::v1::StepResult&)> spoil;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {"token for an unasked seq",
       [](const worker::v1::StepPlan&, worker::v1::StepResult& r) {
         r.add_results()->set_seq_id(987654321);
       },
       "(seq 987654321): no such sequence in the step's plan"},
      {"oversize logprobs",
       [](const worker::v1::StepPlan&, worker::v1::StepResult& r) {
         for (worker::v1::SeqResult& s : *r.mutable_results()) {
           for (int i = 0; i < 5; ++i) s.mutable_logprobs()->add_top()->set_logprob(-1);
         }
       },
       ".logprobs.top has 7 entries, expected at most 2"},
      {"token outside the vocabulary",
       [](const worker::v1::StepPlan&, worker::v1::StepResult& r) {
         if (r.results_size() > 0) r.mutable_results(0)->set_token(256);
       },
       ".token is 256, expected an id in [0, 256)"},
      {"non-finite compute_ms",
       [](const worker::v1::StepPlan&, worker::v1::StepResult& r) {
         r.set_compute_ms(std::numeric_limits<double>::quiet_NaN());
       },
       "compute_ms is nan, expected a finite value >= 0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FakeWorkerOptions broken;
    broken.spoil = c.spoil;
    FakeWorker& w = Attach(broken);
    v1::GenerateRequest req = IdsRequest(Prompt(1), 4);
    req.set_logprobs(2);
    // What then happens to the request is the engine's business (it may wait for a relaunch):
    // this looks at the link only.
    Outcome o;
    std::thread client([&] { o = Generate(req, {}, 3s); });
    const grpc::Status st = w.Join();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(st.error_message(), HasSubstr("protocol violation: step "));
    EXPECT_THAT(st.error_message(), HasSubstr(c.reason));
    EXPECT_TRUE(WaitHealth(kNotServing, 5s));
    EXPECT_EQ(Info().workers_attached(), 0);
    client.join();
    EXPECT_FALSE(o.status.ok());
    EXPECT_TRUE(o.ids.empty());  // the spoiled first result was never applied
  }
  // A sound job serves afterwards.
  Attach();
  Outcome ok = Generate(IdsRequest(Prompt(2), 4));
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids, FakeWorker::Reference(Prompt(2), 4));
}

}  // namespace
}  // namespace shardlm::coordinator
