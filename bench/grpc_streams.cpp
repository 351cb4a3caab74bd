// Many concurrent Generate streams against a running coordinator (bench/grpc_streams.sh starts
// one with a worker job): opens --streams calls at once over --channels connections with the
// callback client API (no thread per stream here either), reads each to its end, and reports
// errors, completed streams, tokens and wall time. With --pid, samples /proc/PID/status of the
// coordinator (Threads:, VmRSS:) before, during and --settle-s after the run. Prints a summary
// and one JSON line last.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "shardlm/v1/generation.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

// Threads: and VmRSS (KiB) of a process; {-1, -1} when it is gone.
struct ProcSample {
  long threads = -1;
  long rss_kib = -1;
};

ProcSample SampleProc(int pid) {
  ProcSample s;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) s.threads = std::stol(line.substr(8));
    if (line.rfind("VmRSS:", 0) == 0) s.rss_kib = std::stol(line.substr(6));
  }
  return s;
}

// What every stream reports when it ends.
class Tally {
 public:
  explicit Tally(int expected) : expected_(expected) {}
  void Done(const grpc::Status& status, int tokens, int want_tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok()) {
      ++errors_;
      ++error_kinds_[std::to_string(status.error_code()) + " " + status.error_message()];
    } else if (tokens != want_tokens) {
      ++short_;
    } else {
      ++completed_;
    }
    tokens_ += tokens;
    if (++done_ == expected_) cv_.notify_all();
  }
  bool WaitAll(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_ == expected_; });
  }
  int done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  const int expected_;
  int done_ = 0, completed_ = 0, errors_ = 0, short_ = 0;
  long tokens_ = 0;
  std::map<std::string, int> error_kinds_;
};

class Call final : public grpc::ClientReadReactor<shardlm::v1::GenerateResponse> {
 public:
  Call(shardlm::v1::Generation::Stub& stub, const shardlm::v1::GenerateRequest& request,
       std::chrono::seconds deadline, Tally& tally)
      : request_(request), tally_(tally) {
    ctx_.set_deadline(std::chrono::system_clock::now() + deadline);
    stub.async()->Generate(&ctx_, &request_, this);
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    tokens_ += response_.token_ids_size();
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    tally_.Done(status, tokens_, request_.max_new_tokens());
    delete this;
  }

 private:
  grpc::ClientContext ctx_;
  const shardlm::v1::GenerateRequest request_;
  shardlm::v1::GenerateResponse response_;
  Tally& tally_;
  int tokens_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"grpc_streams: N concurrent Generate streams against a coordinator"};
  std::string server = "127.0.0.1:50051";
  int streams = 1000, channels = 8, max_new = 16, prompt_len = 8, pid = 0, vocab = 256;
  int wait_serving_s = 120, deadline_s = 600;
  double settle_s = 2.0;
  app.add_option("--server", server, "HOST:PORT of the coordinator")->default_val(server);
  app.add_option("--streams", streams, "Concurrent Generate calls")->default_val(streams);
  app.add_option("--channels", channels, "gRPC connections the calls are spread over")
      ->default_val(channels);
  app.add_option("--max-new-tokens", max_new, "Tokens per stream (EOS ignored)")
      ->default_val(max_new);
  app.add_option("--prompt-len", prompt_len, "Prompt ids per stream")->default_val(prompt_len);
  app.add_option("--vocab", vocab, "Prompt ids are drawn below this")->default_val(vocab);
  app.add_option("--pid", pid, "Coordinator pid to sample /proc/PID/status of (0: none)");
  app.add_option("--settle-s", settle_s, "Seconds after the last stream before the 'after' sample")
      ->default_val(settle_s);
  app.add_option("--wait-serving-s", wait_serving_s,
                 "Seconds to wait for a worker job to be attached first")
      ->default_val(wait_serving_s);
  app.add_option("--deadline-s", deadline_s, "Deadline of every call")->default_val(deadline_s);
  CLI11_PARSE(app, argc, argv);

  std::vector<std::unique_ptr<shardlm::v1::Generation::Stub>> stubs;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
    stubs.push_back(shardlm::v1::Generation::NewStub(
        grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args)));
  }
  // Wait for a serving worker job.
  const auto wait_end = Clock::now() + std::chrono::seconds(wait_serving_s);
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    shardlm::v1::ModelInfo info;
    if (stubs[0]->GetModelInfo(&ctx, {}, &info).ok() && info.workers_attached() > 0) break;
    if (Clock::now() > wait_end) {
      std::fprintf(stderr, "grpc_streams: no worker job attached within %d s\n", wait_serving_s);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  const ProcSample before = pid > 0 ? SampleProc(pid) : ProcSample{};
  ProcSample peak = before;
  std::atomic<bool> sampling{pid > 0};
  std::thread sampler([&] {
    while (sampling) {
      const ProcSample s = SampleProc(pid);
      peak.threads = std::max(peak.threads, s.threads);
      peak.rss_kib = std::max(peak.rss_kib, s.rss_kib);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });

  Tally tally(streams);
  const auto t0 = Clock::now();
  for (int i = 0; i < streams; ++i) {
    shardlm::v1::GenerateRequest req;
    for (int j = 0; j < prompt_len; ++j)
      req.mutable_token_ids()->add_ids((31 * i + 7 * j + 3) % vocab);
    req.set_max_new_tokens(max_new);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0.0f);
    new Call(*stubs[i % channels], req, std::chrono::seconds(deadline_s), tally);
  }
  const bool all = tally.WaitAll(std::chrono::seconds(deadline_s + 30));
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  sampling = false;
  sampler.join();
  std::this_thread::sleep_for(std::chrono::duration<double>(settle_s));
  const ProcSample after = pid > 0 ? SampleProc(pid) : ProcSample{};

  std::lock_guard<std::mutex> lock(tally.mu_);
  std::printf(
      "streams %d: completed %d, errors %d, short %d, unfinished %d; tokens %ld; "
      "wall %.2f s (%.0f tokens/s)\n",
      streams, tally.completed_, tally.errors_, tally.short_, streams - tally.done_, tally.tokens_,
      wall_s, tally.tokens_ / wall_s);
  for (const auto& [kind, n] : tally.error_kinds_)
    std::printf("  error x%d: %s\n", n, kind.c_str());
  if (pid > 0) {
    std::printf(
        "coordinator pid %d: threads before %ld, peak during %ld, after %ld; "
        "RSS before %.1f MiB, peak during %.1f MiB, after %.1f MiB\n",
        pid, before.threads, peak.threads, after.threads, before.rss_kib / 1024.0,
        peak.rss_kib / 1024.0, after.rss_kib / 1024.0);
  }
  std::printf(
      "{\"streams\": %d, \"completed\": %d, \"errors\": %d, \"short\": %d, \"tokens\": %ld, "
      "\"wall_s\": %.3f, \"threads_before\": %ld, \"threads_peak\": %ld, \"threads_after\": %ld, "
      "\"rss_kib_before\": %ld, \"rss_kib_peak\": %ld, \"rss_kib_after\": %ld}\n",
      streams, tally.completed_, tally.errors_, tally.short_, tally.tokens_, wall_s, before.threads,
      peak.threads, after.threads, before.rss_kib, peak.rss_kib, after.rss_kib);
  return all && tally.completed_ == streams ? 0 : 1;
}
