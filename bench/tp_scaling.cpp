// Decode and prefill speed of one Llama shape (random weights) split over the ranks of an MPI job
// (tensor and/or pipeline parallel), to measure what splitting and all-reducing cost. Run by
// bench/tp_scaling.sh as tp=1 with 2 threads and as tp=2 with 1 thread per rank:
//   mpirun -np 2 build/bin/tp_scaling --tp 2 --threads 1 --hidden 4096 --layers 8 ...
// Rank 0 prints a summary and one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/cpu/cpu_backend.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "parallel/mpi_communicator.h"

using namespace shardlm;

namespace {
int Die(const absl::Status& s) {
  std::fprintf(stderr, "tp_scaling: %s\n", std::string(s.message()).c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tp_scaling: decode ms/token and prefill tok/s of a model split over MPI ranks"};
  TinyModelSpec spec;
  spec.layers = 8;
  spec.hidden = 4096;
  spec.heads = 32;
  spec.kv_heads = 8;
  spec.intermediate = 11008;
  spec.vocab = 32000;
  spec.dtype = DType::kBF16;
  int tp = 1, pp = 1, threads = 1, prompt_len = 128, decode_tokens = 16, repeats = 3;
  app.add_option("--tp", tp);
  app.add_option("--pp", pp);
  app.add_option("--layers", spec.layers);
  app.add_option("--hidden", spec.hidden);
  app.add_option("--heads", spec.heads);
  app.add_option("--kv-heads", spec.kv_heads);
  app.add_option("--intermediate", spec.intermediate);
  app.add_option("--vocab", spec.vocab);
  app.add_option("--dtype", spec.dtype, "Weights: bf16 (default), f16 or f32")
      ->transform(CLI::CheckedTransformer(std::map<std::string, DType>{
          {"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}}));
  app.add_option("--threads", threads, "CPU threads per rank");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--decode-tokens", decode_tokens);
  app.add_option("--repeats", repeats, "Measurements per phase (the best is reported)");
  CLI11_PARSE(app, argc, argv);

  auto session = MpiSession::Init(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "tp_scaling: %s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  int code = 0;
  {
    auto world = MpiCommunicator::World();
    if (!world.ok()) return Die(world.status());
    auto config = TinyModelConfig(spec);
    if (!config.ok()) return Die(config.status());
    config->max_position_embeddings = prompt_len + decode_tokens + 1;
    auto plan = MakeShardPlan(PlanInputFor(*config, tp, pp));
    if (!plan.ok()) return Die(plan.status());
    auto ctx = ParallelContext::Create(*plan, std::shared_ptr<Communicator>(std::move(*world)));
    if (!ctx.ok()) return Die(ctx.status());
    const int rank = ctx->shard.rank;
    RandomWeightSource weights(*config, spec.seed, spec.dtype);
    auto backend = CreateCpuBackend(threads);
    auto model = LlamaModel::Load(*config, weights, *backend, std::move(*ctx));
    if (!model.ok()) return Die(model.status());
    std::fprintf(stderr, "rank %d: %.1f MiB of weights\n", rank, (*model)->weight_bytes() / 1048576.0);

    std::vector<int32_t> prompt(prompt_len);
    for (int i = 0; i < prompt_len; ++i) prompt[i] = (i * 7919 + 13) % spec.vocab;
    GenerateOptions options;
    options.stop_at_eos = false;
    options.max_new_tokens = decode_tokens + 1;
    double best_prefill = 0, best_decode_ms = 1e30;
    for (int r = 0; r < repeats; ++r) {
      auto result = Generate(**model, prompt, options);
      if (!result.ok()) return Die(result.status());
      best_prefill = std::max(best_prefill, prompt_len * 1000.0 / result->prefill_ms);
      best_decode_ms = std::min(best_decode_ms, result->decode_ms / (result->tokens.size() - 1));
    }
    if (rank == 0) {
      std::printf("tp=%d pp=%d threads/rank=%d: prefill %.1f tok/s (%d tokens), decode %.1f ms/token\n",
                  tp, pp, threads, best_prefill, prompt_len, best_decode_ms);
      std::printf("{\"tp\":%d,\"pp\":%d,\"threads_per_rank\":%d,\"layers\":%ld,\"hidden\":%ld,"
                  "\"intermediate\":%ld,\"vocab\":%ld,\"dtype\":\"%s\",\"prefill_tok_s\":%.1f,"
                  "\"decode_ms_per_token\":%.2f}\n",
                  tp, pp, threads, spec.layers, spec.hidden, spec.intermediate, spec.vocab,
                  std::string(DTypeName(spec.dtype)).c_str(), best_prefill, best_decode_ms);
    }
  }
  return code;
}
