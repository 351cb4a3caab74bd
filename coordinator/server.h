// The coordinator's gRPC servers. The public one (--listen) serves shardlm.v1.Generation,
// grpc.health.v1.Health and server reflection; health ("" and "shardlm.v1.Generation") is
// SERVING only while a loaded worker job is attached. The worker one (--worker-listen) serves
// only shardlm.worker.v1.WorkerControl, where a job attaches with the shared secret; it never
// shares a port with the public API, so that the two can face different networks.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "coordinator/engine.h"
#include "coordinator/generation_service.h"
#include "coordinator/metrics.h"
#include "coordinator/http_server.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"
#include "coordinator/worker_service.h"

namespace shardlm::coordinator {

class CoordinatorServer {
 public:
  // Binds options.listen and options.worker_listen (port 0: a free port) and starts serving.
  // `options` must be valid (ValidateOptions).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorOptions& options, std::unique_ptr<ModelContext> model);
  ~CoordinatorServer();

  // HOST:PORT as bound: the host of --listen and the actual port.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // HOST:PORT where worker jobs attach: the host of --worker-listen and the actual port.
  const std::string& worker_address() const { return worker_address_; }
  // HOST:PORT of the HTTP API (--http-listen, actual port); "" when it is off.
  std::string http_address() const { return http_ ? http_->address() : ""; }

  // Graceful drain (SIGTERM): health turns NOT_SERVING at once, new Generate calls get
  // UNAVAILABLE "draining" (Engine::Submit), and live requests, running or queued, finish for up
  // to `timeout` or until CutDrain. True when every one finished. Shutdown ends what is left.
  bool Drain(std::chrono::milliseconds timeout);
  void CutDrain();

  // Ends every live request (UNAVAILABLE), sends Shutdown to the attached workers and stops the
  // servers (handlers get a few seconds to finish). Idempotent; Wait() returns afterwards.
  void Shutdown();
  void Wait();

  Engine& engine() { return *engine_; }
  // The Prometheus text exposition of every metric (GET /metrics), gauges refreshed from the
  // engine's state now. Thread-safe.
  std::string MetricsText();
  const ModelContext& model() const { return *model_; }

 private:
  CoordinatorServer(const CoordinatorOptions& options, std::unique_ptr<ModelContext> model);
  void SetHealth(bool serving);

  const CoordinatorOptions options_;
  const std::unique_ptr<ModelContext> model_;
  std::unique_ptr<Metrics> metrics_;  // before engine_, which reports to it
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<WorkerService> workers_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> worker_server_;
  std::unique_ptr<HttpServer> http_;
  std::atomic<bool> serving_{false};  // as health says; HTTP /health reads it
  std::string address_;
  std::string worker_address_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace shardlm::coordinator
