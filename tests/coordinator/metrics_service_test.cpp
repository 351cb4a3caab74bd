// The coordinator's metrics (CoordinatorServer::MetricsText, served at GET /metrics) while the
// in-process service serves requests of known sizes to a fake worker job: the token counters
// move by exactly the tokens served, request_success_total by finish reason, the histograms
// count each request and token, and the gauges follow the batch, the queue, the KV cache and the
// job. The PrometheusClient* tests read the same text with prometheus_client's own parser
// (parse_metrics.py; skipped without the pip package) and are the ctest
// coordinator_metrics_parse_test.
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/metrics_text.h"
#include "tests/coordinator/service_fixture.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;
using testing::FakeWorker;
using testing::FakeWorkerOptions;
using testing::IdsRequest;
using testing::kNotServing;
using testing::MetricSample;
using testing::MetricValue;
using testing::Outcome;
using testing::ParseMetricsText;
using testing::Prompt;

using Samples = std::vector<MetricSample>;

class MetricsServiceTest : public testing::ServiceTest {
 protected:
  Samples Scrape() { return ParseMetricsText(server_->MetricsText()); }

  // Runs a request to its end; its outcome must be OK with the given finish reason.
  Outcome Run(const v1::GenerateRequest& req, v1::FinishReason finish) {
    Outcome o = Generate(req);
    EXPECT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.finish, finish);
    EXPECT_EQ(o.usage.prompt_tokens(), req.token_ids().ids_size());
    EXPECT_EQ(o.usage.completion_tokens(), static_cast<int>(o.ids.size()));
    return o;
  }

  bool Abort(const std::string& id) {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.set_request_id(id);
    v1::AbortResponse resp;
    EXPECT_TRUE(stub_->Abort(&ctx, req, &resp).ok());
    return resp.found();
  }
};

// How much `name` (with `labels`) moved from `before` to `after`.
double Delta(const Samples& before, const Samples& after, const std::string& name,
             const std::map<std::string, std::string>& labels = {}) {
  return MetricValue(after, name, labels) - MetricValue(before, name, labels);
}

// A request stopped by a stop token: the first token of its reference output (after the first)
// that did not occur before it, so that the stop comes exactly there. Sets `*completion` to the
// number of tokens it then generates.
v1::GenerateRequest StopTokenRequest(const std::vector<int32_t>& prompt, int* completion) {
  const std::vector<int32_t> ref = FakeWorker::Reference(prompt, 12);
  v1::GenerateRequest req = IdsRequest(prompt, 12);
  for (size_t k = 1; k < ref.size(); ++k) {
    if (std::find(ref.begin(), ref.begin() + k, ref[k]) == ref.begin() + k) {
      req.add_stop_token_ids(ref[k]);
      *completion = static_cast<int>(k) + 1;
      return req;
    }
  }
  ADD_FAILURE() << "the reference output repeats a single token";
  return req;
}

