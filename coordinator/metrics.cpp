#include "coordinator/metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <filesystem>
#include <vector>

namespace shardlm::coordinator {

namespace {

using Buckets = prometheus::Histogram::BucketBoundaries;

// Bucket bounds as vLLM's (seconds), so that histogram_quantile panels read alike.
const Buckets& TtftBuckets() {
  static const Buckets b = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                            1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
  return b;
}
// vLLM's bounds with 1 ms and 5 ms below them: a small model's decode step is faster than 10 ms.
const Buckets& InterTokenBuckets() {
  static const Buckets b = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3, 0.4,
                            0.5,   0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
  return b;
}
// e2e latency and queue time.
const Buckets& RequestBuckets() {
  static const Buckets b = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
                            30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  return b;
}
const Buckets& StepTimeBuckets() {
  static const Buckets b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                            0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};
  return b;
}
// Tokens per step (vLLM's iteration_tokens_total bounds).
const Buckets& StepTokenBuckets() {
  static const Buckets b = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
  return b;
}
// Sequences per step: powers of two.
const Buckets& StepSeqBuckets() {
  static const Buckets b = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  return b;
}
// 1, 2, 5, 10, 20, 50, ... up to `max` inclusive (vLLM's per-request token histograms end at
// the model's context length the same way).
Buckets OneTwoFive(int64_t max) {
  Buckets b;
  for (int64_t scale = 1; scale <= max; scale *= 10) {
    for (int64_t m : {1, 2, 5}) {
      if (m * scale <= max) b.push_back(static_cast<double>(m * scale));
    }
  }
  if (b.empty()) b.push_back(1);
  return b;
}

double SecondsBetween(Metrics::Clock::time_point from, Metrics::Clock::time_point to) {
  return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

}  // namespace

std::string Metrics::ModelName(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty() && p.has_relative_path()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? path : name;
}

const char* Metrics::FinishedReasonLabel(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
    case v1::FINISH_REASON_EOS:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "abort";
    default:  // FINISH_REASON_ERROR (a request always ends with a reason)
      return "error";
  }
}

