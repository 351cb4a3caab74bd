// A mixture of experts (random weights, Mixtral-like routing: 8 experts, top 2, renormalised)
// serving a batch of sequences, on one rank or split over the ranks of an MPI job, with the
// experts sliced by TP (--ep 1) or spread whole by expert parallelism (--ep = --tp): batched
// prefill, then batched greedy decode steps (one token of every sequence per step). Run by
// bench/moe_ep.sh:
//   mpirun -np 2 build/bin/moe_ep --tp 2 --ep 2 --threads 1 --sequences 32 ...
// Rank 0 prints a summary, the experts' load (tokens routed to each, summed over layers and steps,
// as counted by LlamaModel::expert_tokens on the ranks that run them) and one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "formats/random_weights.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"
#include "parallel/mpi_communicator.h"
#include "spdlog/cfg/env.h"
#include "spdlog/spdlog.h"

using namespace shardlm;

namespace {

int Die(const absl::Status& s) {
  std::fprintf(stderr, "moe_ep: %s\n", std::string(s.message()).c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}

double Ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
      .count();
}

// Sequences [first, first + count), each with `len` tokens from position `pos`; sequence s owns
// the cache blocks [s * blocks_per_seq, (s + 1) * blocks_per_seq).
BatchInput MakeStep(const std::vector<std::vector<int32_t>>& tokens, int first, int pos,
                    int blocks_per_seq) {
  BatchInput b;
  b.table_begin.push_back(0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int s = first + static_cast<int>(i);
    for (size_t t = 0; t < tokens[i].size(); ++t) {
      b.tokens.push_back(tokens[i][t]);
      b.positions.push_back(pos + static_cast<int32_t>(t));
      b.seq_index.push_back(static_cast<int32_t>(i));
    }
    b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
    for (int k = 0; k < blocks_per_seq; ++k) b.block_tables.push_back(s * blocks_per_seq + k);
    b.table_begin.push_back(static_cast<int32_t>(b.block_tables.size()));
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe_ep: batched prefill and decode of a mixture of experts over MPI ranks"};
  TinyModelSpec spec;
  spec.arch = Arch::kMixtral;
  spec.layers = 4;
  spec.hidden = 1024;
  spec.heads = 16;
  spec.kv_heads = 4;
  spec.intermediate = 1408;
  spec.vocab = 32000;
  spec.dtype = DType::kBF16;
  int tp = 1, ep = 1, threads = 1, sequences = 32, prompt_len = 32, decode_steps = 16;
  int prefill_seqs = 8, repeats = 3;
  int64_t experts = 8, top_k = 2;
  app.add_option("--tp", tp);
  app.add_option("--ep", ep);
  app.add_option("--layers", spec.layers);
  app.add_option("--hidden", spec.hidden);
  app.add_option("--heads", spec.heads);
  app.add_option("--kv-heads", spec.kv_heads);
  app.add_option("--expert-intermediate", spec.intermediate);
  app.add_option("--experts", experts);
  app.add_option("--top-k", top_k);
  app.add_option("--vocab", spec.vocab);
  app.add_option("--dtype", spec.dtype, "Weights: bf16 (default), f16 or f32")
      ->transform(CLI::CheckedTransformer(std::map<std::string, DType>{
          {"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}}));
  app.add_option("--threads", threads, "CPU threads per rank");
  app.add_option("--sequences", sequences, "Sequences in the batch");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--prefill-seqs", prefill_seqs, "Sequences per prefill step");
  app.add_option("--decode-steps", decode_steps);
  app.add_option("--repeats", repeats, "Measurements (the best is reported)");
  CLI11_PARSE(app, argc, argv);
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug: every step's tokens per expert

  auto session = MpiSession::Init(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "moe_ep: %s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  auto world = MpiCommunicator::World();
  if (!world.ok()) return Die(world.status());
  auto config = TinyModelConfig(spec);
  if (!config.ok()) return Die(config.status());
  config->num_experts = experts;
  config->experts_per_token = top_k;
  config->moe_intermediate_size = spec.intermediate;
  config->max_position_embeddings = prompt_len + decode_steps + 1;
  auto plan = MakeShardPlan(PlanInputFor(*config, tp, 1, {}, nullptr, ep));
  if (!plan.ok()) return Die(plan.status());
  auto ctx = ParallelContext::Create(*plan, std::shared_ptr<Communicator>(std::move(*world)));
  if (!ctx.ok()) return Die(ctx.status());
  const int rank = ctx->shard.rank;
  std::shared_ptr<Communicator> group = ctx->world;
  RandomWeightSource weights(*config, spec.seed, spec.dtype);
  auto backend = CreateCpuBackend(threads);
  auto loaded = LlamaModel::Load(*config, weights, *backend, std::move(*ctx));
  if (!loaded.ok()) return Die(loaded.status());
  LlamaModel& model = **loaded;
  std::fprintf(stderr, "rank %d: experts [%ld, %ld), %.1f MiB of weights\n", rank,
               model.parallel().shard.experts.begin, model.parallel().shard.experts.end,
               model.weight_bytes() / 1048576.0);

  constexpr int kBlock = 16;
  const int blocks_per_seq = (prompt_len + decode_steps + kBlock - 1) / kBlock;
  double best_prefill = 0, best_step_ms = 1e30;
  for (int r = 0; r < repeats; ++r) {
    PagedKvCache cache = model.NewPagedCache(kBlock, int64_t{sequences} * blocks_per_seq);
    std::vector<int32_t> last(sequences);
    // Prefill, prefill_seqs sequences per step.
    if (auto s = group->Barrier(); !s.ok()) return Die(s);
    auto start = std::chrono::steady_clock::now();
    for (int first = 0; first < sequences; first += prefill_seqs) {
      const int count = std::min(prefill_seqs, sequences - first);
      std::vector<std::vector<int32_t>> prompts(count);
      for (int i = 0; i < count; ++i) {
        for (int t = 0; t < prompt_len; ++t) {
          prompts[i].push_back(((first + i) * 7919 + t * 104729 + 13) % spec.vocab);
        }
      }
      auto logits = model.ForwardBatch(MakeStep(prompts, first, 0, blocks_per_seq), cache);
      if (!logits.ok()) return Die(logits.status());
      auto ids = model.LastStageArgmax(*logits);
      if (!ids.ok()) return Die(ids.status());
      std::copy(ids->begin(), ids->end(), last.begin() + first);
    }
    const double prefill_ms = Ms(start);
    best_prefill = std::max(best_prefill, sequences * prompt_len * 1000.0 / prefill_ms);
    // Decode: every sequence's token in each step.
    start = std::chrono::steady_clock::now();
    for (int step = 0; step < decode_steps; ++step) {
      std::vector<std::vector<int32_t>> tokens(sequences);
      for (int s = 0; s < sequences; ++s) tokens[s] = {last[s]};
      auto logits = model.ForwardBatch(MakeStep(tokens, 0, prompt_len + step, blocks_per_seq), cache);
      if (!logits.ok()) return Die(logits.status());
      auto ids = model.LastStageArgmax(*logits);
      if (!ids.ok()) return Die(ids.status());
      last = *ids;
    }
    best_step_ms = std::min(best_step_ms, Ms(start) / decode_steps);
  }

  // The experts' load: each rank counted its own experts' tokens (with ep 1 every rank runs a
  // slice of every expert and counts them all: take rank 0's).
  std::vector<int64_t> load(static_cast<size_t>(experts), 0);
  for (size_t i = 0; i < model.expert_tokens().size(); ++i) load[i % experts] += model.expert_tokens()[i];
  std::vector<int64_t> all(load.size() * group->size());
  if (auto s = group->AllGather(load.data(), all.data(), load.size() * sizeof(int64_t)); !s.ok()) {
    return Die(s);
  }
  std::vector<int64_t> total(load.size(), 0);
  for (int p = 0; p < (ep > 1 ? group->size() : 1); ++p) {
    for (size_t e = 0; e < load.size(); ++e) {
      const Range& held = model.parallel().plan.ranks[p].experts;
      const int64_t id = static_cast<int64_t>(e);
      if (ep == 1 || (held.begin <= id && id < held.end)) {
        total[e] += all[p * load.size() + e];
      }
    }
  }
  if (rank == 0) {
    const int64_t sum = std::accumulate(total.begin(), total.end(), int64_t{0});
    const int64_t most = *std::max_element(total.begin(), total.end());
    std::printf("tp=%d ep=%d threads/rank=%d, %d sequences: prefill %.1f tok/s, decode %.2f ms/step "
                "(%.1f tok/s)\n",
                tp, ep, threads, sequences, best_prefill, best_step_ms,
                sequences * 1000.0 / best_step_ms);
    std::printf("tokens per expert (all layers and steps):");
    for (int64_t t : total) std::printf(" %ld", t);
    std::printf("; busiest expert %.2fx the mean\n",
                sum > 0 ? static_cast<double>(most) * experts / static_cast<double>(sum) : 0.0);
    std::printf("{\"tp\":%d,\"ep\":%d,\"threads_per_rank\":%d,\"sequences\":%d,\"layers\":%ld,"
                "\"hidden\":%ld,\"experts\":%ld,\"top_k\":%ld,\"expert_intermediate\":%ld,"
                "\"dtype\":\"%s\",\"prefill_tok_s\":%.1f,\"decode_ms_per_step\":%.2f,"
                "\"decode_tok_s\":%.1f}\n",
                tp, ep, threads, sequences, spec.layers, spec.hidden, experts, top_k,
                spec.intermediate, std::string(DTypeName(spec.dtype)).c_str(), best_prefill,
                best_step_ms, sequences * 1000.0 / best_step_ms);
  }
  return 0;
}
