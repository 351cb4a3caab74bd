// The coordinator's gRPC server in-process, with fake worker jobs (fake_worker.h) attached over
// real gRPC streams: health, refusals, streaming and batching, preemption, cancellation, abort,
// worker death and re-attach (requests held and resumed), hung jobs (step deadlines), load
// failures and shutdown. The guarded attach is in
// attach_test.cpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/coordinator/fake_worker.h"
#include "tests/coordinator/test_models.h"
#include "tokenizer/unicode.h"
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
using ServiceTest = testing::ServiceTest;

TEST_F(ServiceTest, WithoutWorkersNotServingUnavailableButInfoAndValidationWork) {
  StartServer();
  EXPECT_EQ(Health(), kNotServing);
  EXPECT_EQ(Health("shardlm.v1.Generation"), kNotServing);
  Outcome o = Generate(IdsRequest({1, 2, 3}, 4));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(o.status.error_message(), HasSubstr("no workers attached"));
  // Validation comes first: a bad field is named even without workers.
  v1::GenerateRequest bad = IdsRequest({1, 2, 3}, 4);
  bad.mutable_sampling()->set_top_p(2);
  o = Generate(bad);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(o.status.error_message(), HasSubstr("sampling.top_p"));

  const v1::ModelInfo info = Info();
  EXPECT_EQ(info.model(), "tiny");
  EXPECT_EQ(info.architecture(), "llama");
  EXPECT_EQ(info.tp(), 1);
  EXPECT_EQ(info.pp(), 1);
  EXPECT_EQ(info.context_length(), 512);
  EXPECT_EQ(info.vocab_size(), 256);
  EXPECT_EQ(info.kv_block_size(), 4);
  EXPECT_EQ(info.kv_blocks_total(), 0);
  EXPECT_EQ(info.workers_attached(), 0);
  EXPECT_EQ(info.workers_expected(), 1);

  grpc::ClientContext tctx;
  v1::TokenizeRequest treq;
  treq.set_text("hello");
  v1::TokenizeResponse tresp;
  grpc::Status t = stub_->Tokenize(&tctx, treq, &tresp);
  EXPECT_EQ(t.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(t.error_message(), HasSubstr("no tokenizer"));
  grpc::ClientContext tctx2;
  EXPECT_EQ(stub_->Tokenize(&tctx2, v1::TokenizeRequest(), &tresp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  grpc::ClientContext actx;
  v1::AbortRequest areq;
  areq.set_request_id("nobody");
  v1::AbortResponse aresp;
  ASSERT_TRUE(stub_->Abort(&actx, areq, &aresp).ok());
  EXPECT_FALSE(aresp.found());
}

TEST_F(ServiceTest, AttachLoadsAndStreamsTheReferenceTokens) {
  options_.tp = 2;
  options_.pp = 2;
  options_.pp_layers = "1";
  options_.threads = 3;
  StartServer();
  FakeWorkerOptions fo;
  fo.world_size = 4;
  fo.kv_blocks = 64;
  FakeWorker& worker = Attach(fo);
  const worker::v1::LoadCommand load = worker.load();
  EXPECT_EQ(load.model(), "tiny");
  EXPECT_EQ(load.tp(), 2);
  EXPECT_EQ(load.pp(), 2);
  EXPECT_EQ(load.pp_layers(), "1");
  EXPECT_EQ(load.kv_block_size(), 4);
  EXPECT_EQ(load.kv_cache_bytes(), 1u << 20);
  EXPECT_EQ(load.max_batch_tokens(), 32);
  EXPECT_EQ(load.threads(), 3);
  v1::ModelInfo info = Info();
  EXPECT_EQ(info.workers_attached(), 4);
  EXPECT_EQ(info.workers_expected(), 4);
  EXPECT_EQ(info.kv_blocks_total(), 64);
  EXPECT_EQ(info.kv_blocks_free(), 64);

  v1::GenerateRequest req = IdsRequest(Prompt(1, 40), 12);  // a 40-token prompt: two chunks
  req.set_request_id("mine");
  const auto sent = std::chrono::steady_clock::now();
  Outcome o = Generate(req);
  const double client_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count();
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.ids, FakeWorker::Reference(Prompt(1, 40), 12));
  EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(o.text, "");
  for (const v1::GenerateResponse& m : o.messages) EXPECT_EQ(m.request_id(), "mine");
  EXPECT_EQ(o.usage.prompt_tokens(), 40);
  EXPECT_EQ(o.usage.completion_tokens(), 12);
  // The server's times are in order (the first token needs a step after the request was first
  // scheduled) and fit inside the time the client waited.
  EXPECT_GT(o.usage.ttft_ms(), o.usage.queue_ms());
  EXPECT_GE(o.usage.total_ms(), o.usage.ttft_ms());
  EXPECT_LE(o.usage.total_ms(), client_ms);
  // The blocks are back as soon as the request finished.
  info = Info();
  EXPECT_EQ(info.kv_blocks_free(), 64);
  EXPECT_EQ(info.requests_running(), 0);
  // An unnamed request gets an unguessable id: "req-" and 128 random bits in hex, different
  // each time (Abort takes an id, so a counter would let any client abort another's request).
  o = Generate(IdsRequest({1}, 1));
  ASSERT_TRUE(o.status.ok());
  const std::string first_id = o.messages.at(0).request_id();
  EXPECT_THAT(first_id, ::testing::MatchesRegex("req-[0-9a-f]{32}"));
  o = Generate(IdsRequest({1}, 1));
  ASSERT_TRUE(o.status.ok());
  EXPECT_THAT(o.messages.at(0).request_id(), ::testing::MatchesRegex("req-[0-9a-f]{32}"));
  EXPECT_NE(o.messages.at(0).request_id(), first_id);
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, ConcurrentRequestsAreBatchedAndEachGetsItsOwnTokens) {
  options_.max_batch_tokens = 16;
  StartServer();
  FakeWorkerOptions fo;
  fo.kv_blocks = 256;
  fo.step_delay = 2ms;
  FakeWorker& worker = Attach(fo);
  constexpr int kRequests = 12;
  std::vector<Outcome> outcomes(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] { outcomes[i] = Generate(IdsRequest(Prompt(i, 3 + i), 15)); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
    EXPECT_EQ(outcomes[i].ids, FakeWorker::Reference(Prompt(i, 3 + i), 15)) << "request " << i;
    EXPECT_EQ(outcomes[i].finish, v1::FINISH_REASON_LENGTH);
  }
  EXPECT_GT(worker.max_batch(), 1);
  EXPECT_EQ(Info().kv_blocks_free(), 256);
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, PreemptionUnderBlockPressureKeepsOutputsExact) {
  options_.max_batch_tokens = 16;
  StartServer();
  FakeWorkerOptions fo;
  fo.kv_blocks = 14;  // 56 positions; each request grows to 30
  FakeWorker& worker = Attach(fo);
  constexpr int kRequests = 6;
  std::vector<Outcome> outcomes(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] { outcomes[i] = Generate(IdsRequest(Prompt(i, 6), 24)); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
    EXPECT_EQ(outcomes[i].ids, FakeWorker::Reference(Prompt(i, 6), 24)) << "request " << i;
  }
  EXPECT_GT(worker.seqs_seen(), kRequests) << "expected some preemption";
  EXPECT_EQ(Info().kv_blocks_free(), 14);
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, StopTokenIdsAndLogprobs) {
  StartServer();
  Attach();
  const std::vector<int32_t> prompt = Prompt(3);
  const std::vector<int32_t> ref = FakeWorker::Reference(prompt, 10);
  v1::GenerateRequest req = IdsRequest(prompt, 10);
  req.add_stop_token_ids(ref[2]);
  req.set_logprobs(3);
  Outcome o = Generate(req);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.finish, v1::FINISH_REASON_STOP);
  const size_t until = std::find(ref.begin(), ref.end(), ref[2]) - ref.begin() + 1;
  EXPECT_EQ(o.ids, std::vector<int32_t>(ref.begin(), ref.begin() + until));
  for (const v1::GenerateResponse& m : o.messages) {
    ASSERT_EQ(m.logprobs_size(), m.token_ids_size());
    for (int i = 0; i < m.logprobs_size(); ++i) {
      EXPECT_EQ(m.logprobs(i).chosen().id(), m.token_ids(i));
      EXPECT_EQ(m.logprobs(i).top_size(), 3);
    }
  }
}

TEST_F(ServiceTest, ClientCancelAndDeadlineFreeTheBlocks) {
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  Attach(fo);
  Outcome o = Generate(IdsRequest(Prompt(1), 400),
                       [](const Outcome& so_far) { return so_far.ids.size() < 3; });
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_GE(o.ids.size(), 3u);
  EXPECT_TRUE(WaitInfo([](const v1::ModelInfo& i) {
    return i.kv_blocks_free() == i.kv_blocks_total() && i.requests_running() == 0;
  })) << Info().DebugString();

  o = Generate(IdsRequest(Prompt(2), 400), {}, 150ms);
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(WaitInfo([](const v1::ModelInfo& i) {
    return i.kv_blocks_free() == i.kv_blocks_total() && i.requests_running() == 0;
  })) << Info().DebugString();
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, AbortByIdAndDuplicateIds) {
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  Attach(fo);
  v1::GenerateRequest req = IdsRequest(Prompt(1), 400);
  req.set_request_id("abort-me");
  std::atomic<bool> streaming{false};
  Outcome aborted;
  std::thread t([&] {
    aborted = Generate(req, [&](const Outcome&) {
      streaming = true;
      return true;
    });
  });
  while (!streaming) std::this_thread::sleep_for(1ms);
  // The id is live: a second request with it is refused.
  Outcome dup = Generate(req);
  EXPECT_EQ(dup.status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(dup.status.error_message(), HasSubstr("abort-me"));
  grpc::ClientContext actx;
  v1::AbortRequest areq;
  areq.set_request_id("abort-me");
  v1::AbortResponse aresp;
  ASSERT_TRUE(stub_->Abort(&actx, areq, &aresp).ok());
  EXPECT_TRUE(aresp.found());
  t.join();
  EXPECT_TRUE(aborted.status.ok()) << aborted.status.error_message();
  EXPECT_EQ(aborted.finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_LT(aborted.ids.size(), 400u);
  EXPECT_EQ(aborted.usage.completion_tokens(), static_cast<int>(aborted.ids.size()));
  EXPECT_EQ(Info().kv_blocks_free(), Info().kv_blocks_total());
  grpc::ClientContext actx2;
  ASSERT_TRUE(stub_->Abort(&actx2, areq, &aresp).ok());
  EXPECT_FALSE(aresp.found());
  // The id can be used again once the request is over.
  EXPECT_TRUE(Generate(IdsRequest({1}, 1)).status.ok());
}

TEST_F(ServiceTest, FullQueueAndOversizedPromptAreResourceExhausted) {
  options_.max_running = 1;
  options_.max_queue = 1;
  StartServer();
  FakeWorkerOptions fo;
  fo.kv_blocks = 8;  // 32 positions
  fo.step_delay = 5ms;
  Attach(fo);
  Outcome big = Generate(IdsRequest(Prompt(1, 40), 1));
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(big.status.error_message(), HasSubstr("40 tokens needs 10 KV blocks"));

  std::atomic<bool> first_streaming{false};
  std::vector<Outcome> outs(2);
  std::thread a([&] {
    v1::GenerateRequest r = IdsRequest(Prompt(1), 200);
    r.set_request_id("a");
    outs[0] = Generate(r, [&](const Outcome&) {
      first_streaming = true;
      return true;
    });
  });
  while (!first_streaming) std::this_thread::sleep_for(1ms);
  std::thread b([&] {
    v1::GenerateRequest r = IdsRequest(Prompt(2), 200);
    r.set_request_id("b");
    outs[1] = Generate(r);
  });
  ASSERT_TRUE(WaitInfo([](const v1::ModelInfo& i) {
    return i.requests_running() == 1 && i.requests_waiting() == 1;
  }));
  Outcome c = Generate(IdsRequest(Prompt(3), 5));
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(c.status.error_message(), HasSubstr("queue full"));
  for (const char* id : {"b", "a"}) {
    grpc::ClientContext actx;
    v1::AbortRequest areq;
    areq.set_request_id(id);
    v1::AbortResponse aresp;
    EXPECT_TRUE(stub_->Abort(&actx, areq, &aresp).ok());
  }
  a.join();
  b.join();
  EXPECT_EQ(outs[0].finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(outs[1].finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_TRUE(outs[1].ids.empty());
}

TEST_F(ServiceTest, AStepErrorFailsItsRequestsWithInternal) {
  StartServer();
  FakeWorkerOptions fo;
  fo.fail_step = 2;
  Attach(fo);
  Outcome o = Generate(IdsRequest(Prompt(1), 5));
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_THAT(o.status.error_message(), HasSubstr("fake failure"));
  EXPECT_EQ(o.finish, v1::FINISH_REASON_ERROR);
  ASSERT_FALSE(o.messages.empty());
  EXPECT_THAT(o.messages.back().error(), HasSubstr("fake failure"));
  // The job keeps serving.
  o = Generate(IdsRequest(Prompt(1), 5));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.ids, FakeWorker::Reference(Prompt(1), 5));
  EXPECT_EQ(Info().kv_blocks_free(), Info().kv_blocks_total());
}

// No accepted request is lost with its worker job: running and queued requests are held, new
// ones are refused, and the relaunched job finishes them all with exactly the tokens of an
// undisturbed run (the client sees one stream: no token repeated or missing), and the output
// processing goes on where it was (a stop token after the loss still ends its request).
TEST_F(ServiceTest, WorkerDeathHoldsEveryRequestAndTheNextJobFinishesThem) {
  options_.max_running = 2;
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  fo.kv_blocks = 400;  // room for all four at full length: no preemption
  FakeWorker& first = Attach(fo);
  constexpr int kRequests = 4;  // 2 running, 2 queued
  constexpr int kTokens = 300;
  // Request 3 stops at the first occurrence of a token that its reference run first emits late.
  const std::vector<int32_t> ref3 = FakeWorker::Reference(Prompt(3), kTokens);
  size_t stop_at = 0;
  for (size_t k = 200; k < ref3.size() && stop_at == 0; ++k) {
    if (std::find(ref3.begin(), ref3.begin() + k, ref3[k]) == ref3.begin() + k) stop_at = k;
  }
  ASSERT_GT(stop_at, 0u) << "no token of the reference appears first after 200";
  std::vector<Outcome> outs(kRequests);
  std::atomic<int> tokens{0}, finished{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest req = IdsRequest(Prompt(i), kTokens);
      if (i == 3) req.add_stop_token_ids(ref3[stop_at]);
      outs[i] = Generate(req, [&](const Outcome&) {
        ++tokens;
        return true;
      });
      ++finished;
    });
  }
  ASSERT_TRUE(WaitInfo([](const v1::ModelInfo& i) { return i.requests_waiting() == 2; }));
  while (tokens < 5) std::this_thread::sleep_for(1ms);
  first.Kill();
  EXPECT_TRUE(WaitHealth(kNotServing, 5s));
  // Held: nothing ended, all four wait for the next job, which is not there yet.
  EXPECT_TRUE(WaitInfo([](const v1::ModelInfo& i) {
    return i.requests_waiting() == 4 && i.requests_running() == 0 && i.kv_blocks_total() == 0;
  })) << Info().DebugString();
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(finished, 0);
  Outcome refused = Generate(IdsRequest({1}, 1));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("no workers attached"));
  const int before = tokens;

  FakeWorker& second = Attach(fo);  // the relaunched job
  for (auto& t : threads) t.join();
  EXPECT_GT(tokens, before);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(outs[i].status.ok()) << i << ": " << outs[i].status.error_message();
    if (i == 3) {
      EXPECT_EQ(outs[i].finish, v1::FINISH_REASON_STOP);
      EXPECT_EQ(outs[i].ids, std::vector<int32_t>(ref3.begin(), ref3.begin() + stop_at + 1));
    } else {
      EXPECT_EQ(outs[i].finish, v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(outs[i].ids, FakeWorker::Reference(Prompt(i), kTokens)) << "request " << i;
    }
    EXPECT_EQ(outs[i].usage.completion_tokens(), static_cast<int>(outs[i].ids.size()));
    EXPECT_EQ(outs[i].usage.prompt_tokens(), 5);
  }
  // The second job recomputed the two that were running (and ran the two that were queued).
  EXPECT_GE(second.seqs_seen(), kRequests);
  EXPECT_EQ(Info().kv_blocks_free(), Info().kv_blocks_total());
  Outcome after = Generate(IdsRequest(Prompt(9), 6));
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(after.ids, FakeWorker::Reference(Prompt(9), 6));
  ExpectNoWorkerErrors();
}

// With no job back within --requeue-timeout, the held requests end UNAVAILABLE saying why; while
// held they can still be aborted.
TEST_F(ServiceTest, HeldRequestsEndUnavailableAfterTheRequeueTimeout) {
  options_.requeue_timeout_s = 0.5;
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  FakeWorker& worker = Attach(fo);
  std::vector<Outcome> outs(2);
  std::atomic<int> tokens{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      v1::GenerateRequest req = IdsRequest(Prompt(i), 300);
      req.set_request_id(i == 0 ? "held-a" : "held-b");
      outs[i] = Generate(req, [&](const Outcome&) {
        ++tokens;
        return true;
      });
    });
  }
  while (tokens < 4) std::this_thread::sleep_for(1ms);
  worker.Kill();
  ASSERT_TRUE(WaitHealth(kNotServing, 5s));
  const auto lost = std::chrono::steady_clock::now();
  grpc::ClientContext actx;
  v1::AbortRequest areq;
  areq.set_request_id("held-a");
  v1::AbortResponse aresp;
  ASSERT_TRUE(stub_->Abort(&actx, areq, &aresp).ok());
  EXPECT_TRUE(aresp.found());
  for (auto& t : threads) t.join();
  const auto ended = std::chrono::steady_clock::now();
  EXPECT_TRUE(outs[0].status.ok()) << outs[0].status.error_message();
  EXPECT_EQ(outs[0].finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(outs[1].status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(outs[1].status.error_message(),
              HasSubstr("none re-attached within --requeue-timeout 0.5 s"));
  EXPECT_EQ(outs[1].finish, v1::FINISH_REASON_ERROR);
  EXPECT_LT(ended - lost, 3s);
  const v1::ModelInfo info = Info();
  EXPECT_EQ(info.requests_running() + info.requests_waiting(), 0);
}

// A job that stays connected but never answers a step: the step's deadline (--step-timeout 1)
// passes, the job is declared hung (NOT_SERVING), told to Abort and its stream cut when it does
// not end by itself; its request is held and the next job finishes it exactly.
TEST_F(ServiceTest, AHungJobIsAbortedAndTheNextJobFinishesItsRequest) {
  options_.step_timeout_s = 1;
  StartServer();
  FakeWorkerOptions hung_options;
  hung_options.hang_step = 3;  // a prefill and a decode are answered, then nothing
  FakeWorker& hung = Attach(hung_options);
  std::atomic<int> tokens{0};
  std::atomic<int64_t> second_token_ns{0};
  Outcome o;
  std::thread t([&] {
    o = Generate(IdsRequest(Prompt(1), 8), [&](const Outcome& so_far) {
      tokens = static_cast<int>(so_far.ids.size());
      if (tokens == 2) {
        second_token_ns = std::chrono::steady_clock::now().time_since_epoch().count();
      }
      return true;
    });
  });
  ASSERT_TRUE(WaitHealth(kNotServing, 5s)) << "the hung job was not noticed";
  const auto noticed = std::chrono::steady_clock::now();
  ASSERT_NE(second_token_ns.load(), 0);
  const auto hung_since = std::chrono::steady_clock::time_point(
      std::chrono::steady_clock::duration(second_token_ns.load()));
  EXPECT_LT(noticed - hung_since, 2500ms);
  EXPECT_GT(noticed - hung_since, 900ms);
  EXPECT_EQ(tokens, 2);
  const auto abort_wait = std::chrono::steady_clock::now() + 2s;
  while (!hung.got_abort() && std::chrono::steady_clock::now() < abort_wait) {
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(hung.got_abort());
  EXPECT_THAT(hung.abort_reason(), HasSubstr("step 3 (1 seqs, 1 tokens, 7 attended positions)"));
  EXPECT_THAT(hung.abort_reason(), HasSubstr("deadline of 1 s (fixed by --step-timeout 1 s)"));
  // It ignores the Abort: the coordinator cuts its stream.
  const grpc::Status cut = hung.Join();
  EXPECT_FALSE(cut.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - noticed, 5s);
  EXPECT_EQ(Info().requests_waiting(), 1);

  Attach();  // the relaunched job
  t.join();
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.ids, FakeWorker::Reference(Prompt(1), 8));
  EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH);
  ExpectNoWorkerErrors();
}