Metrics::Metrics(const std::string& model_name, int64_t context_length, int32_t workers_expected)
    : model_name_(model_name) {
  const prometheus::Labels model = {{"model_name", model_name_}};
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Labels(model).Register(registry_).Add(
        {});
  };
  auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Labels(model).Register(registry_).Add(
        {});
  };
  auto histogram = [&](const char* name, const char* help, const Buckets& buckets) {
    return &prometheus::BuildHistogram()
                .Name(name)
                .Help(help)
                .Labels(model)
                .Register(registry_)
                .Add({}, buckets);
  };
  // Help texts stay on one line without backslashes: prometheus-cpp 1.0.1 writes HELP unescaped.
  running_ = gauge("shardlm:num_requests_running", "Number of requests in the running batch.");
  waiting_ = gauge("shardlm:num_requests_waiting",
                   "Number of requests queued (including those held for a worker job).");
  kv_usage_ = gauge("shardlm:kv_cache_usage_perc",
                    "Fraction of the KV cache blocks in use (0 to 1; 0 without a worker job).");
  workers_attached_ =
      gauge("shardlm:workers_attached",
            "Worker ranks attached and loaded (tp x pp while a job serves, else 0).");
  workers_expected_ = gauge("shardlm:workers_expected", "Worker ranks a job must have (tp x pp).");
  workers_expected_->Set(workers_expected);
  prompt_tokens_ = counter("shardlm:prompt_tokens_total",
                           "Prompt tokens prefilled, counted once per request at its first token.");
  generation_tokens_ = counter("shardlm:generation_tokens_total",
                               "Generated tokens streamed to requests (their completion tokens).");
  prefix_queries_ =
      counter("shardlm:prefix_cache_queries_total",
              "Tokens looked up in the prefix cache (each admitted sequence's whole length).");
  prefix_hits_ = counter("shardlm:prefix_cache_hits_total",
                         "Tokens found in the prefix cache (their prefill skipped).");
  success_ = &prometheus::BuildCounter()
                  .Name("shardlm:request_success_total")
                  .Help("Requests finished, by finished_reason (stop, length, abort, error).")
                  .Labels(model)
                  .Register(registry_);
  // Every reason from the start, so that rate() sees the first request of each.
  for (const char* reason : {"stop", "length", "abort", "error"}) {
    success_->Add({{"finished_reason", reason}});
  }
  ttft_ = histogram("shardlm:time_to_first_token_seconds",
                    "Time from a request's arrival to its first generated token.", TtftBuckets());
  itl_ = histogram("shardlm:inter_token_latency_seconds",
                   "Time between consecutive generated tokens of a request.", InterTokenBuckets());
  e2e_ = histogram("shardlm:e2e_request_latency_seconds",
                   "Time from a request's arrival to its end.", RequestBuckets());
  queue_ = histogram("shardlm:request_queue_time_seconds",
                     "Time from a request's arrival to its first scheduling.", RequestBuckets());
  request_prompt_tokens_ =
      histogram("shardlm:request_prompt_tokens", "Prompt tokens of each finished request.",
                OneTwoFive(context_length));
  request_generation_tokens_ =
      histogram("shardlm:request_generation_tokens", "Generated tokens of each finished request.",
                OneTwoFive(context_length));
  step_seqs_ =
      histogram("shardlm:step_batch_size", "Sequences in each engine step.", StepSeqBuckets());
  step_tokens_ = histogram("shardlm:iteration_tokens_total",
                           "Tokens (prefill and decode) in each engine step.", StepTokenBuckets());
  step_time_ = histogram("shardlm:step_time_seconds",
                         "Wall time of each engine step, from plan sent to result received.",
                         StepTimeBuckets());
}

void Metrics::Scheduled(Clock::time_point arrival, Clock::time_point now) {
  queue_->Observe(SecondsBetween(arrival, now));
}

void Metrics::Token(int32_t prompt_tokens, Clock::time_point arrival,
                    std::optional<Clock::time_point> previous, Clock::time_point now) {
  generation_tokens_->Increment();
  if (previous) {
    itl_->Observe(SecondsBetween(*previous, now));
  } else {
    ttft_->Observe(SecondsBetween(arrival, now));
    prompt_tokens_->Increment(prompt_tokens);
  }
}

void Metrics::Finished(v1::FinishReason reason, int32_t prompt_tokens, int32_t completion_tokens,
                       Clock::time_point arrival, Clock::time_point now) {
  success_->Add({{"finished_reason", FinishedReasonLabel(reason)}}).Increment();
  e2e_->Observe(SecondsBetween(arrival, now));
  request_prompt_tokens_->Observe(prompt_tokens);
  request_generation_tokens_->Observe(completion_tokens);
}

void Metrics::Step(int64_t seqs, int64_t tokens, double seconds) {
  step_seqs_->Observe(static_cast<double>(seqs));
  step_tokens_->Observe(static_cast<double>(tokens));
  step_time_->Observe(seconds);
}

void Metrics::PrefixCache(int64_t queried_tokens, int64_t hit_tokens) {
  prefix_queries_->Increment(static_cast<double>(queried_tokens));
  prefix_hits_->Increment(static_cast<double>(hit_tokens));
}

void Metrics::Refresh(const EngineStats& stats) {
  running_->Set(stats.requests_running);
  waiting_->Set(stats.requests_waiting);
  kv_usage_->Set(stats.kv_blocks_total > 0
                     ? static_cast<double>(stats.kv_blocks_total - stats.kv_blocks_free) /
                           static_cast<double>(stats.kv_blocks_total)
                     : 0.0);
  workers_attached_->Set(stats.workers_attached);
}

std::string Metrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_.Collect());
}

}  // namespace shardlm::coordinator
