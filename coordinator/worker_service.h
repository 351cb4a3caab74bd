// shardlm.worker.v1.WorkerControl: where rank 0 of an mpirun worker job attaches. The handler
// thread owns the stream for the whole attachment: hello -> LoadCommand -> Loaded, then it
// writes the engine's step plans (WorkerLink::NextOutgoing) while a reader thread it starts
// hands the results to the link. Either side seeing the stream break marks the link down, which
// the engine notices at once and holds the live requests for the next job (Engine::EndAttach /
// the engine thread). A link aborted for a missed step deadline gets Abort written, then its
// stream is cut.
#pragma once

#include <grpcpp/grpcpp.h>

#include "coordinator/engine.h"
#include "coordinator/options.h"
#include "shardlm/v1/worker.grpc.pb.h"

namespace shardlm::coordinator {

class WorkerService final : public worker::v1::WorkerControl::Service {
 public:
  WorkerService(const CoordinatorOptions& options, Engine& engine)
      : options_(options), engine_(engine) {}

  grpc::Status Attach(grpc::ServerContext* context,
                      grpc::ServerReaderWriter<worker::v1::CoordinatorMessage,
                                               worker::v1::WorkerMessage>* stream) override;

 private:
  const CoordinatorOptions& options_;
  Engine& engine_;
};

}  // namespace shardlm::coordinator
