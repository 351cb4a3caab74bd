// shardlm-coordinator: the gRPC front of shardlm. Serves the Generation API on --listen, waits
// for a worker job (mpirun shardlm-worker --coordinator WORKER_ADDR --worker-secret-file F) to
// attach on --worker-listen, and schedules requests onto it. Once serving, prints
// "listening on HOST:PORT" (the public address) as the first stdout line and
// "worker attach on HOST:PORT" as the second and, with --http-listen, "http on HOST:PORT" as the
// third; logs go to stderr.
// SIGTERM (what Kubernetes, Slurm and systemd send) drains: health NOT_SERVING at once, new
// requests UNAVAILABLE, live ones finish for up to --drain-timeout; then what is left ends
// UNAVAILABLE, the workers are told to shut down and the coordinator exits 0. SIGINT (Ctrl-C), or
// a second SIGTERM during the drain, skips or ends the drain: streams end now, exit 0.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "base/secret.h"
#include "coordinator/model_context.h"
#include "coordinator/options.h"
#include "coordinator/server.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "shardlm-coordinator: error: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using shardlm::coordinator::CoordinatorOptions;
  spdlog::set_default_logger(spdlog::stderr_color_mt("shardlm-coordinator"));
  spdlog::set_pattern("[%H:%M:%S.%e] [coordinator] [%^%l%$] %v");

  CLI::App app{"shardlm-coordinator: serve a model over gRPC on an attached mpirun worker job"};
  CoordinatorOptions o;
  std::string kv_cache_memory = "auto";
  std::string log_level = "info";
  std::string worker_secret_file;
  app.add_option("--listen", o.listen,
                 "HOST:PORT of the public API (port 0: pick a free one); loopback by default, "
                 "0.0.0.0:PORT to serve clients on other hosts")
      ->default_val(o.listen);
  app.add_option("--worker-listen", o.worker_listen,
                 "HOST:PORT where the worker job attaches (port 0: pick a free one); loopback by "
                 "default; for workers on other nodes, an address on a private network (the "
                 "attach is not encrypted)")
      ->default_val(o.worker_listen);
  app.add_option("--worker-secret-file", worker_secret_file,
                 "File holding the shared secret (>= 16 bytes; one trailing newline is ignored) "
                 "that the worker job must present: shardlm-worker --worker-secret-file the same "
                 "(required)");
  app.add_option("--model", o.model,
                 "HF model directory or .gguf file (the same path must work on the workers)")
      ->required();
  app.add_option("--tp", o.tp, "Tensor-parallel degree of the worker job")->default_val(1);
  app.add_option("--pp", o.pp, "Pipeline-parallel degree of the worker job")->default_val(1);
  app.add_option("--ep", o.ep,
                 "Expert-parallel degree (mixtures of experts): whole experts spread over ep "
                 "groups of each stage's tp ranks; must divide --tp and the experts")
      ->default_val(1);
  app.add_option("--pp-layers", o.pp_layers,
                 "Layers where pipeline stages 1.. start, comma separated (default: even)");
  app.add_option("--max-batch-tokens", o.max_batch_tokens,
                 "Tokens per step: decode tokens plus prefill chunks")
      ->default_val(o.max_batch_tokens);
  app.add_option("--steps-in-flight", o.steps_in_flight,
                 "Steps sent to the worker job at once: the coordinator plans the next step "
                 "while the workers run the ones before it, and with --pp each pipeline stage "
                 "works on a different micro-batch of the running sequences. 0: pp + 1; 1: one "
                 "step at a time")
      ->default_val(o.steps_in_flight);
  app.add_option("--step-time-ratio", o.step_time_ratio,
                 "A step that carries decodes takes only as many prefill tokens as keep it within "
                 "about this multiple of a decode-only step of the batch in flight, by measured "
                 "step times; this bounds inter-token latency while prompts are prefilled (0: off)")
      ->default_val(o.step_time_ratio);
  app.add_option("--max-step-time-ms", o.max_step_time_ms,
                 "Also bound such a step to this many milliseconds (0: off; at least 1 prefill "
                 "token still rides on each step)")
      ->default_val(o.max_step_time_ms);
  app.add_option("--kv-cache-memory", kv_cache_memory,
                 "Memory per worker rank for KV blocks (e.g. 256MiB, 4GiB); auto: the workers "
                 "decide (CPU: 256MiB; GPU: what --gpu-memory-fraction leaves)")
      ->default_val(kv_cache_memory);
  app.add_option("--kv-block-size", o.kv_block_size, "Tokens per KV block")
      ->default_val(o.kv_block_size);
  app.add_flag("--prefix-caching,!--no-prefix-caching", o.prefix_caching,
               "Automatic prefix caching (on by default): a prompt that starts with the full KV "
               "blocks of an earlier one reuses them instead of recomputing them");
  app.add_option("--max-queue", o.max_queue, "Waiting requests at most (more: RESOURCE_EXHAUSTED)")
      ->default_val(o.max_queue);
  app.add_option("--max-running", o.max_running, "Sequences in the running batch at most")
      ->default_val(o.max_running);
  app.add_option("--threads", o.threads,
                 "CPU threads per worker rank (0: the node's cores divided among its ranks)")
      ->default_val(o.threads);
  app.add_option("--max-model-len", o.max_model_len,
                 "Cap on prompt + generated tokens per request (0: the model's "
                 "max_position_embeddings, or 4096 when it has none)")
      ->default_val(o.max_model_len);
  app.add_flag("--chat-parse-special", o.chat_parse_special,
               "Chat prompts: treat special-token text inside message contents (e.g. "
               "<|im_start|>) as special tokens, as before; by default only the chat template's "
               "own markup is special, so a message cannot open a fake turn");
  app.add_option("--step-timeout", o.step_timeout_s,
                 "Seconds a step may take before the worker job is declared hung, told to abort "
                 "and its requests held for the next job (0: 10x the slowest similar step "
                 "measured, at least 60 s)")
      ->default_val(o.step_timeout_s);
  app.add_option("--requeue-timeout", o.requeue_timeout_s,
                 "Seconds the requests of a lost worker job wait for a relaunched job to attach "
                 "and load before they end UNAVAILABLE (0: they fail at once)")
      ->default_val(o.requeue_timeout_s);
  app.add_option("--http-listen", o.http_listen,
                 "HOST:PORT of the OpenAI-compatible HTTP API, /health and /metrics (port 0: pick "
                 "a free one; unset: no HTTP)");
  app.add_option("--http-threads", o.http_threads,
                 "HTTP server threads; each serves one request at a time (a stream for its whole "
                 "length), more requests wait in its queue")
      ->default_val(o.http_threads);
  app.add_option("--tls-cert", o.tls_cert,
                 "PEM certificate chain: serve the public gRPC API and HTTP over TLS (with "
                 "--tls-key)");
  app.add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", o.tls_client_ca,
                 "PEM CA certificates: require client certificates signed by them (mTLS)");
  std::string auth_token_file;
  app.add_option("--auth-token-file", auth_token_file,
                 "File holding a bearer token (>= 16 bytes; one trailing newline is ignored) that "
                 "every public call must carry as 'authorization: Bearer TOKEN' (health checks "
                 "and /metrics excepted)");
  app.add_option("--drain-timeout", o.drain_timeout_s,
                 "On SIGTERM: seconds running requests get to finish while new ones are refused, "
                 "before the worker job is told to exit")
      ->default_val(o.drain_timeout_s);
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->default_val(log_level);
  CLI11_PARSE(app, argc, argv);

  spdlog::set_level(spdlog::level::from_str(log_level));
  if (kv_cache_memory == "auto") {
    o.kv_cache_bytes = 0;
  } else {
    absl::StatusOr<uint64_t> kv_bytes = shardlm::coordinator::ParseByteSize(kv_cache_memory);
    if (!kv_bytes.ok()) {
      return Fail(absl::StrCat("--kv-cache-memory: ", kv_bytes.status().message()));
    }
    if (*kv_bytes == 0) return Fail("--kv-cache-memory: expected > 0 bytes or auto, got 0");
    o.kv_cache_bytes = *kv_bytes;
  }
  std::string secret_warning;
  absl::StatusOr<std::string> secret =
      shardlm::ReadSecretFile("--worker-secret-file", worker_secret_file, &secret_warning);
  if (!secret.ok()) return Fail(std::string(secret.status().message()));
  if (!secret_warning.empty()) spdlog::warn("{}", secret_warning);
  o.worker_secret = std::move(*secret);
  if (!auth_token_file.empty()) {
    std::string token_warning;
    absl::StatusOr<std::string> token =
        shardlm::ReadSecretFile("--auth-token-file", auth_token_file, &token_warning);
    if (!token.ok()) return Fail(std::string(token.status().message()));
    if (!token_warning.empty()) spdlog::warn("{}", token_warning);
    o.auth_token = std::move(*token);
  }
  if (absl::Status valid = shardlm::coordinator::ValidateOptions(o); !valid.ok()) {
    return Fail(std::string(valid.message()));
  }
  auto model = shardlm::coordinator::LoadModelContext(o.model, o.max_model_len);
  if (!model.ok()) return Fail(absl::StrCat("--model: ", model.status().message()));
  (*model)->chat_parse_special = o.chat_parse_special;

  // SIGINT and SIGTERM are blocked in every thread (gRPC's threads inherit the mask) and taken
  // by sigwait below, so shutdown runs as ordinary code on the main thread. SIGUSR1 is how the
  // drain thread wakes that sigwait when it is done.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = shardlm::coordinator::CoordinatorServer::Start(o, std::move(*model));
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::printf("listening on %s\nworker attach on %s\n", (*server)->address().c_str(),
              (*server)->worker_address().c_str());
  if (!(*server)->http_address().empty()) {
    std::printf("http on %s\n", (*server)->http_address().c_str());
  }
  std::fflush(stdout);

  int signal_number = 0;
  do {
    sigwait(&signals, &signal_number);
  } while (signal_number == SIGUSR1);
  spdlog::info("{}: shutting down", strsignal(signal_number));
  if (signal_number == SIGTERM && o.drain_timeout_s > 0) {
    spdlog::info("draining for up to {} s (SIGTERM or SIGINT again: stop at once)",
                 o.drain_timeout_s);
    std::atomic<bool> drained{false};
    const pthread_t main_thread = pthread_self();
    std::thread drainer([&] {
      (*server)->Drain(
          std::chrono::milliseconds(static_cast<int64_t>(std::ceil(o.drain_timeout_s * 1000))));
      drained = true;
      pthread_kill(main_thread, SIGUSR1);
    });
    while (!drained) {
      sigwait(&signals, &signal_number);
      if (signal_number != SIGUSR1) {
        spdlog::warn("{} during the drain: stopping now", strsignal(signal_number));
        (*server)->CutDrain();
        break;
      }
    }
    drainer.join();
  }
  (*server)->Shutdown();
  (*server)->Wait();
  spdlog::info("bye");
  return 0;
}
