// shardlm.v1.Generation: the public API (Generate, Tokenize, GetModelInfo, Abort) on the
// synchronous gRPC server. A Generate handler thread validates, submits to the engine and then
// waits on its request's channel, writing what arrives and polling every 50 ms for the client
// having gone away or its deadline having passed.
#pragma once

#include <grpcpp/grpcpp.h>

#include "coordinator/engine.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"
#include "shardlm/v1/generation.grpc.pb.h"

namespace shardlm::coordinator {

class GenerationService final : public v1::Generation::Service {
 public:
  // All three must outlive the service.
  GenerationService(const ModelContext& model, const CoordinatorOptions& options, Engine& engine)
      : model_(model), options_(options), engine_(engine) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
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
