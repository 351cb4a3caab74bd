// Host memory and speed of loading one rank's shard of a checkpoint, on the path `shardlm
// generate` and the worker take: OpenCheckpoint, the shard plan, StartParallel, SetUpBackend and
// LlamaModel::Load through the shard loader. No KV cache, no step: only the weights.
//   build/bin/load_memory --model /tmp/bf16-16x2048
//   mpirun -np 2 build/bin/load_memory --model /tmp/bf16-16x2048 --tp 2 --threads 1
// Every rank prints one JSON line: its weight bytes, the peak RSS of the process (VmHWM) and its
// anonymous / file-backed parts at the end (RssAnon, RssFile), the load time and GB/s.
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "formats/checkpoint_loader.h"
#include "model/llama.h"
#include "runtime/backend_setup.h"
#include "runtime/ranks.h"

using namespace shardlm;

namespace {

// A "<key>: <n> kB" line of /proc/self/status, in bytes (0 when absent).
uint64_t StatusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::string digits;
    for (char c : line.substr(key.size() + 1)) {
      if (c >= '0' && c <= '9') digits += c;
    }
    uint64_t kb = 0;
    return absl::SimpleAtoi(digits, &kb) ? kb * 1024 : 0;
  }
  return 0;
}

// CPU seconds of every thread of this process so far: next to the wall time, it shows how much
// of a slow load was waiting for a core (on a shared machine).
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

struct Loaded {
  OpenedCheckpoint checkpoint;
  BackendSetup setup;
  std::unique_ptr<LlamaModel> model;
};

absl::Status Run(const std::string& model_path, const cli::ParallelArgs& parallel,
                 const BackendOptions& backend_options, int threads) {
  const uint64_t hwm_start = StatusBytes("VmHWM");
  auto t0 = std::chrono::steady_clock::now();
  Loaded loaded;
  SHARDLM_ASSIGN_OR_RETURN(loaded.checkpoint, OpenCheckpoint(model_path));
  SHARDLM_ASSIGN_OR_RETURN(
      ShardPlan plan, cli::PlanFor(loaded.checkpoint.config, *loaded.checkpoint.weights, parallel));
  const double open_s = Seconds(t0);
  // MPI and the backend come up outside the timed part: they cost the same for any checkpoint.
  SHARDLM_ASSIGN_OR_RETURN(cli::ParallelRun run, cli::StartParallel(plan, threads));
  BackendOptions options = backend_options;
  options.threads = run.threads;
  SHARDLM_ASSIGN_OR_RETURN(loaded.setup, SetUpBackend(options, *run.context));
  const uint64_t rss_before = StatusBytes("VmRSS");
  auto t1 = std::chrono::steady_clock::now();
  const double cpu1 = CpuSeconds();
  absl::Status status;
  try {
    absl::StatusOr<std::unique_ptr<LlamaModel>> model = LlamaModel::Load(
        loaded.checkpoint.config, *loaded.checkpoint.weights, *loaded.setup.backend, *run.context);
    if (model.ok()) {
      loaded.model = *std::move(model);
    } else {
      status = model.status();
    }
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("loading failed: ", e.what()));
  }
  const double shard_s = Seconds(t1);
  const double shard_cpu_s = CpuSeconds() - cpu1;
  SHARDLM_RETURN_IF_ERROR(run.Agree(status));

  const RankShard& shard = loaded.model->parallel().shard;
  const uint64_t weights = loaded.model->weight_bytes();
  const uint64_t hwm = StatusBytes("VmHWM");
  const double load_s = open_s + shard_s;
  std::printf(
      "{\"rank\":%d,\"tp\":%d,\"pp\":%d,\"model\":\"%s\",\"backend\":\"%s\","
      "\"weight_bytes\":%llu,\"load_s\":%.3f,\"open_s\":%.3f,\"shard_s\":%.3f,\"shard_cpu_s\":%.3f,"
      "\"load_gb_s\":%.2f,\"vm_hwm_bytes\":%llu,\"hwm_over_weights\":%.3f,"
      "\"hwm_before_open_bytes\":%llu,\"rss_before_load_bytes\":%llu,\"rss_anon_bytes\":%llu,"
      "\"rss_file_bytes\":%llu}\n",
      shard.rank, plan.tp, plan.pp, model_path.c_str(), loaded.setup.description.c_str(),
      static_cast<unsigned long long>(weights), load_s, open_s, shard_s, shard_cpu_s,
      load_s > 0 ? weights / load_s / 1e9 : 0.0, static_cast<unsigned long long>(hwm),
      weights > 0 ? static_cast<double>(hwm) / weights : 0.0,
      static_cast<unsigned long long>(hwm_start), static_cast<unsigned long long>(rss_before),
      static_cast<unsigned long long>(StatusBytes("RssAnon")),
      static_cast<unsigned long long>(StatusBytes("RssFile")));
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"load_memory: peak host memory and speed of loading one rank's shard"};
  std::string model;
  cli::ParallelArgs parallel;
  BackendOptions backend;
  int threads = 0;
  app.add_option("--model", model, "A HF checkpoint directory or a .gguf file")->required();
  app.add_option("--threads", threads, "CPU threads per rank (0: the cores / the ranks here)");
  cli::AddParallelOptions(app, parallel);
  AddBackendOptions(app, backend);
  CLI11_PARSE(app, argc, argv);
  absl::Status status = Run(model, parallel, backend, threads);
  if (!status.ok()) {
    std::fprintf(stderr, "load_memory: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
