#include "coordinator/generation_service.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/grpc_status.h"
#include "coordinator/validation.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {

// A Generate call refused before it reached the engine (validation, a full queue, draining ...).
class RefusedStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// One accepted Generate call, from Submit to its final status. It runs only when something
// happens: the channel's listener (engine thread: tokens or the end arrived), OnWriteDone or
// OnCancel (gRPC's callback threads); Pump does the next thing under mu_.
//
// Lifetime: gRPC deletes nothing; OnDone deletes this, and it comes only after Finish, once no
// write is in flight. The channel may outlive the stream (the engine holds it while the request
// is live) and its listener may be called at any time, so the listener holds a Waker, not this:
// OnDone clears the Waker's pointer under its lock, and a wake-up under way finishes first.
// gRPC runs OnDone, OnCancel and OnWriteDone of a user reactor on its executor, never inline in
// StartWrite or Finish, so holding these locks around those calls cannot deadlock.
class GenerateStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GenerateStream(Engine& engine, std::shared_ptr<RequestHandle> handle)
      : engine_(engine), handle_(std::move(handle)), waker_(std::make_shared<Waker>()) {
    {
      absl::MutexLock lock(&waker_->mu);
      waker_->stream = this;
    }
    handle_->channel.SetListener([waker = waker_] { waker->Wake(); });
    Pump();  // what arrived before the listener was there
  }

  void OnWriteDone(bool ok) override {
    if (!ok) engine_.Cancel(handle_->key);  // the client went away (never under mu_)
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) client_gone_ = true;
    }
    Pump();
  }

  // The client cancelled, went away or its deadline passed.
  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      client_gone_ = true;
    }
    engine_.Cancel(handle_->key);  // closes the channel (CANCELLED) unless it ended already
    Pump();
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&waker_->mu);
      waker_->stream = nullptr;
    }
    handle_->channel.SetListener(nullptr);
    delete this;
  }

 private:
  struct Waker {
    absl::Mutex mu;
    GenerateStream* stream ABSL_GUARDED_BY(mu) = nullptr;

    void Wake() {
      absl::MutexLock lock(&mu);
      if (stream != nullptr) stream->Pump();
    }
  };

  // One write in flight at a time: when it completes, everything queued meanwhile goes out as
  // one merged message; after the last message, the channel's final status.
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (finished_ || writing_) return;
    if (!client_gone_ && !final_) {
      std::vector<v1::GenerateResponse> messages;
      handle_->channel.Take(&messages, &final_);
      if (!messages.empty()) {
        bool own = false;
        out_.Clear();  // the previous write is done with it
        const grpc::Status serialized = grpc::SerializationTraits<v1::GenerateResponse>::Serialize(
            MergeResponses(std::move(messages)), &out_, &own);
        if (!serialized.ok()) {  // not expected (over 2 GiB); the request runs out unread
          finished_ = true;
          Finish(serialized);
          return;
        }
        writing_ = true;
        StartWrite(&out_);
        return;
      }
    }
    if (client_gone_) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                          "cancelled by the client or its deadline passed"));
    } else if (final_) {
      finished_ = true;
      Finish(ToGrpcStatus(*final_));
    }
  }

  Engine& engine_;
  const std::shared_ptr<RequestHandle> handle_;
  const std::shared_ptr<Waker> waker_;
  absl::Mutex mu_;
  grpc::ByteBuffer out_ ABSL_GUARDED_BY(mu_);  // the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // Taken from the channel along with its last messages; sent once they are written.
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* raw) {
  const Engine::Clock::time_point arrival = Engine::Clock::now();
  v1::GenerateRequest request;
  grpc::ByteBuffer bytes(*raw);  // shares the slices; Deserialize consumes its argument
  if (grpc::Status parsed =
          grpc::SerializationTraits<v1::GenerateRequest>::Deserialize(&bytes, &request);
      !parsed.ok()) {
    return new RefusedStream(parsed);
  }
  absl::StatusOr<PreparedRequest> prepared = PrepareGenerateRequest(request, model_);
  if (!prepared.ok()) {
    spdlog::info("Generate refused: {}", prepared.status().ToString());
    return new RefusedStream(ToGrpcStatus(prepared.status()));
  }
  absl::StatusOr<std::shared_ptr<RequestHandle>> handle =
      engine_.Submit(std::move(*prepared), arrival);
  if (!handle.ok()) {
    spdlog::info("Generate refused: {}", handle.status().ToString());
    return new RefusedStream(ToGrpcStatus(handle.status()));
  }
  return new GenerateStream(engine_, std::move(*handle));
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
  info->set_ep(options_.ep);
  info->set_context_length(model_.context_length);
  info->set_vocab_size(model_.config.vocab_size);
  info->set_kv_block_size(options_.kv_block_size);
  info->set_kv_blocks_total(stats.kv_blocks_total);
  info->set_kv_blocks_free(stats.kv_blocks_free);
  info->set_workers_attached(stats.workers_attached);
  info->set_workers_expected(options_.tp * options_.pp);
  info->set_requests_running(stats.requests_running);
  info->set_requests_waiting(stats.requests_waiting);
  info->set_prefix_cache_queries(stats.prefix_cache_queries);
  info->set_prefix_cache_hits(stats.prefix_cache_hits);
  info->set_kv_blocks_cached(stats.kv_blocks_cached);
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
