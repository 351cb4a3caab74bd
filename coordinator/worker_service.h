// shardlm.worker.v1.WorkerControl: where rank 0 of an mpirun worker job attaches (on the
// coordinator's --worker-listen server). The handler thread owns the stream for the whole
// attachment: hello -> LoadCommand -> Loaded, then it writes the engine's step plans
// (WorkerLink::NextOutgoing) while a reader thread it starts hands the results to the link.
// Either side seeing the stream break marks the link down, which the engine notices at once and
// holds the live requests for the next job (Engine::EndAttach / the engine thread). A link
// aborted for a missed step deadline gets Abort written, then its stream is cut.
//
// The attach is guarded: the hello must come within options.worker_hello_timeout and carry the
// --worker-secret-file secret (compared in constant time; PERMISSION_DENIED otherwise) before
// the single worker slot is claimed; Loaded and every StepResult are range-checked
// (worker_checks.h), and a result that fails the checks takes the link down with the reason.
#pragma once

#include <cstdint>

#include <grpcpp/grpcpp.h>

#include "coordinator/engine.h"
#include "coordinator/options.h"
#include "shardlm/v1/worker.grpc.pb.h"

namespace shardlm::coordinator {

class WorkerService final : public worker::v1::WorkerControl::Service {
 public:
  // `vocab_size`: the model's, which bounds the token ids a job may report.
  WorkerService(const CoordinatorOptions& options, Engine& engine, int64_t vocab_size)
      : options_(options), engine_(engine), vocab_size_(vocab_size) {}

  grpc::Status Attach(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<worker::v1::CoordinatorMessage,
                                               worker::v1::WorkerMessage>* stream) override;

 private:
  const CoordinatorOptions& options_;
  Engine& engine_;
  const int64_t vocab_size_;
};

}  // namespace shardlm::coordinator
