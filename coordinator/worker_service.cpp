#include "coordinator/worker_service.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "base/quote.h"
#include "base/secret.h"
#include "coordinator/grpc_status.h"
#include "coordinator/worker_checks.h"
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

// Cuts the stream off (TryCancel, which ends a blocked Read) unless disarmed within `timeout`.
class HelloWatchdog {
 public:
  HelloWatchdog(grpc::ServerContext* context, std::chrono::milliseconds timeout) {
    thread_ = std::thread([this, context, timeout] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, timeout, [&] { return disarmed_; })) {
        fired_ = true;
        context->TryCancel();
      }
    });
  }
  ~HelloWatchdog() { Disarm(); }
  // True when it had fired already.
  bool Disarm() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      disarmed_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    return fired_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool disarmed_ = false;
  bool fired_ = false;
  std::thread thread_;
};
}  // namespace

grpc::Status WorkerService::Attach(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<worker::v1::CoordinatorMessage, worker::v1::WorkerMessage>* stream) {
  const std::string from = context->peer();  // "unknown" once cancelled
  worker::v1::WorkerMessage message;
  // A silent connection must not hold this handler thread: the hello comes in time or never.
  HelloWatchdog watchdog(context, options_.worker_hello_timeout);
  const bool got_hello = stream->Read(&message);
  if (watchdog.Disarm()) {
    spdlog::warn("worker attach from {}: no hello within {} ms: cut off", from,
                 options_.worker_hello_timeout.count());
    return grpc::Status(
        grpc::StatusCode::DEADLINE_EXCEEDED,
        absl::StrCat("no WorkerHello within ", options_.worker_hello_timeout.count(),
                     " ms of opening the stream"));
  }
  if (!got_hello) {
    return Error(grpc::StatusCode::CANCELLED,
                 absl::StrCat("the worker job (", from, ") closed before its hello"));
  }
  if (!message.has_hello()) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("expected WorkerHello as the first message, got message kind ",
                              static_cast<int>(message.kind_case())));
  }
  const worker::v1::WorkerHello hello = message.hello();
  // First, before anything of the coordinator's (the slot, the world size) is told. The reply
  // says nothing that helps guessing; the log names the peer.
  if (!SecretsEqual(hello.secret(), options_.worker_secret)) {
    spdlog::warn("worker attach from {} refused: its secret does not match --worker-secret-file",
                 from);
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "worker attach refused: wrong secret (see --worker-secret-file)");
  }
  const std::string peer = absl::StrCat(Quote(hello.hostname(), 64), " pid ", hello.pid(), " (",
                                        hello.world_size(), " ranks, ", from, ")");
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
  load->set_ep(options_.ep);
  load->set_pp_layers(options_.pp_layers);
  load->set_kv_block_size(options_.kv_block_size);
  load->set_kv_cache_bytes(options_.kv_cache_bytes);
  load->set_max_batch_tokens(options_.max_batch_tokens);
  load->set_threads(options_.threads);
  spdlog::info("worker job {} attached: loading {} at tp {} pp {} ep {}", peer, options_.model,
               options_.tp, options_.pp, options_.ep);
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
                              WorkerText(loaded.error())));
  }
  // Before the block manager is sized from it.
  if (absl::Status checked = CheckLoaded(loaded); !checked.ok()) {
    return Error(static_cast<grpc::StatusCode>(checked.code()),
                 absl::StrCat("worker job ", peer, " refused: ", checked.message()));
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

  // Every result is checked against its plan before the link (and the engine) sees it.
  StepResultGuard guard(vocab_size_);
  std::optional<absl::Status> violation;  // written by the reader before reader_done
  std::atomic<bool> reader_done{false};
  std::thread reader([&] {
    worker::v1::WorkerMessage in;
    while (stream->Read(&in)) {
      if (absl::Status checked = guard.Received(&in); !checked.ok()) {
        violation =
            absl::InvalidArgumentError(absl::StrCat("protocol violation: ", checked.message()));
        spdlog::error("worker job {}: {}", peer, std::string(violation->message()));
        break;
      }
      link->OnMessage(in);
    }
    reader_done = true;  // before MarkDown: whoever sees the link down may rely on it
    link->MarkDown(violation.value_or(absl::UnavailableError("the worker job's stream ended")));
  });
  while (std::optional<worker::v1::CoordinatorMessage> out = link->NextOutgoing()) {
    if (out->has_step()) guard.Sent(out->step());
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
  // The job hears why it was dropped (a real worker logs it and exits).
  if (violation) return ToGrpcStatus(*violation);
  return grpc::Status::OK;
}

}  // namespace shardlm::coordinator
