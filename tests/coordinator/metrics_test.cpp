// coordinator/metrics.h on its own: names and labels of the exposition, what each event moves,
// the finished_reason mapping and the gauges. The served numbers (tokens of real requests) are
// checked against the service in metrics_service_test.cpp.
#include "coordinator/metrics.h"

#include <chrono>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/coordinator/metrics_text.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;
using testing::MetricValue;
using testing::ParseMetricsText;

TEST(MetricsTest, ModelNameIsThePathsLastComponent) {
  EXPECT_EQ(Metrics::ModelName("tiny"), "tiny");
  EXPECT_EQ(Metrics::ModelName("models/SmolLM2-135M/"), "SmolLM2-135M");
  EXPECT_EQ(Metrics::ModelName("/data/llama.gguf"), "llama.gguf");
  EXPECT_EQ(Metrics::ModelName("/"), "/");
}

TEST(MetricsTest, FinishedReasonsAreVllms) {
  EXPECT_STREQ(Metrics::FinishedReasonLabel(v1::FINISH_REASON_STOP), "stop");
  EXPECT_STREQ(Metrics::FinishedReasonLabel(v1::FINISH_REASON_EOS), "stop");
  EXPECT_STREQ(Metrics::FinishedReasonLabel(v1::FINISH_REASON_LENGTH), "length");
  EXPECT_STREQ(Metrics::FinishedReasonLabel(v1::FINISH_REASON_CANCELLED), "abort");
  EXPECT_STREQ(Metrics::FinishedReasonLabel(v1::FINISH_REASON_ERROR), "error");
}

TEST(MetricsTest, EveryFamilyFromTheStartWithTheModelLabel) {
  Metrics m("SmolLM2", 2048, 4);
  const std::string text = m.Render();
  const auto samples = ParseMetricsText(text);
  ASSERT_FALSE(samples.empty()) << text;
  for (const auto& s : samples) {
    EXPECT_EQ(s.name.rfind("shardlm:", 0), 0u) << s.name;
    EXPECT_EQ(s.labels.count("model_name"), 1u) << s.name;
    EXPECT_EQ(s.labels.at("model_name"), "SmolLM2") << s.name;
  }
  for (const char* family :
       {"num_requests_running", "num_requests_waiting", "kv_cache_usage_perc", "workers_attached",
        "workers_expected", "prompt_tokens_total", "generation_tokens_total",
        "request_success_total", "time_to_first_token_seconds", "inter_token_latency_seconds",
        "e2e_request_latency_seconds", "request_queue_time_seconds", "request_prompt_tokens",
        "request_generation_tokens", "step_batch_size", "iteration_tokens_total",
        "step_time_seconds", "prefix_cache_queries_total", "prefix_cache_hits_total"}) {
    EXPECT_NE(text.find(std::string("# TYPE shardlm:") + family + " "), std::string::npos)
        << family;
  }
  EXPECT_NE(text.find("# TYPE shardlm:time_to_first_token_seconds histogram"), std::string::npos);
  EXPECT_NE(text.find("# TYPE shardlm:prompt_tokens_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE shardlm:num_requests_running gauge"), std::string::npos);
  EXPECT_EQ(MetricValue(samples, "shardlm:workers_expected"), 4);
  for (const char* reason : {"stop", "length", "abort", "error"}) {
    EXPECT_EQ(MetricValue(samples, "shardlm:request_success_total", {{"finished_reason", reason}}),
              0)
        << reason;
  }
  // The per-request token buckets end at the context length: 1, 2, 5, ... 1000, 2000.
  EXPECT_EQ(MetricValue(samples, "shardlm:request_prompt_tokens_bucket", {{"le", "2000"}}), 0);
  EXPECT_EQ(MetricValue(samples, "shardlm:request_prompt_tokens_bucket", {{"le", "+Inf"}}), 0);
}

