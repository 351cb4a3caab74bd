// The coordinator's settings (the shardlm-coordinator command line) and their checks.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shardlm::coordinator {

// Context length used when the model's config gives none and --max-model-len is not set.
inline constexpr int64_t kDefaultContextLength = 4096;

struct CoordinatorOptions {
  // HOST:PORT; port 0 picks a free one. Loopback unless given: serving other hosts (clients, or
  // workers on other nodes) is a choice the operator makes explicitly.
  std::string listen = "127.0.0.1:50051";
  // HOST:PORT where worker jobs attach (WorkerControl), a server of its own so that the public
  // port never offers it; port 0 picks a free one. Loopback unless given: workers on other
  // nodes need an address of a private network here.
  std::string worker_listen = "127.0.0.1:50052";
  // The shared secret of --worker-secret-file (its bytes, not the path): a worker's hello must
  // carry it. At least kMinSecretBytes (base/secret.h).
  std::string worker_secret;
  // How long a new attach stream may take to say hello before it is cut off: a silent
  // connection never holds the worker slot or a handler thread for long.
  std::chrono::milliseconds worker_hello_timeout{5000};
  std::string model;                     // path, as both the coordinator and the workers see it
  int32_t tp = 1;
  int32_t pp = 1;
  // Expert parallelism (mixtures of experts): the experts are spread over ep groups of each
  // stage's TP ranks, so ep divides tp (parallel/shard_plan.h).
  int32_t ep = 1;
  std::string pp_layers;                 // "" or "10,20": where stages 1.. start
  int32_t max_batch_tokens = 512;        // tokens per step (decode tokens + prefill chunks)
  // Steps sent to the worker job at once (overlapped steps, pipeline micro-batches); 0: pp + 1.
  int32_t steps_in_flight = 0;
  // A step that carries decodes takes only as much prefill as keeps it within about
  // step_time_ratio x a decode-only step of the batch in flight and within max_step_time_ms, by
  // a cost model fitted to measured step times (step_budget.h); 0 turns a bound off; both 0:
  // prefill fills max_batch_tokens whatever decodes.
  double step_time_ratio = 2.0;
  double max_step_time_ms = 0;
  uint64_t kv_cache_bytes = 0;  // per rank, for the workers' KV blocks; 0: the workers decide
  int32_t kv_block_size = 16;            // tokens per KV block
  // Automatic prefix caching: full KV blocks are kept, by the hash of their token chain, after
  // their request ends, and a later prompt that starts with the same blocks skips their
  // prefill (kv_block_manager.h). --no-prefix-caching turns it off.
  bool prefix_caching = true;
  int32_t max_queue = 256;               // waiting requests at most
  // Sequences in the batch at most; capped at max_batch_tokens (EffectiveMaxRunning), since
  // every running sequence in decode takes a token of each step.
  int32_t max_running = 64;
  int32_t threads = 0;                   // per worker rank; 0: the node's cores / its ranks
  // Context length: 0 takes the model's max_position_embeddings (kDefaultContextLength when the
  // config has none); a value caps it.
  int64_t max_model_len = 0;
  // Special-token text in chat message contents maps to the special ids (the old behaviour, for
  // compatibility); by default only the chat template's markup is special
  // (ModelContext::chat_parse_special).
  bool chat_parse_special = false;
  // Seconds a step may take before the worker job is declared hung and aborted; 0: derived from
  // the job's measured step times (at least 60 s, see step_deadline.h).
  double step_timeout_s = 0;
  // Seconds the requests of a lost worker job wait for another job to attach and load before
  // they end UNAVAILABLE; 0: they fail at once.
  double requeue_timeout_s = 60;

  // --- The HTTP front door (http_server.h): the OpenAI-compatible API, /health, /metrics.
  // HOST:PORT (port 0: a free one); "" serves no HTTP.
  std::string http_listen;
  // Threads of the HTTP server: each serves one request at a time (a streaming one for its
  // whole length); requests beyond them wait in its queue rather than fail.
  int32_t http_threads = 64;

  // --- Security of the public API (gRPC --listen and HTTP --http-listen; the workers' attach is
  // guarded by worker_secret). Paths of PEM files; "" for none.
  std::string tls_cert;       // with tls_key: TLS on both servers
  std::string tls_key;
  std::string tls_client_ca;  // mTLS: clients must present a certificate this CA signed
  // The bearer token of --auth-token-file (its bytes): every call but health checks (gRPC
  // health, HTTP /health) and /metrics must carry it ("authorization: Bearer TOKEN"); "" for
  // none. At least kMinSecretBytes.
  std::string auth_token;

  // --- Graceful drain (SIGTERM): seconds running requests get to finish once new ones are
  // refused, before the workers are told to exit.
  double drain_timeout_s = 30;
};

inline int32_t EffectiveMaxRunning(const CoordinatorOptions& o) {
  return o.max_running < o.max_batch_tokens ? o.max_running : o.max_batch_tokens;
}

// Every error names the flag and what was expected.
absl::Status ValidateOptions(const CoordinatorOptions& options);

// "256MiB", "1GiB", "512M", "64KB", "1048576": bytes. Units are binary (K = KiB = 1024) and
// case-insensitive; the number may have a fraction ("1.5GiB").
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);

// The context length the coordinator enforces for `max_position_embeddings` (0 = unknown).
int64_t ContextLength(int64_t max_position_embeddings, int64_t max_model_len);

}  // namespace shardlm::coordinator
