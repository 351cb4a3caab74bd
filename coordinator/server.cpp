#include "coordinator/server.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "coordinator/auth.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {
// How long Shutdown waits for the attached workers to end their stream after Shutdown.
constexpr std::chrono::seconds kWorkerGrace(4);
// Then how long the server lets calls finish before cancelling them. Streams have ended by now;
// this mostly bounds the wait for idle client connections to go.
constexpr std::chrono::milliseconds kServerDeadline(1000);
}  // namespace

CoordinatorServer::CoordinatorServer(const CoordinatorOptions& options,
                                     std::unique_ptr<ModelContext> model)
    : options_(options), model_(std::move(model)) {
  EngineOptions engine_options;
  engine_options.scheduler.max_batch_tokens = options_.max_batch_tokens;
  engine_options.scheduler.max_running = EffectiveMaxRunning(options_);
  engine_options.scheduler.max_queue = options_.max_queue;
  engine_options.step_budget.ratio = options_.step_time_ratio;
  engine_options.step_budget.max_step_ms = options_.max_step_time_ms;
  engine_options.kv_block_size = options_.kv_block_size;
  engine_options.prefix_caching = options_.prefix_caching;
  engine_options.workers_expected = options_.tp * options_.pp;
  engine_options.steps_in_flight =
      options_.steps_in_flight > 0 ? options_.steps_in_flight : options_.pp + 1;
  // One micro-batch per pipeline stage, when there are steps in flight to fill them.
  engine_options.scheduler.micro_batches =
      std::min(options_.pp, std::max(engine_options.steps_in_flight, 1));
  engine_options.step_deadline.fixed =
      std::chrono::milliseconds(static_cast<int64_t>(std::ceil(options_.step_timeout_s * 1000)));
  engine_options.requeue_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(std::ceil(options_.requeue_timeout_s * 1000)));
  metrics_ = std::make_unique<Metrics>(Metrics::ModelName(model_->path), model_->context_length,
                                       options_.tp * options_.pp);
  engine_options.metrics = metrics_.get();
  engine_ = std::make_unique<Engine>(*model_, engine_options,
                                     [this](bool serving) { SetHealth(serving); });
  generation_ = std::make_unique<GenerationService>(*model_, options_, *engine_);
  workers_ = std::make_unique<WorkerService>(options_, *engine_, model_->config.vocab_size);
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

std::string CoordinatorServer::MetricsText() {
  metrics_->Refresh(engine_->Stats());
  return metrics_->Render();
}

