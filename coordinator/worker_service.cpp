#include "coordinator/worker_service.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "coordinator/grpc_status.h"
#include "coordinator/worker_link.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {
// How long the workers get to end their stream after Shutdown before it is cut.
constexpr std::chrono::seconds kShutdownGrace(3);
// How long a job told to Abort gets to end its stream before it is cut.
constexpr std::chrono::seconds kAbortGrace(2);

grpc::Status Error(grpc::StatusCode code, const std::string& message) {
  spdlog::error("worker attach: {}", message);
  return grpc::Status(code, message);
}
}  // namespace

grpc::Status WorkerService::Attach(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<worker::v1::CoordinatorMessage, worker::v1::WorkerMessage>* stream) {
  worker::v1::WorkerMessage message;
  if (!stream->Read(&message)) {
    return Error(grpc::StatusCode::CANCELLED,
                 absl::StrCat("the worker job (", context->peer(), ") closed before its hello"));
  }
  if (!message.has_hello()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("expected WorkerHello as the first message, got message kind ",
                              static_cast<int>(message.kind_case())));
  }
  const worker::v1::WorkerHello hello = message.hello();
  const std::string peer = absl::StrCat(hello.hostname(), " pid ", hello.pid(), " (",
                                        hello.world_size(), " ranks, ", context->peer(), ")");
  if (hello.world_size() != options_.tp * options_.pp) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("world size ", hello.world_size(), " != tp x pp = ", options_.tp,
                              " x ", options_.pp));
  }
  absl::StatusOr<uint64_t> attach =
      engine_.BeginAttach(peer, [context] { context->TryCancel(); });
  if (!attach.ok()) {
    spdlog::warn("worker job {} refused: {}", peer, std::string(attach.status().message()));
    return ToGrpcStatus(attach.status());
  }
  absl::Status end_reason = absl::UnavailableError("the attach stream ended");
  // Runs before the handler returns (the cancel callback refers to `context`).
  absl::Cleanup end_attach = [&] { engine_.EndAttach(*attach, end_reason); };

  worker::v1::CoordinatorMessage load_message;
  worker::v1::LoadCommand* load = load_message.mutable_load();
  load->set_model(options_.model);
  load->set_tp(options_.tp);
  load->set_pp(options_.pp);
  load->set_pp_layers(options_.pp_layers);
  load->set_kv_block_size(options_.kv_block_size);
  load->set_kv_cache_bytes(options_.kv_cache_bytes);
  load->set_max_batch_tokens(options_.max_batch_tokens);
  load->set_threads(options_.threads);
  spdlog::info("worker job {} attached: loading {} at tp {} pp {}", peer, options_.model,
               options_.tp, options_.pp);
  if (!stream->Write(load_message)) {
    return Error(grpc::StatusCode::UNAVAILABLE,
                 absl::StrCat("worker job ", peer, ": the stream broke before LoadCommand"));
  }
  if (!stream->Read(&message)) {
    return Error(grpc::StatusCode::UNAVAILABLE,
                 absl::StrCat("worker job ", peer, ": the stream ended while loading"));
  }
  if (!message.has_loaded()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("worker job ", peer, ": expected Loaded, got message kind ",
                              static_cast<int>(message.kind_case())));
  }
  const worker::v1::Loaded& loaded = message.loaded();
  if (!loaded.ok()) {
    return Error(grpc::StatusCode::ABORTED,
                 absl::StrCat("worker job ", peer, " failed to load ", options_.model, ": ",
                              loaded.error()));
  }
  if (loaded.kv_blocks() <= 0) {
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED,
                 absl::StrCat("worker job ", peer, " has room for no KV block (kv_blocks = ",
                              loaded.kv_blocks(), "): raise --kv-cache-memory"));
  }
  auto link = std::make_shared<WorkerLink>(peer);
  absl::Status activated = engine_.Activate(*attach, link, loaded.kv_blocks());
  if (!activated.ok()) {
    worker::v1::CoordinatorMessage bye;
    bye.mutable_shutdown();
    stream->Write(bye);
    return ToGrpcStatus(activated);
  }
  spdlog::info("worker job {} loaded: {} KV blocks of {} tokens, {:.1f} MiB of weights on rank 0; "
               "serving", peer, loaded.kv_blocks(), options_.kv_block_size,
               loaded.weight_bytes_rank0() / 1048576.0);

  std::atomic<bool> reader_done{false};
  std::thread reader([&] {
    worker::v1::WorkerMessage in;
    while (stream->Read(&in)) link->OnMessage(in);
    reader_done = true;  // before MarkDown: whoever sees the link down may rely on it
    link->MarkDown(absl::UnavailableError("the worker job's stream ended"));
  });
  while (std::optional<worker::v1::CoordinatorMessage> out = link->NextOutgoing()) {
    if (!stream->Write(*out)) {
      link->MarkDown(absl::UnavailableError("writing to the worker job's stream failed"));
      break;
    }
  }
  if (link->aborted()) {
    // Declared hung; the Abort is written (or the stream broke). Rank 0 ends the job, which
    // breaks the stream; a job too wedged for that is cut off after a grace period.
    if (!link->WaitDown(kAbortGrace)) {
      spdlog::warn("worker job {} did not end within {} s of Abort: cutting its stream", peer,
                   kAbortGrace.count());
    }
    end_reason = absl::UnavailableError("the worker job was aborted (hung)");
  } else if (!link->down()) {  // closed: the coordinator is shutting down
    worker::v1::CoordinatorMessage bye;
    bye.mutable_shutdown();
    stream->Write(bye);
    if (!link->WaitDown(kShutdownGrace)) {
      spdlog::warn("worker job {} did not end its stream within {} s of Shutdown", peer,
                   kShutdownGrace.count());
    }
    end_reason = absl::UnavailableError("the coordinator is shutting down");
  } else {
    end_reason = link->down_reason();
  }
  if (!reader_done) context->TryCancel();  // unblocks the reader's Read
  reader.join();
  return grpc::Status::OK;
}

}  // namespace shardlm::coordinator
