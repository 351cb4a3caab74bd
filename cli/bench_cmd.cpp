// `shardlm bench --server ADDR`: load test of a running coordinator. N requests of random
// token-id prompts (L ids drawn from [100, 1000) with a fixed seed), greedy, ignore_eos, O new
// tokens each, C of them in flight at once (one thread per in-flight request, one shared
// channel). TTFT is send -> first message carrying ids; inter-token latencies come from message
// arrival times (ids within one message share its time: the first gets the gap since the previous
// message, the others 0). Prints a table, then one JSON line (the last stdout line).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/client_common.h"
#include "cli/commands.h"
#include "nlohmann/json.hpp"

namespace shardlm::cli {

namespace {

struct BenchArgs {
  std::string server;
  int concurrency = 8;
  int requests = 64;
  int input_len = 128;
  int output_len = 128;
  uint64_t seed = 1234;
  int64_t timeout_ms = 0;
  ClientSecurityFlags security;
};

struct RequestStats {
  bool ok = false;
  std::string error;
  double ttft_ms = -1;
  double e2e_ms = 0;
  int prompt_tokens = 0;
  int output_tokens = 0;
  std::vector<double> itl_ms;
};

// Linear interpolation between closest ranks (numpy's default); NaN when empty.
double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double pos = p / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

double Mean(const std::vector<double>& v) {
  if (v.empty()) return std::nan("");
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

nlohmann::json Num(double x, int digits = 3) {
  if (!std::isfinite(x)) return nullptr;
  const double scale = std::pow(10.0, digits);
  return std::round(x * scale) / scale;
}

RequestStats RunOne(shardlm::v1::Generation::Stub& stub, const std::vector<int32_t>& prompt,
                    const BenchArgs& args) {
  shardlm::v1::GenerateRequest request;
  request.set_request_id(NewRequestId("bench"));
  request.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  request.mutable_sampling()->set_temperature(0);
  request.set_max_new_tokens(args.output_len);
  request.set_ignore_eos(true);

  RequestStats stats;
  const Clock::time_point start = Clock::now();
  Clock::time_point last;
  bool seen = false;
  StreamOutcome outcome = StreamGenerate(
      stub, request, args.timeout_ms, [&](const shardlm::v1::GenerateResponse& m) {
        const int n = m.token_ids_size();
        if (n == 0) return;
        const Clock::time_point now = Clock::now();
        if (!seen) {
          stats.ttft_ms = std::chrono::duration<double, std::milli>(now - start).count();
          seen = true;
          for (int i = 1; i < n; ++i) stats.itl_ms.push_back(0.0);
        } else {
          stats.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
          for (int i = 1; i < n; ++i) stats.itl_ms.push_back(0.0);
        }
        last = now;
      });
  stats.e2e_ms = outcome.client_total_ms;
  stats.output_tokens = static_cast<int>(outcome.ids.size());
  stats.prompt_tokens = outcome.has_usage ? outcome.usage.prompt_tokens()
                                          : static_cast<int>(prompt.size());
  if (!outcome.status.ok()) {
    stats.error = StatusCodeName(outcome.status.error_code()) + ": " +
                  outcome.status.error_message();
  } else if (outcome.finish_reason == shardlm::v1::FINISH_REASON_ERROR) {
    stats.error = "generation failed: " + outcome.error;
  } else if (outcome.finish_reason != shardlm::v1::FINISH_REASON_LENGTH) {
    stats.error = "finished with '" + FinishReasonName(outcome.finish_reason) + "' after " +
                  std::to_string(stats.output_tokens) + " tokens, expected 'length'";
  } else {
    stats.ok = true;
  }
  return stats;
}

int RunBench(const BenchArgs& args) {
  if (args.concurrency < 1 || args.requests < 1 || args.input_len < 1 || args.output_len < 1) {
    return Fail("bench", "--concurrency, --requests, --input-len and --output-len must be >= 1");
  }
  auto channel = MakeChannel(args.server, args.security);
  if (!channel.ok()) return Fail("bench", std::string(channel.status().message()));
  auto stub = shardlm::v1::Generation::NewStub(*channel);
  shardlm::v1::ModelInfo info;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status status = stub->GetModelInfo(&context, {}, &info);
    if (!status.ok()) return FailRpc("bench", status);
  }
  if (info.vocab_size() > 0 && info.vocab_size() < 1000) {
    return Fail("bench", absl::StrCat("prompt ids are drawn from [100, 1000) but the model's "
                                      "vocabulary has ", info.vocab_size(), " tokens"));
  }
  if (info.context_length() > 0 &&
      static_cast<int64_t>(args.input_len) + args.output_len > info.context_length()) {
    return Fail("bench", absl::StrCat("--input-len + --output-len = ",
                                      args.input_len + args.output_len,
                                      " exceeds the model's context length ",
                                      info.context_length()));
  }

  // All prompts up front, from one seeded generator: the same arguments give the same prompts.
  std::mt19937_64 rng(args.seed);
  std::uniform_int_distribution<int32_t> id_dist(100, 999);
  std::vector<std::vector<int32_t>> prompts(args.requests);
  for (auto& p : prompts) {
    p.resize(args.input_len);
    for (int32_t& id : p) id = id_dist(rng);
  }

  std::vector<RequestStats> stats(args.requests);
  std::atomic<int> next{0};
  const int threads = std::min(args.concurrency, args.requests);
  std::fprintf(stderr, "bench: %d requests (%d + %d tokens) to %s, %d in flight\n", args.requests,
               args.input_len, args.output_len, args.server.c_str(), threads);
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < args.requests; i = next.fetch_add(1)) {
        stats[i] = RunOne(*stub, prompts[i], args);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  const double total_s = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, itl, e2e;
  int64_t in_tokens = 0, out_tokens = 0;
  int errors = 0;
  std::vector<std::string> first_errors;
  for (const RequestStats& s : stats) {
    if (!s.ok) {
      ++errors;
      if (first_errors.size() < 5) first_errors.push_back(s.error);
      continue;
    }
    in_tokens += s.prompt_tokens;
    out_tokens += s.output_tokens;
    if (s.ttft_ms >= 0) ttft.push_back(s.ttft_ms);
    itl.insert(itl.end(), s.itl_ms.begin(), s.itl_ms.end());
    e2e.push_back(s.e2e_ms);
  }
  for (const std::string& e : first_errors) std::fprintf(stderr, "bench: request failed: %s\n", e.c_str());

  const double out_tps = out_tokens / total_s;
  const double total_tps = (in_tokens + out_tokens) / total_s;
  std::printf("model               %s (tp %d, pp %d, ep %d)\n", info.model().c_str(), info.tp(),
              info.pp(), std::max(info.ep(), 1));
  std::printf("requests            %d (%d errors), concurrency %d\n", args.requests, errors,
              args.concurrency);
  std::printf("input / output len  %d / %d tokens\n", args.input_len, args.output_len);
  std::printf("total time          %.3f s\n", total_s);
  std::printf("output throughput   %.2f tok/s\n", out_tps);
  std::printf("total throughput    %.2f tok/s (input + output)\n", total_tps);
  std::printf("%-18s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50", "p99", "max");
  auto row = [](const char* name, const std::vector<double>& v) {
    std::printf("%-18s %10.2f %10.2f %10.2f %10.2f\n", name, Mean(v), Percentile(v, 50),
                Percentile(v, 99), Percentile(v, 100));
  };
  row("TTFT", ttft);
  row("ITL", itl);
  row("end-to-end", e2e);

  nlohmann::json j;
  j["requests"] = args.requests;
  j["concurrency"] = args.concurrency;
  j["input_len"] = args.input_len;
  j["output_len"] = args.output_len;
  j["total_s"] = Num(total_s);
  j["output_tok_s"] = Num(out_tps, 2);
  j["total_tok_s"] = Num(total_tps, 2);
  j["ttft_p50_ms"] = Num(Percentile(ttft, 50));
  j["ttft_p99_ms"] = Num(Percentile(ttft, 99));
  j["itl_p50_ms"] = Num(Percentile(itl, 50));
  j["itl_p99_ms"] = Num(Percentile(itl, 99));
  j["e2e_p50_ms"] = Num(Percentile(e2e, 50));
  j["errors"] = errors;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  return errors == 0 ? 0 : 1;
}

}  // namespace

RunFn AddBenchCommand(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  app.add_option("--server", args->server, "Coordinator address HOST:PORT")->required();
  app.add_option("--concurrency", args->concurrency, "Requests in flight at once")
      ->default_val(8);
  app.add_option("--requests", args->requests, "Requests in all")->default_val(64);
  app.add_option("--input-len", args->input_len, "Prompt token ids per request")
      ->default_val(128);
  app.add_option("--output-len", args->output_len, "New tokens per request (greedy, ignore_eos)")
      ->default_val(128);
  app.add_option("--seed", args->seed, "Seed of the random prompts")->default_val(1234);
  app.add_option("--timeout-ms", args->timeout_ms, "Deadline of each request (0: none)")
      ->default_val(0);
  AddClientSecurityOptions(app, args->security);
  return [args]() -> int { return RunBench(*args); };
}

}  // namespace shardlm::cli