void CoordinatorServer::SetHealth(bool serving) {
  serving_ = serving;
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(v1::Generation::service_full_name(), serving);
}

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorOptions& options, std::unique_ptr<ModelContext> model) {
  // Must precede the ServerBuilders (reflection goes on both; it describes, it serves nothing).
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  auto host_of = [](const std::string& address) { return address.substr(0, address.rfind(':')); };
  // The public API's TLS and token (auth.h); bad PEM files fail here, naming the flag.
  std::string security;
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> public_credentials =
      PublicServerCredentials(options, &security);
  if (!public_credentials.ok()) return public_credentials.status();
  if (options.ep > 1 && (model->config.num_experts == 0 ||
                         model->config.num_experts % options.ep != 0)) {
    return absl::InvalidArgumentError(
        model->config.num_experts == 0
            ? absl::StrCat("--ep ", options.ep, ": ", model->path,
                           " is not a mixture of experts")
            : absl::StrCat("--ep ", options.ep, " does not divide the ",
                           model->config.num_experts, " experts of ", model->path));
  }
  std::unique_ptr<CoordinatorServer> self(new CoordinatorServer(options, std::move(model)));

  // The workers' server: WorkerControl alone, and no health service (its SERVING would say
  // nothing about the model being served).
  grpc::EnableDefaultHealthCheckService(false);
  grpc::ServerBuilder worker_builder;
  int worker_port = 0;
  worker_builder.AddListeningPort(options.worker_listen, grpc::InsecureServerCredentials(),
                                  &worker_port);
  worker_builder.RegisterService(self->workers_.get());
  // Results of a step are small (ids and logprobs); this bounds what a stranger's first message
  // may make the server buffer before the hello is checked.
  worker_builder.SetMaxReceiveMessageSize(16 << 20);
  // A worker host that vanishes without closing its connection is noticed within ~4 s by
  // keepalive pings (a killed process closes its connection and is noticed at once).
  worker_builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 2000);
  worker_builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
  worker_builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  worker_builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Workers that send keepalive pings of their own are not told off.
  worker_builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  worker_builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  self->worker_server_ = worker_builder.BuildAndStart();
  if (self->worker_server_ == nullptr || worker_port == 0) {
    return absl::UnavailableError(absl::StrCat("--worker-listen ", options.worker_listen,
                                               ": cannot listen there (in use or invalid)"));
  }
  self->worker_address_ = absl::StrCat(host_of(options.worker_listen), ":", worker_port);

  // The public server.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, *public_credentials, &port);
  builder.RegisterService(self->generation_.get());
  // Long prompts as ids are large messages.
  builder.SetMaxReceiveMessageSize(64 << 20);
  // A client host that vanishes mid-stream is noticed (its request cancelled, its KV blocks
  // freed) within ~30 s; clients' own keepalive pings (the CLI's, every 60 s) are allowed.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  self->server_ = builder.BuildAndStart();
  if (self->server_ == nullptr || port == 0) {
    self->worker_server_->Shutdown();
    self->worker_server_->Wait();
    self->worker_server_.reset();
    return absl::UnavailableError(
        absl::StrCat("--listen ", options.listen, ": cannot listen there (in use or invalid)"));
  }
  self->port_ = port;
  self->address_ = absl::StrCat(host_of(options.listen), ":", port);
  self->SetHealth(false);  // until a worker job has loaded
  spdlog::info("public API on {}: {}", self->address_, security);
  if (!options.auth_token.empty() && options.tls_cert.empty() &&
      !IsLoopbackAddress(options.listen)) {
    spdlog::warn("--auth-token-file without --tls-cert on --listen {}: the token crosses the "
                 "network in clear text; add --tls-cert and --tls-key", options.listen);
  }
  if (!options.http_listen.empty()) {
    CoordinatorServer* server = self.get();
    absl::StatusOr<std::unique_ptr<HttpServer>> http = HttpServer::Start(
        options, *self->model_, *self->engine_,
        HttpHooks{.serving = [server] { return server->serving_.load(); },
                  .metrics_text = [server] { return server->MetricsText(); }});
    if (!http.ok()) return http.status();  // the destructor stops the gRPC servers
    self->http_ = std::move(*http);
  }
  if (EffectiveMaxRunning(options) < options.max_running) {
    spdlog::info("--max-running {} capped at --max-batch-tokens {}: each running sequence takes a "
                 "token of every step", options.max_running, options.max_batch_tokens);
  }
  self->engine_->Start();
  spdlog::info("serving {} ({}, context {}) on {}; a worker job of tp {} x pp {} (ep {}) attaches "
               "on {}",
               self->model_->path, std::string(ArchName(self->model_->config.arch)),
               self->model_->context_length, self->address_, options.tp, options.pp, options.ep,
               self->worker_address_);
  return self;
}

bool CoordinatorServer::Drain(std::chrono::milliseconds timeout) {
  engine_->BeginDrain();  // health NOT_SERVING through SetHealth, refuses new requests
  const EngineStats stats = engine_->Stats();
  spdlog::info("draining: {} running and {} queued request(s) get up to {} s to finish",
               stats.requests_running, stats.requests_waiting, timeout.count() / 1000.0);
  const bool drained = engine_->WaitDrained(Engine::Clock::now() + timeout);
  if (drained) {
    spdlog::info("drained: every request finished");
  } else {
    const EngineStats left = engine_->Stats();
    spdlog::warn("drain ended with {} running and {} queued request(s) left: they end UNAVAILABLE",
                 left.requests_running, left.requests_waiting);
  }
  return drained;
}

void CoordinatorServer::CutDrain() { engine_->CutDrain(); }

void CoordinatorServer::Shutdown() {
  std::call_once(shutdown_once_, [this] {
    if (server_ == nullptr) return;
    spdlog::info("shutting down");
    engine_->Stop();  // ends every request; the Attach handler says Shutdown to the workers
    SetHealth(false);
    if (!engine_->WaitAttachEnded(kWorkerGrace)) {
      spdlog::warn("the worker job's attach stream did not end within {} s", kWorkerGrace.count());
    }
    const auto deadline = std::chrono::system_clock::now() + kServerDeadline;
    worker_server_->Shutdown(deadline);
    server_->Shutdown(deadline);
    if (http_ != nullptr) http_->Stop();  // its streams ended with the engine's requests
  });
}

void CoordinatorServer::Wait() {
  if (server_ != nullptr) server_->Wait();
  if (worker_server_ != nullptr) worker_server_->Wait();
}

}  // namespace shardlm::coordinator
