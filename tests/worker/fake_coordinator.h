// A fake coordinator for tests of the worker side of WorkerControl.Attach: a gRPC server on a
// free loopback port whose Attach reads the WorkerHello and then runs the test's handler. It
// pings its clients and drops those that leave a ping unanswered, as the real coordinator does
// (coordinator/server.cpp: every 2 s, 2 s timeout).
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "shardlm/v1/worker.grpc.pb.h"

namespace shardlm::testing {

class FakeCoordinator final : public worker::v1::WorkerControl::Service {
 public:
  using ServerStream =
      grpc::ServerReaderWriter<worker::v1::CoordinatorMessage, worker::v1::WorkerMessage>;
  using Handler = std::function<grpc::Status(grpc::ServerContext*, ServerStream*)>;

  explicit FakeCoordinator(Handler handler,
                           std::chrono::milliseconds keepalive = std::chrono::milliseconds(2000))
      : handler_(std::move(handler)) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(keepalive.count()));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(keepalive.count()));
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~FakeCoordinator() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status Attach(grpc::ServerContext* context, ServerStream* stream) override {
    worker::v1::WorkerMessage hello;
    if (!stream->Read(&hello) || !hello.has_hello()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected WorkerHello first");
    }
    return handler_(context, stream);
  }

 private:
  Handler handler_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace shardlm::testing
