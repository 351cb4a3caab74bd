// The coordinator's gRPC server: one port serving shardlm.v1.Generation,
// shardlm.worker.v1.WorkerControl, grpc.health.v1.Health and server reflection. Health ("" and
// "shardlm.v1.Generation") is SERVING only while a loaded worker job is attached.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "coordinator/engine.h"
#include "coordinator/generation_service.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"
#include "coordinator/worker_service.h"

namespace shardlm::coordinator {

class CoordinatorServer {
 public:
  // Binds options.listen (port 0: a free port) and starts serving. `options` must be valid
  // (ValidateOptions).
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(
      const CoordinatorOptions& options, std::unique_ptr<ModelContext> model);
  ~CoordinatorServer();

  // HOST:PORT as bound: the host of --listen and the actual port.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

  // Ends every live request (UNAVAILABLE), sends Shutdown to the attached workers and stops the
  // server (handlers get a few seconds to finish). Idempotent; Wait() returns afterwards.
  void Shutdown();
  void Wait();

  Engine& engine() { return *engine_; }
  const ModelContext& model() const { return *model_; }

 private:
  CoordinatorServer(const CoordinatorOptions& options, std::unique_ptr<ModelContext> model);
  void SetHealth(bool serving);

  const CoordinatorOptions options_;
  const std::unique_ptr<ModelContext> model_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<WorkerService> workers_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace shardlm::coordinator
