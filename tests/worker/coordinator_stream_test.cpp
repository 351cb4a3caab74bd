// CoordinatorStream (worker/coordinator_stream.h) against a fake coordinator: the reader thread
// keeps the connection alive while the main thread is busy for longer than the server's
// keepalive timeout (the server in a process of its own: fake_coordinator_server), acts on Abort
// while the main thread is busy, and tells an ended stream while busy (abort after the grace)
// from one while idle (the end of the commands); the last three serve in-process.
#include "worker/coordinator_stream.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>

#include "tests/e2e/child_process.h"
#include "tests/worker/fake_coordinator.h"

namespace shardlm {
namespace {

using namespace std::chrono_literals;
using shardlm::testing::FakeCoordinator;
using ::testing::HasSubstr;
using worker::v1::CoordinatorMessage;
using worker::v1::WorkerMessage;
using ServerStream = FakeCoordinator::ServerStream;

CoordinatorMessage StepMessage(uint64_t id) {
  CoordinatorMessage m;
  m.mutable_step()->set_step_id(id);
  return m;
}

WorkerMessage Hello() {
  WorkerMessage m;
  m.mutable_hello()->set_world_size(2);
  m.mutable_hello()->set_pid(4242);
  return m;
}

// Records the calls of AbortJob (which must not return in the worker, but may here).
struct AbortRecorder {
  std::atomic<int> calls{0};
  std::promise<std::string> reason;
  std::thread::id thread;
  CoordinatorStream::AbortJob Callback() {
    return [this](const std::string& why) {
      if (calls++ == 0) {
        thread = std::this_thread::get_id();
        reason.set_value(why);
      }
    };
  }
};

CoordinatorStream::Options Options(const FakeCoordinator& server) {
  CoordinatorStream::Options o;
  o.address = server.address();
  o.connect_timeout = 5000ms;
  return o;
}

TEST(CoordinatorStreamTest, AnswersKeepalivesWhileTheMainThreadIsBusy) {
  // The coordinator in a process of its own drops a client that leaves a ping unanswered for
  // 1 s; the main thread is busy (in no call on the stream) for 4 s, as in a long step.
  e2e::Child server({std::string(SHARDLM_BINARY_DIR) + "/bin/fake_coordinator_server"},
                    std::string(SHARDLM_BINARY_DIR) + "/tests/worker/fake_coordinator_server.log",
                    true);
  CoordinatorStream::Options options;
  options.address = e2e::ListeningAddress(server);
  ASSERT_FALSE(options.address.empty()) << "fake_coordinator_server did not start";
  options.connect_timeout = 5000ms;
  AbortRecorder abort;
  auto stream = CoordinatorStream::Open(options, Hello(), abort.Callback());
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::optional<CoordinatorMessage> first = (*stream)->Next();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->step().step_id(), 1u);
  std::this_thread::sleep_for(4s);
  WorkerMessage result;
  result.mutable_result()->set_step_id(1);
  EXPECT_TRUE((*stream)->Write(result));
  std::optional<CoordinatorMessage> second = (*stream)->Next();
  ASSERT_TRUE(second.has_value()) << "the coordinator dropped the stream while the main thread "
                                     "was busy: "
                                  << (*stream)->Close().error_message();
  EXPECT_EQ(second->step().step_id(), 2u);
  const grpc::Status closed = (*stream)->Close();
  EXPECT_TRUE(closed.ok()) << closed.error_message();
  EXPECT_EQ(abort.calls, 0);
}

TEST(CoordinatorStreamTest, AbortIsActedOnAtOnceWhileTheMainThreadIsBusy) {
  FakeCoordinator server(
      [&](grpc::ServerContext*, ServerStream* stream) {
        CoordinatorMessage abort;
        abort.mutable_abort()->set_reason("step 7 missed its deadline of 60 s");
        stream->Write(abort);
        WorkerMessage ignored;
        while (stream->Read(&ignored)) {
        }
        return grpc::Status::OK;
      },
      2000ms);
  AbortRecorder abort;
  auto stream = CoordinatorStream::Open(Options(server), Hello(), abort.Callback());
  ASSERT_TRUE(stream.ok()) << stream.status();
  // The main thread never calls Next: it is stuck in a step.
  std::future<std::string> reason = abort.reason.get_future();
  ASSERT_EQ(reason.wait_for(5s), std::future_status::ready) << "Abort was not acted on";
  EXPECT_EQ(reason.get(), "step 7 missed its deadline of 60 s");
  EXPECT_NE(abort.thread, std::this_thread::get_id());
  (*stream)->Close(200ms);
  EXPECT_EQ(abort.calls, 1) << "an Abort is acted on once";
}

TEST(CoordinatorStreamTest, StreamEndWhileBusyAbortsTheJobAfterTheGrace) {
  std::promise<void> end_now;
  FakeCoordinator server(
      [&](grpc::ServerContext*, ServerStream* stream) {
        stream->Write(StepMessage(1));
        end_now.get_future().wait();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the coordinator cancelled the attach");
      },
      2000ms);
  AbortRecorder abort;
  CoordinatorStream::Options options = Options(server);
  options.lost_grace = 300ms;
  auto stream = CoordinatorStream::Open(options, Hello(), abort.Callback());
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->Next().has_value());
  // Busy in the step from here on; the stream ends now.
  const auto end = std::chrono::steady_clock::now();
  end_now.set_value();
  std::future<std::string> reason = abort.reason.get_future();
  ASSERT_EQ(reason.wait_for(5s), std::future_status::ready) << "the job was not aborted";
  EXPECT_GE(std::chrono::steady_clock::now() - end, 300ms) << "aborted before the grace";
  EXPECT_THAT(reason.get(), HasSubstr("the coordinator stream ended while this job was busy in a "
                                      "step, and it is still busy 0.3 s later"));
  const grpc::Status closed = (*stream)->Close();
  EXPECT_EQ(closed.error_code(), grpc::StatusCode::CANCELLED);
}