TEST(MetricsTest, EventsMoveTheirSeries) {
  Metrics m("tiny", 512, 1);
  const Metrics::Clock::time_point t0 = Metrics::Clock::now();
  m.Scheduled(t0, t0 + 100ms);
  m.Token(7, t0, std::nullopt, t0 + 250ms);  // the first token: TTFT and the prompt
  m.Token(7, t0, t0 + 250ms, t0 + 300ms);    // the second: one inter-token gap
  m.Token(7, t0, t0 + 300ms, t0 + 320ms);
  m.Finished(v1::FINISH_REASON_EOS, 7, 3, t0, t0 + 400ms);
  m.Finished(v1::FINISH_REASON_CANCELLED, 2, 0, t0, t0 + 1s);
  m.Finished(v1::FINISH_REASON_ERROR, 2, 0, t0, t0 + 1s);
  m.Step(3, 17, 0.02);
  m.Step(1, 1, 0.004);
  m.PrefixCache(40, 32);
  m.PrefixCache(8, 0);

  const auto s = ParseMetricsText(m.Render());
  EXPECT_EQ(MetricValue(s, "shardlm:prefix_cache_queries_total"), 48);
  EXPECT_EQ(MetricValue(s, "shardlm:prefix_cache_hits_total"), 32);
  EXPECT_EQ(MetricValue(s, "shardlm:request_queue_time_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(MetricValue(s, "shardlm:request_queue_time_seconds_sum"), 0.1);
  EXPECT_EQ(MetricValue(s, "shardlm:prompt_tokens_total"), 7);  // once per request
  EXPECT_EQ(MetricValue(s, "shardlm:generation_tokens_total"), 3);
  EXPECT_EQ(MetricValue(s, "shardlm:time_to_first_token_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(MetricValue(s, "shardlm:time_to_first_token_seconds_sum"), 0.25);
  EXPECT_EQ(MetricValue(s, "shardlm:inter_token_latency_seconds_count"), 2);
  EXPECT_NEAR(MetricValue(s, "shardlm:inter_token_latency_seconds_sum"), 0.07, 1e-9);
  // Cumulative buckets: the 20 ms gap is under 25 ms, the 50 ms one is not.
  EXPECT_EQ(MetricValue(s, "shardlm:inter_token_latency_seconds_bucket", {{"le", "0.025"}}), 1);
  EXPECT_EQ(MetricValue(s, "shardlm:inter_token_latency_seconds_bucket", {{"le", "0.05"}}), 2);
  EXPECT_EQ(MetricValue(s, "shardlm:request_success_total", {{"finished_reason", "stop"}}), 1);
  EXPECT_EQ(MetricValue(s, "shardlm:request_success_total", {{"finished_reason", "length"}}), 0);
  EXPECT_EQ(MetricValue(s, "shardlm:request_success_total", {{"finished_reason", "abort"}}), 1);
  EXPECT_EQ(MetricValue(s, "shardlm:request_success_total", {{"finished_reason", "error"}}), 1);
  EXPECT_EQ(MetricValue(s, "shardlm:e2e_request_latency_seconds_count"), 3);
  EXPECT_DOUBLE_EQ(MetricValue(s, "shardlm:e2e_request_latency_seconds_sum"), 2.4);
  EXPECT_EQ(MetricValue(s, "shardlm:request_prompt_tokens_sum"), 11);
  EXPECT_EQ(MetricValue(s, "shardlm:request_generation_tokens_sum"), 3);
  EXPECT_EQ(MetricValue(s, "shardlm:step_batch_size_count"), 2);
  EXPECT_EQ(MetricValue(s, "shardlm:step_batch_size_sum"), 4);
  EXPECT_EQ(MetricValue(s, "shardlm:step_batch_size_bucket", {{"le", "2"}}), 1);
  EXPECT_EQ(MetricValue(s, "shardlm:step_batch_size_bucket", {{"le", "4"}}), 2);
  EXPECT_EQ(MetricValue(s, "shardlm:iteration_tokens_total_sum"), 18);
  EXPECT_EQ(MetricValue(s, "shardlm:step_time_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(MetricValue(s, "shardlm:step_time_seconds_sum"), 0.024);
  EXPECT_EQ(MetricValue(s, "shardlm:step_time_seconds_bucket", {{"le", "0.005"}}), 1);
}

TEST(MetricsTest, GaugesFollowTheEngineStats) {
  Metrics m("tiny", 512, 2);
  EngineStats stats;
  stats.kv_blocks_total = 10;
  stats.kv_blocks_free = 4;
  stats.workers_attached = 2;
  stats.requests_running = 3;
  stats.requests_waiting = 5;
  m.Refresh(stats);
  auto s = ParseMetricsText(m.Render());
  EXPECT_DOUBLE_EQ(MetricValue(s, "shardlm:kv_cache_usage_perc"), 0.6);
  EXPECT_EQ(MetricValue(s, "shardlm:workers_attached"), 2);
  EXPECT_EQ(MetricValue(s, "shardlm:workers_expected"), 2);
  EXPECT_EQ(MetricValue(s, "shardlm:num_requests_running"), 3);
  EXPECT_EQ(MetricValue(s, "shardlm:num_requests_waiting"), 5);
  m.Refresh(EngineStats{});  // no worker job: no cache
  s = ParseMetricsText(m.Render());
  EXPECT_EQ(MetricValue(s, "shardlm:kv_cache_usage_perc"), 0);
  EXPECT_EQ(MetricValue(s, "shardlm:workers_attached"), 0);
  EXPECT_EQ(MetricValue(s, "shardlm:num_requests_running"), 0);
}

}  // namespace
}  // namespace shardlm::coordinator