TEST_F(MetricsServiceTest, CountersMoveByExactlyTheTokensServed) {
  options_.max_running = 1;  // a second request waits while one runs
  StartServer();
  FakeWorkerOptions fo;
  fo.step_delay = 5ms;
  FakeWorker& worker = Attach(fo);

  const Samples start = Scrape();
  EXPECT_EQ(MetricValue(start, "shardlm:workers_attached"), 1);
  EXPECT_EQ(MetricValue(start, "shardlm:workers_expected"), 1);
  EXPECT_EQ(MetricValue(start, "shardlm:num_requests_running"), 0);
  EXPECT_EQ(MetricValue(start, "shardlm:num_requests_waiting"), 0);
  EXPECT_EQ(MetricValue(start, "shardlm:kv_cache_usage_perc"), 0);
  EXPECT_EQ(MetricValue(start, "shardlm:prompt_tokens_total"), 0);
  const int steps_before = worker.steps();

  // Sequential requests of known sizes: two end by length (one prompt in two chunks of at most
  // --max-batch-tokens 32), one at a stop token.
  int stop_completion = 0;
  std::vector<v1::GenerateRequest> reqs = {IdsRequest(Prompt(1, 5), 4),
                                           IdsRequest(Prompt(2, 40), 6),
                                           StopTokenRequest(Prompt(3, 9), &stop_completion)};
  std::vector<Outcome> outs;
  outs.push_back(Run(reqs[0], v1::FINISH_REASON_LENGTH));
  outs.push_back(Run(reqs[1], v1::FINISH_REASON_LENGTH));
  outs.push_back(Run(reqs[2], v1::FINISH_REASON_STOP));
  EXPECT_EQ(outs[2].usage.completion_tokens(), stop_completion);
  int prompt = 0, completion = 0, processed = 0;
  for (const Outcome& o : outs) {
    prompt += o.usage.prompt_tokens();
    completion += o.usage.completion_tokens();
    // Each prompt token and each generated token but the last went through a step.
    processed += o.usage.prompt_tokens() + o.usage.completion_tokens() - 1;
  }
  ASSERT_EQ(prompt, 54);

  const Samples served = Scrape();
  EXPECT_EQ(Delta(start, served, "shardlm:prompt_tokens_total"), prompt);
  EXPECT_EQ(Delta(start, served, "shardlm:generation_tokens_total"), completion);
  EXPECT_EQ(Delta(start, served, "shardlm:request_success_total", {{"finished_reason", "length"}}),
            2);
  EXPECT_EQ(Delta(start, served, "shardlm:request_success_total", {{"finished_reason", "stop"}}),
            1);
  EXPECT_EQ(Delta(start, served, "shardlm:request_success_total", {{"finished_reason", "abort"}}),
            0);
  EXPECT_EQ(Delta(start, served, "shardlm:request_success_total", {{"finished_reason", "error"}}),
            0);
  EXPECT_EQ(Delta(start, served, "shardlm:time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(Delta(start, served, "shardlm:inter_token_latency_seconds_count"), completion - 3);
  EXPECT_EQ(Delta(start, served, "shardlm:e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(Delta(start, served, "shardlm:request_queue_time_seconds_count"), 3);
  EXPECT_EQ(Delta(start, served, "shardlm:request_prompt_tokens_sum"), prompt);
  EXPECT_EQ(Delta(start, served, "shardlm:request_generation_tokens_sum"), completion);
  // Times: positive, and a request's first token comes before its end. Each step waits 5 ms on
  // the fake job, and each inter-token gap spans at least one step.
  const double ttft = Delta(start, served, "shardlm:time_to_first_token_seconds_sum");
  const double e2e = Delta(start, served, "shardlm:e2e_request_latency_seconds_sum");
  EXPECT_GT(ttft, 0);
  EXPECT_LE(ttft, e2e);
  EXPECT_GE(Delta(start, served, "shardlm:inter_token_latency_seconds_sum"),
            0.005 * (completion - 3));
  // One step per plan the job answered, each with one sequence (the requests ran one by one).
  const int steps = worker.steps() - steps_before;
  EXPECT_EQ(Delta(start, served, "shardlm:step_time_seconds_count"), steps);
  EXPECT_GE(Delta(start, served, "shardlm:step_time_seconds_sum"), 0.005 * steps);
  EXPECT_EQ(Delta(start, served, "shardlm:step_batch_size_count"), steps);
  EXPECT_EQ(Delta(start, served, "shardlm:step_batch_size_sum"), steps);
  EXPECT_EQ(Delta(start, served, "shardlm:iteration_tokens_total_sum"), processed);
  // Right after: nothing runs, waits or holds a block.
  EXPECT_EQ(MetricValue(served, "shardlm:num_requests_running"), 0);
  EXPECT_EQ(MetricValue(served, "shardlm:num_requests_waiting"), 0);
  EXPECT_EQ(MetricValue(served, "shardlm:kv_cache_usage_perc"), 0);

  // One long request runs, a second waits behind it (--max-running 1); the gauges say so. The
  // waiting one is aborted before it is ever scheduled (its prompt is never prefilled, so it is
  // not counted), then the running one.
  std::atomic<bool> streaming{false};
  v1::GenerateRequest running_req = IdsRequest(Prompt(4, 6), 400);
  running_req.set_request_id("running");
  v1::GenerateRequest waiting_req = IdsRequest(Prompt(5, 7), 400);
  waiting_req.set_request_id("waiting");
  Outcome running, waiting;
  std::thread t1([&] {
    running = Generate(running_req, [&](const Outcome&) {
      streaming = true;
      return true;
    });
  });
  while (!streaming) std::this_thread::sleep_for(1ms);
  std::thread t2([&] { waiting = Generate(waiting_req); });
  Samples busy;
  for (int i = 0; i < 500; ++i) {
    busy = Scrape();
    if (MetricValue(busy, "shardlm:num_requests_waiting") == 1) break;
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(MetricValue(busy, "shardlm:num_requests_waiting"), 1);
  EXPECT_EQ(MetricValue(busy, "shardlm:num_requests_running"), 1);
  const double usage = MetricValue(busy, "shardlm:kv_cache_usage_perc");
  EXPECT_GT(usage, 0);  // the running request's blocks, of 64
  EXPECT_LT(usage, 1);
  EXPECT_TRUE(Abort("waiting"));
  t2.join();
  EXPECT_TRUE(Abort("running"));
  t1.join();
  ASSERT_TRUE(running.status.ok()) << running.status.error_message();
  ASSERT_TRUE(waiting.status.ok()) << waiting.status.error_message();
  EXPECT_EQ(running.finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(waiting.finish, v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(waiting.usage.completion_tokens(), 0);
  EXPECT_GT(running.usage.completion_tokens(), 0);
  EXPECT_LT(running.usage.completion_tokens(), 400);

  const Samples aborted = Scrape();
  EXPECT_EQ(Delta(served, aborted, "shardlm:request_success_total", {{"finished_reason", "abort"}}),
            2);
  EXPECT_EQ(Delta(served, aborted, "shardlm:prompt_tokens_total"), 6);
  EXPECT_EQ(Delta(served, aborted, "shardlm:generation_tokens_total"),
            running.usage.completion_tokens());
  EXPECT_EQ(Delta(served, aborted, "shardlm:time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(Delta(served, aborted, "shardlm:inter_token_latency_seconds_count"),
            running.usage.completion_tokens() - 1);
  EXPECT_EQ(Delta(served, aborted, "shardlm:request_queue_time_seconds_count"), 1);
  EXPECT_EQ(Delta(served, aborted, "shardlm:e2e_request_latency_seconds_count"), 2);
  EXPECT_EQ(Delta(served, aborted, "shardlm:request_prompt_tokens_sum"), 13);
  EXPECT_EQ(MetricValue(aborted, "shardlm:num_requests_running"), 0);
  EXPECT_EQ(MetricValue(aborted, "shardlm:num_requests_waiting"), 0);
  EXPECT_EQ(MetricValue(aborted, "shardlm:kv_cache_usage_perc"), 0);

  // The job goes: no worker attached, no cache; the counters keep their values.
  worker.Kill();
  ASSERT_TRUE(WaitHealth(kNotServing, 10s));
  const Samples gone = Scrape();
  EXPECT_EQ(MetricValue(gone, "shardlm:workers_attached"), 0);
  EXPECT_EQ(MetricValue(gone, "shardlm:workers_expected"), 1);
  EXPECT_EQ(MetricValue(gone, "shardlm:kv_cache_usage_perc"), 0);
  EXPECT_EQ(Delta(aborted, gone, "shardlm:prompt_tokens_total"), 0);
  ExpectNoWorkerErrors();
}

// --- prometheus_client's parser (parse_metrics.py).

struct PythonParse {
  int code = -1;            // the script's exit code
  std::string diagnostics;  // its stderr
  nlohmann::json json;
};

PythonParse ParseWithPrometheusClient(const std::string& text) {
  std::string dir_template =
      (std::filesystem::temp_directory_path() / "shardlm-metrics-XXXXXX").string();
  PythonParse out;
  if (mkdtemp(dir_template.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << dir_template << " failed";
    return out;
  }
  const std::filesystem::path dir = dir_template;
  std::ofstream(dir / "metrics.txt") << text;
  const std::string script =
      std::string(SHARDLM_SOURCE_DIR) + "/tests/coordinator/parse_metrics.py";
  const std::string command = "python3 " + script + " " + (dir / "metrics.txt").string() + " > " +
                              (dir / "out.json").string() + " 2> " + (dir / "err.txt").string();
  const int status = std::system(command.c_str());
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::stringstream err;
  err << std::ifstream(dir / "err.txt").rdbuf();
  out.diagnostics = err.str();
  if (out.code == 0) {
    std::ifstream json(dir / "out.json");
    out.json = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    if (out.json.is_discarded()) ADD_FAILURE() << "parse_metrics.py printed no valid JSON";
  }
  std::filesystem::remove_all(dir);
  return out;
}

// The samples prometheus_client read, in the C++ reader's form.
Samples SamplesOf(const nlohmann::json& parsed) {
  Samples samples;
  for (const auto& family : parsed["families"]) {
    for (const auto& s : family["samples"]) {
      MetricSample sample;
      sample.name = s["name"].get<std::string>();
      for (const auto& [k, v] : s["labels"].items()) sample.labels[k] = v.get<std::string>();
      sample.value = s["value"].get<double>();
      samples.push_back(std::move(sample));
    }
  }
  return samples;
}

// Parses with prometheus_client, or skips the test (exit 77: no prometheus_client) / fails it.
#define PARSE_WITH_PROMETHEUS_CLIENT(var, text)                                      \
  PythonParse var = ParseWithPrometheusClient(text);                                 \
  if (var.code == 77) GTEST_SKIP() << var.diagnostics;                               \
  ASSERT_EQ(var.code, 0) << "parse_metrics.py failed on the coordinator's metrics: " \
                         << var.diagnostics << "\n--- the text:\n"                   \
                         << (text)

// Prefix caching through the service and a fake job (whose toy KV store checks every hit's
// blocks against the history sent): a prompt that shares 4 full blocks with an earlier one
// hits them and gets its reference output; the counters move by the tokens looked up and hit.
// A relaunched job starts with empty memory: the same prompt then hits nothing.
TEST_F(MetricsServiceTest, PrefixCacheHitsAreCountedAndChangeNoOutput) {
  StartServer();
  FakeWorkerOptions fo;
  Attach(fo);
  const std::vector<int32_t> a = Prompt(1, 20);  // 5 blocks of 4
  std::vector<int32_t> b(a.begin(), a.begin() + 16);
  b.insert(b.end(), {9, 8, 7});
  const Samples start = Scrape();
  EXPECT_EQ(MetricValue(start, "shardlm:prefix_cache_queries_total"), 0);
  EXPECT_EQ(MetricValue(start, "shardlm:prefix_cache_hits_total"), 0);
  EXPECT_EQ(Run(IdsRequest(a, 6), v1::FINISH_REASON_LENGTH).ids, FakeWorker::Reference(a, 6));
  EXPECT_EQ(Run(IdsRequest(b, 6), v1::FINISH_REASON_LENGTH).ids, FakeWorker::Reference(b, 6));
  const Samples served = Scrape();
  EXPECT_EQ(Delta(start, served, "shardlm:prefix_cache_queries_total"), 20 + 19);
  EXPECT_EQ(Delta(start, served, "shardlm:prefix_cache_hits_total"), 16);
  EXPECT_EQ(MetricValue(served, "shardlm:kv_cache_usage_perc"), 0);  // cached blocks are free
  const EngineStats stats = server_->engine().Stats();
  EXPECT_EQ(stats.prefix_cache_queries, 39);
  EXPECT_EQ(stats.prefix_cache_hits, 16);
  EXPECT_GE(stats.kv_blocks_cached, 5);
  const v1::ModelInfo info = Info();  // the same over GetModelInfo
  EXPECT_EQ(info.prefix_cache_queries(), 39);
  EXPECT_EQ(info.prefix_cache_hits(), 16);
  EXPECT_EQ(info.kv_blocks_cached(), stats.kv_blocks_cached);

  workers_.back()->Kill();
  ASSERT_TRUE(WaitHealth(kNotServing, 5s));
  Attach(fo);
  EXPECT_EQ(Run(IdsRequest(b, 6), v1::FINISH_REASON_LENGTH).ids, FakeWorker::Reference(b, 6));
  EXPECT_EQ(Delta(served, Scrape(), "shardlm:prefix_cache_hits_total"), 0);
  ExpectNoWorkerErrors();
}

// --no-prefix-caching: the same two prompts hit nothing and count nothing.
TEST_F(MetricsServiceTest, NoPrefixCachingCountsNoHits) {
  options_.prefix_caching = false;
  StartServer();
  Attach();
  const std::vector<int32_t> a = Prompt(1, 20);
  Run(IdsRequest(a, 3), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(Run(IdsRequest(a, 3), v1::FINISH_REASON_LENGTH).ids, FakeWorker::Reference(a, 3));
  const Samples after = Scrape();
  EXPECT_EQ(MetricValue(after, "shardlm:prefix_cache_queries_total"), 0);
  EXPECT_EQ(MetricValue(after, "shardlm:prefix_cache_hits_total"), 0);
  EXPECT_EQ(server_->engine().Stats().kv_blocks_cached, 0);
  ExpectNoWorkerErrors();
}

TEST_F(MetricsServiceTest, PrometheusClientParsesTheTextAndCountsTheTokensServed) {
  StartServer();
  FakeWorker& worker = Attach();
  const std::string text_before = server_->MetricsText();
  PARSE_WITH_PROMETHEUS_CLIENT(before, text_before);

  std::vector<Outcome> outs;
  for (int i = 0; i < 3; ++i) {
    Outcome o = Generate(IdsRequest(Prompt(10 + i, 3 + 11 * i), 2 + 3 * i));
    ASSERT_TRUE(o.status.ok()) << o.status.error_message();
    EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH);
    outs.push_back(o);
  }
  const std::string text_after = server_->MetricsText();
  PARSE_WITH_PROMETHEUS_CLIENT(after, text_after);

  // prometheus_client read every sample that the C++ reader finds, with the same values.
  const Samples ours = ParseMetricsText(text_after);
  const Samples theirs = SamplesOf(after.json);
  ASSERT_EQ(theirs.size(), ours.size());
  for (const MetricSample& s : ours) {
    EXPECT_EQ(MetricValue(theirs, s.name, s.labels), s.value) << s.name;
  }
  // The families' types as prometheus_client understood them (a counter's family name drops
  // "_total").
  std::map<std::string, std::string> types;
  for (const auto& family : after.json["families"]) {
    types[family["name"].get<std::string>()] = family["type"].get<std::string>();
  }
  EXPECT_EQ(types["shardlm:prompt_tokens"], "counter");
  EXPECT_EQ(types["shardlm:generation_tokens"], "counter");
  EXPECT_EQ(types["shardlm:request_success"], "counter");
  EXPECT_EQ(types["shardlm:num_requests_running"], "gauge");
  EXPECT_EQ(types["shardlm:kv_cache_usage_perc"], "gauge");
  EXPECT_EQ(types["shardlm:time_to_first_token_seconds"], "histogram");
  EXPECT_EQ(types["shardlm:step_time_seconds"], "histogram");

  // The counters moved by exactly the tokens served.
  int prompt = 0, completion = 0;
  for (const Outcome& o : outs) {
    prompt += o.usage.prompt_tokens();
    completion += o.usage.completion_tokens();
  }
  EXPECT_EQ(prompt, 3 + 14 + 25);
  EXPECT_EQ(completion, 2 + 5 + 8);
  const Samples b = SamplesOf(before.json);
  EXPECT_EQ(Delta(b, theirs, "shardlm:prompt_tokens_total", {{"model_name", "tiny"}}), prompt);
  EXPECT_EQ(Delta(b, theirs, "shardlm:generation_tokens_total", {{"model_name", "tiny"}}),
            completion);
  EXPECT_EQ(Delta(b, theirs, "shardlm:request_success_total",
                  {{"model_name", "tiny"}, {"finished_reason", "length"}}),
            3);
  EXPECT_EQ(Delta(b, theirs, "shardlm:time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(Delta(b, theirs, "shardlm:inter_token_latency_seconds_count"), completion - 3);
  EXPECT_EQ(Delta(b, theirs, "shardlm:e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(Delta(b, theirs, "shardlm:time_to_first_token_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_EQ(MetricValue(theirs, "shardlm:workers_attached"), 1);
  EXPECT_EQ(MetricValue(theirs, "shardlm:num_requests_running"), 0);
  ExpectNoWorkerErrors();
  (void)worker;
}

// parse_metrics.py fails (and so would the test above) on text prometheus_client cannot read.
TEST(MetricsParseScriptTest, PrometheusClientRejectsAMalformedText) {
  PythonParse good = ParseWithPrometheusClient("# TYPE x counter\nx_total 3\n");
  if (good.code == 77) GTEST_SKIP() << good.diagnostics;
  ASSERT_EQ(good.code, 0) << good.diagnostics;
  EXPECT_EQ(MetricValue(SamplesOf(good.json), "x_total"), 3);
  PythonParse bad = ParseWithPrometheusClient("# TYPE x counter\nx_total{le=\"1\" 3\n");
  EXPECT_EQ(bad.code, 1) << bad.diagnostics;
  EXPECT_THAT(bad.diagnostics, ::testing::HasSubstr("cannot parse"));
}

}  // namespace
}  // namespace shardlm::coordinator
