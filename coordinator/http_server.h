// The coordinator's HTTP front door (--http-listen), on cpp-httplib: the OpenAI-compatible API
// (POST /v1/completions, POST /v1/chat/completions, streamed as server-sent events or whole;
// GET /v1/models), POST /tokenize and /detokenize (vLLM's shapes), GET /health (200 only while
// serving) and GET /metrics. Requests go to Engine::Submit exactly as gRPC Generate's do, after
// the same validator (openai_api.h). A client that goes away before its answer is complete has
// its requests cancelled, which frees their KV blocks. TLS (and mTLS) with options.tls_cert;
// with options.auth_token every route but /health and /metrics needs "Authorization: Bearer".
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/engine.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"

namespace shardlm::coordinator {

struct HttpHooks {
  // True while a loaded worker job serves (GET /health: 200, else 503).
  std::function<bool()> serving;
  // The Prometheus text exposition for GET /metrics; null: /metrics is 404.
  std::function<std::string()> metrics_text;
};

class HttpServer {
 public:
  // Binds options.http_listen (port 0: a free one) and serves on options.http_threads threads;
  // `model` and `engine` must outlive the server.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const CoordinatorOptions& options,
                                                           const ModelContext& model,
                                                           Engine& engine, HttpHooks hooks);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // HOST:PORT as bound: the host of --http-listen and the actual port.
  const std::string& address() const;
  int port() const;

  // Stops accepting and waits for the requests in progress (end the engine's requests first
  // so that streams finish). Idempotent.
  void Stop();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardlm::coordinator
