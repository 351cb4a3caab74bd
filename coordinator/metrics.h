// The coordinator's Prometheus metrics (prometheus-cpp's core), rendered as the text exposition
// format for GET /metrics on the HTTP front door. Names are "shardlm:" followed by vLLM's
// suffixes, so that dashboards made for vLLM port over by changing the prefix, and every series
// carries model_name="<basename of --model>" as vLLM's do. prometheus-cpp 1.0.1 accepts the colon
// (its name check allows [a-zA-Z_:][a-zA-Z0-9_:]* as Prometheus does, bar a reserved "__"
// prefix) and writes names as given; prometheus_client's parser reads them back (tested).
//
// The engine reports events as they happen (a request first scheduled, a token appended to a
// request's output, a request finished, a step completed; all called under the engine's lock,
// on the engine thread or a handler's); the gauges are refreshed from Engine::Stats() at scrape
// time (CoordinatorServer::MetricsText). prometheus-cpp's metrics are thread-safe, so a scrape
// needs no lock of the engine's beyond Stats().
//
// The prefix cache's prefix_cache_queries_total / prefix_cache_hits_total count tokens as vLLM's
// do: a sequence admitted (first time, after preemption or a lost worker job) queries its whole
// length and hits its cached leading blocks. kv_cache_usage_perc counts evictable cached blocks
// as free. With --no-prefix-caching both counters stay 0.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "coordinator/engine.h"
#include "shardlm/v1/generation.pb.h"

namespace shardlm::coordinator {

class Metrics {
 public:
  using Clock = std::chrono::steady_clock;

  // `context_length` bounds the per-request token histograms; `workers_expected` is tp x pp.
  Metrics(const std::string& model_name, int64_t context_length, int32_t workers_expected);
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The model_name label for --model PATH: its last component ("models/SmolLM2/" -> "SmolLM2").
  static std::string ModelName(const std::string& path);
  // vLLM's finished_reason label value: "stop" (a stop string, stop token or end-of-generation
  // token), "length", "abort" (Abort RPC, client gone, deadline) or "error".
  static const char* FinishedReasonLabel(v1::FinishReason reason);

  // A request is scheduled for the first time: request_queue_time_seconds.
  void Scheduled(Clock::time_point arrival, Clock::time_point now);
  // A sampled token was appended to a request's output (one of its completion tokens):
  // generation_tokens_total. `previous` is when its previous token was; none for its first,
  // which observes time_to_first_token_seconds (from `arrival`) and counts the request's
  // `prompt_tokens` in prompt_tokens_total (its prompt is prefilled now: counted once per
  // request, recomputation after preemption or a lost worker job not again); later ones observe
  // inter_token_latency_seconds.
  void Token(int32_t prompt_tokens, Clock::time_point arrival,
             std::optional<Clock::time_point> previous, Clock::time_point now);
  // A request ended, whatever the reason: request_success_total{finished_reason},
  // e2e_request_latency_seconds and the per-request prompt/generation token histograms. Errors
  // are counted here as finished_reason="error" (no separate failure counter): the sum over
  // finished_reason is every request that ended.
  void Finished(v1::FinishReason reason, int32_t prompt_tokens, int32_t completion_tokens,
                Clock::time_point arrival, Clock::time_point now);
  // A step admitted sequences: prefix_cache_queries_total and prefix_cache_hits_total.
  void PrefixCache(int64_t queried_tokens, int64_t hit_tokens);
  // A step returned its result: its sequences, tokens and wall time (plan sent to result back).
  void Step(int64_t seqs, int64_t tokens, double seconds);
  // The gauges, from the engine's state now.
  void Refresh(const EngineStats& stats);

  // The text exposition format (version 0.0.4) of every metric.
  std::string Render() const;

 private:
  const std::string model_name_;
  prometheus::Registry registry_;
  // Owned by registry_ (its families are never removed).
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Gauge* kv_usage_ = nullptr;
  prometheus::Gauge* workers_attached_ = nullptr;
  prometheus::Gauge* workers_expected_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generation_tokens_ = nullptr;
  prometheus::Counter* prefix_queries_ = nullptr;
  prometheus::Counter* prefix_hits_ = nullptr;
  prometheus::Family<prometheus::Counter>* success_ = nullptr;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* queue_ = nullptr;
  prometheus::Histogram* request_prompt_tokens_ = nullptr;
  prometheus::Histogram* request_generation_tokens_ = nullptr;
  prometheus::Histogram* step_seqs_ = nullptr;
  prometheus::Histogram* step_tokens_ = nullptr;
  prometheus::Histogram* step_time_ = nullptr;
};

}  // namespace shardlm::coordinator
