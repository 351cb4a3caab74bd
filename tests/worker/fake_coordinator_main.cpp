// fake_coordinator_server: a FakeCoordinator (tests/worker/fake_coordinator.h) in a process of its
// own, so that nothing in the client's process polls the connection on the client's behalf (in
// one process, the server's polling threads would answer the pings for the client too). It pings
// every 1 s and drops a client that leaves a ping unanswered for 1 s. Its Attach sends step 1,
// waits for its result, sends step 2 and reads until the client ends the stream. Prints
// "listening on 127.0.0.1:PORT" and serves until killed.
#include <cstdio>
#include <thread>

#include "tests/worker/fake_coordinator.h"

int main() {
  using shardlm::testing::FakeCoordinator;
  using shardlm::worker::v1::CoordinatorMessage;
  using shardlm::worker::v1::WorkerMessage;
  FakeCoordinator server(
      [](grpc::ServerContext*, FakeCoordinator::ServerStream* stream) {
        CoordinatorMessage step;
        step.mutable_step()->set_step_id(1);
        stream->Write(step);
        WorkerMessage in;
        if (!stream->Read(&in) || in.result().step_id() != 1) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected the result of step 1");
        }
        step.mutable_step()->set_step_id(2);
        stream->Write(step);
        while (stream->Read(&in)) {
        }
        return grpc::Status::OK;
      },
      std::chrono::milliseconds(1000));
  std::printf("listening on %s\n", server.address().c_str());
  std::fflush(stdout);
  while (true) std::this_thread::sleep_for(std::chrono::hours(1));
}
