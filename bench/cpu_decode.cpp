// Greedy decode and prefill speed of the CPU backend on a Llama shape with random weights, through
// the served path (runtime/generator.h: the step engine over the paged KV cache).
//   build/bin/cpu_decode --hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 5632
//       --vocab 32000 --prompt-len 128 --decode-tokens 32 --threads 2 --dtype bf16
// Prints one summary line per phase, and a JSON line with every figure for bench/RESULTS.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/cpu/cpu_backend.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"

using namespace shardlm;

int main(int argc, char** argv) {
  CLI::App app{"cpu_decode: decode and prefill tok/s of the CPU backend (random weights)"};
  TinyModelSpec spec;
  spec.layers = 16;
  spec.hidden = 2048;
  spec.heads = 32;
  spec.kv_heads = 8;
  spec.intermediate = 5632;
  spec.vocab = 32000;
  spec.dtype = DType::kBF16;
  int prompt_len = 128, decode_tokens = 32, threads = 0, repeats = 3;
  app.add_option("--layers", spec.layers);
  app.add_option("--hidden", spec.hidden);
  app.add_option("--heads", spec.heads);
  app.add_option("--kv-heads", spec.kv_heads);
  app.add_option("--intermediate", spec.intermediate);
  app.add_option("--vocab", spec.vocab);
  app.add_option("--seed", spec.seed);
  app.add_option("--dtype", spec.dtype, "Checkpoint dtype of the weights (bf16/f16 stay 16-bit in the CPU backend)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, DType>{{"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}}));
  app.add_option("--prompt-len", prompt_len, "Prompt tokens for the prefill measurement");
  app.add_option("--decode-tokens", decode_tokens, "Tokens generated per decode measurement");
  app.add_option("--threads", threads, "CPU threads (0: all)");
  app.add_option("--repeats", repeats, "Measurements per phase (the best is reported)");
  CLI11_PARSE(app, argc, argv);

  auto config = TinyModelConfig(spec);
  if (!config.ok()) {
    std::fprintf(stderr, "cpu_decode: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  config->max_position_embeddings = prompt_len + decode_tokens + 1;
  RandomWeightSource weights(*config, spec.seed, spec.dtype);
  auto backend = CreateCpuBackend(threads);
  auto t0 = std::chrono::steady_clock::now();
  auto model = LlamaModel::Load(*config, weights, *backend);
  if (!model.ok()) {
    std::fprintf(stderr, "cpu_decode: %s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "weights: %.1f MiB in the backend (bf16/f16 kept 16-bit), generated+loaded in %.1f s\n",
               (*model)->weight_bytes() / 1048576.0, load_s);

  std::vector<int32_t> prompt(prompt_len);
  for (int i = 0; i < prompt_len; ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % spec.vocab);
  GenerateOptions options;
  options.stop_at_eos = false;
  double best_prefill = 0, best_decode = 0;
  for (int r = 0; r < repeats; ++r) {
    options.max_new_tokens = decode_tokens + 1;  // 1 from prefill + decode_tokens decode steps
    auto result = Generate(**model, prompt, options);
    if (!result.ok()) {
      std::fprintf(stderr, "cpu_decode: %s\n", std::string(result.status().message()).c_str());
      return 1;
    }
    const double prefill = prompt_len * 1000.0 / result->prefill_ms;
    const double decode = (result->tokens.size() - 1) * 1000.0 / result->decode_ms;
    std::fprintf(stderr, "run %d: prefill %.1f tok/s, decode %.2f tok/s\n", r, prefill, decode);
    best_prefill = std::max(best_prefill, prefill);
    best_decode = std::max(best_decode, decode);
  }
  std::printf("prefill: %.1f tok/s (%d-token prompt)\n", best_prefill, prompt_len);
  std::printf("decode:  %.2f tok/s (%.1f ms/token, batch 1)\n", best_decode, 1000.0 / best_decode);
  std::printf("{\"layers\":%ld,\"hidden\":%ld,\"heads\":%ld,\"kv_heads\":%ld,\"intermediate\":%ld,"
              "\"vocab\":%ld,\"threads\":%d,\"prompt_len\":%d,\"prefill_tok_s\":%.1f,"
              "\"decode_tok_s\":%.2f}\n",
              spec.layers, spec.hidden, spec.heads, spec.kv_heads, spec.intermediate, spec.vocab,
              threads, prompt_len, best_prefill, best_decode);
  return 0;
}
