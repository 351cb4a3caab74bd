#include "coordinator/generation_service.h"

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/grpc_status.h"
#include "coordinator/validation.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {
// How often a waiting Generate handler checks whether its client is still there.
constexpr std::chrono::milliseconds kCancelPoll(50);
}  // namespace

grpc::Status GenerationService::Generate(grpc::ServerContext* context,
                                         const v1::GenerateRequest* request,
                                         grpc::ServerWriter<v1::GenerateResponse>* writer) {
  const Engine::Clock::time_point arrival = Engine::Clock::now();
  absl::StatusOr<PreparedRequest> prepared = PrepareGenerateRequest(*request, model_);
  if (!prepared.ok()) {
    spdlog::info("Generate refused: {}", prepared.status().ToString());
    return ToGrpcStatus(prepared.status());
  }
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      engine_.Submit(std::move(*prepared), arrival);
  if (!handle.ok()) {
    spdlog::info("Generate refused: {}", handle.status().ToString());
    return ToGrpcStatus(handle.status());
  }
  RequestHandle& h = **handle;
  std::vector<v1::GenerateResponse> messages;
  std::optional<absl::Status> final;
  while (true) {
    messages.clear();
    h.channel.Wait(Engine::Clock::now() + kCancelPoll, &messages, &final);
    if (!messages.empty() && !writer->Write(MergeResponses(std::move(messages)))) {
      engine_.Cancel(h.key);
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (final) return ToGrpcStatus(*final);
    if (context->IsCancelled()) {
      engine_.Cancel(h.key);
      return grpc::Status(grpc::StatusCode::CANCELLED,
                          "cancelled by the client or its deadline passed");
    }
  }
}

grpc::Status GenerationService::Tokenize(grpc::ServerContext*, const v1::TokenizeRequest* request,
                                         v1::TokenizeResponse* response) {
  absl::StatusOr<std::vector<int32_t>> ids;
  switch (request->input_case()) {
    case v1::TokenizeRequest::kText:
      ids = TokenizeText(model_, request->text(), request->add_special(), "text");
      break;
    case v1::TokenizeRequest::kChat:
      ids = TokenizeChat(model_, request->chat(), request->chat_template());
      break;
    case v1::TokenizeRequest::INPUT_NOT_SET:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "input: not set: expected text or chat");
  }
  if (!ids.ok()) return ToGrpcStatus(ids.status());
  response->mutable_ids()->Add(ids->begin(), ids->end());
  return grpc::Status::OK;
}

grpc::Status GenerationService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                             v1::ModelInfo* info) {
  const EngineStats stats = engine_.Stats();
  info->set_model(model_.path);
  info->set_architecture(std::string(ArchName(model_.config.arch)));
  info->set_tp(options_.tp);
  info->set_pp(options_.pp);
  info->set_context_length(model_.context_length);
  info->set_vocab_size(model_.config.vocab_size);
  info->set_kv_block_size(options_.kv_block_size);
  info->set_kv_blocks_total(stats.kv_blocks_total);
  info->set_kv_blocks_free(stats.kv_blocks_free);
  info->set_workers_attached(stats.workers_attached);
  info->set_workers_expected(options_.tp * options_.pp);
  info->set_requests_running(stats.requests_running);
  info->set_requests_waiting(stats.requests_waiting);
  return grpc::Status::OK;
}

grpc::Status GenerationService::Abort(grpc::ServerContext*, const v1::AbortRequest* request,
                                      v1::AbortResponse* response) {
  if (request->request_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "request_id: empty");
  }
  response->set_found(engine_.Abort(request->request_id()));
  return grpc::Status::OK;
}

}  // namespace shardlm::coordinator
