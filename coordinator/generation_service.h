// shardlm.v1.Generation: the public API. Generate is on gRPC's callback API: a stream is a
// reactor, not a thread. After validation and Submit, its request's channel wakes it
// (ResponseChannel::SetListener) when tokens arrive; it keeps one write in flight and merges what
// queued meanwhile into the next. A client that goes away or whose deadline passes (OnCancel, or
// a failed write) cancels its request in the engine. Generate takes and sends raw bytes and
// parses them itself, with protobuf's serializer, so that an unparsable request still gets
// INTERNAL as from the synchronous API (the callback API's own parse failure says UNIMPLEMENTED).
// Tokenize, GetModelInfo and Abort answer at once and stay on the synchronous API.
#pragma once

#include <grpcpp/grpcpp.h>

#include "coordinator/engine.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"
#include "shardlm/v1/generation.grpc.pb.h"

namespace shardlm::coordinator {

class GenerationService final
    : public v1::Generation::WithRawCallbackMethod_Generate<v1::Generation::Service> {
 public:
  // All three must outlive the service.
  GenerationService(const ModelContext& model, const CoordinatorOptions& options, Engine& engine)
      : model_(model), options_(options), engine_(engine) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;

 private:
  const ModelContext& model_;
  const CoordinatorOptions& options_;
  Engine& engine_;
};

}  // namespace shardlm::coordinator