TEST_F(ServiceTest, LoadFailureKeepsNotServingUntilAGoodJobAttaches) {
  StartServer();
  FakeWorkerOptions broken;
  broken.load_error = "rank 1: cannot open /models/x";
  FakeWorker& w = Attach(broken, /*wait=*/false);
  grpc::Status st = w.Join();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_THAT(st.error_message(), HasSubstr("rank 1: cannot open /models/x"));
  EXPECT_EQ(Health(), kNotServing);
  EXPECT_EQ(Generate(IdsRequest({1}, 1)).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  Attach();
  EXPECT_TRUE(Generate(IdsRequest({1}, 1)).status.ok());
}

TEST_F(ServiceTest, ShutdownEndsStreamsAndTellsTheWorkers) {
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  FakeWorker& worker = Attach(fo);
  std::atomic<bool> streaming{false};
  Outcome o;
  std::thread t([&] {
    o = Generate(IdsRequest(Prompt(1), 400), [&](const Outcome&) {
      streaming = true;
      return true;
    });
  });
  while (!streaming) std::this_thread::sleep_for(1ms);
  server_->Shutdown();
  t.join();
  EXPECT_EQ(o.status.error_code(), grpc::StatusCode::UNAVAILABLE) << o.status.error_message();
  grpc::Status st = worker.Join();
  EXPECT_TRUE(worker.got_shutdown());
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(ServiceTest, TextChatAndTokenizeWithARealTokenizer) {
  const std::string path =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent: run scripts/get-model.sh";
  }
  auto model = LoadModelContext(path, 0);
  ASSERT_TRUE(model.ok()) << model.status();
  options_.model = path;
  StartServer(std::move(*model));
  const ModelContext& served = server_->model();

  grpc::ClientContext tctx;
  v1::TokenizeRequest treq;
  treq.set_text("Hello world");
  treq.set_add_special(true);
  v1::TokenizeResponse tresp;
  ASSERT_TRUE(stub_->Tokenize(&tctx, treq, &tresp).ok());
  EXPECT_EQ(std::vector<int32_t>(tresp.ids().begin(), tresp.ids().end()),
            served.tokenizer->Encode("Hello world", true, true));
  grpc::ClientContext cctx;
  v1::TokenizeRequest creq;
  v1::ChatMessage* msg = creq.mutable_chat()->add_messages();
  msg->set_role("user");
  msg->set_content("Hi");
  creq.set_chat_template("nope");
  grpc::Status bad = stub_->Tokenize(&cctx, creq, &tresp);
  EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(bad.error_message(), HasSubstr("chat_template"));

  FakeWorkerOptions fo;
  fo.vocab = 300;  // ids the toy model emits (plain byte-level tokens and a few merges)
  Attach(fo);
  v1::GenerateRequest req;
  v1::ChatMessage* cm = req.mutable_chat()->add_messages();
  cm->set_role("user");
  cm->set_content("Say something");
  req.set_max_new_tokens(20);
  req.set_ignore_eos(true);
  Outcome o = Generate(req);
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(o.ids.size(), 20u);
  // The text is the streaming decode of the ids, in whole characters per message.
  Tokenizer::StreamDecoder decoder = served.tokenizer->NewStream();
  std::string expected;
  for (int32_t id : o.ids) expected += decoder.Push(id);
  expected += decoder.Flush();
  EXPECT_EQ(o.text, expected);
  for (const v1::GenerateResponse& r : o.messages) {
    EXPECT_EQ(unicode::FindInvalidUtf8(r.text()), unicode::kValid);
  }
}

// --- The guarded attach.

}  // namespace
}  // namespace shardlm::coordinator