TEST(CoordinatorStreamTest, StreamEndWhileIdleIsTheEndOfTheCommands) {
  std::promise<void> end_now;
  FakeCoordinator server(
      [&](grpc::ServerContext*, ServerStream* stream) {
        stream->Write(StepMessage(1));
        end_now.get_future().wait();
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "bye");
      },
      2000ms);
  AbortRecorder abort;
  CoordinatorStream::Options options = Options(server);
  options.lost_grace = 300ms;
  auto stream = CoordinatorStream::Open(options, Hello(), abort.Callback());
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE((*stream)->Next().has_value());
  // The stream ends while the main thread waits for the next command: however late it wakes,
  // that is the end of the commands, not a job stuck in a step.
  std::thread ender([&] {
    std::this_thread::sleep_for(200ms);
    end_now.set_value();
  });
  EXPECT_FALSE((*stream)->Next().has_value());
  ender.join();
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(abort.calls, 0);
  const grpc::Status closed = (*stream)->Close();
  EXPECT_EQ(closed.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(closed.error_message(), "bye");
}

TEST(CoordinatorStreamTest, AnUnreachableCoordinatorIsUnavailableNamingTheAddress) {
  // A port that was just free: nothing listens there.
  std::string address;
  {
    FakeCoordinator gone([](grpc::ServerContext*, ServerStream*) { return grpc::Status::OK; },
                         2000ms);
    address = gone.address();
  }
  CoordinatorStream::Options options;
  options.address = address;
  options.connect_timeout = 300ms;
  AbortRecorder abort;
  auto stream = CoordinatorStream::Open(options, Hello(), abort.Callback());
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(stream.status().message()),
              HasSubstr("cannot reach the coordinator at " + address + " within 0.3 s"));
}

}  // namespace
}  // namespace shardlm
