// Long-context speed of the CPU backend on a real checkpoint (issue 14, item 4), through
// LlamaModel::ForwardBatch over the paged KV cache as the worker runs it:
// - decode: tok/s of B sequences stepping one token each with C tokens of context, for every
//   (B, C) asked for. One sequence's C-token prompt is prefilled once and its K/V rows are copied
//   into every other sequence's own blocks (so each reads its own memory, as in serving);
// - prefill: the time of each chunk of a long prompt run in fixed-size chunks.
//   build/bin/long_context --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
// Prints one line per figure, medians over --repeats (runs interleaved, so that a change in the
// machine's load hits every figure alike), and a JSON line with them all.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "formats/checkpoint_loader.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"

using namespace shardlm;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int32_t TokenAt(int64_t i, int64_t vocab) { return static_cast<int32_t>((i * 7919 + 13) % vocab); }

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs positions [begin, end) of sequence 0 (blocks 0, 1, ... of the cache) as one step; the
// logits of its last token are asked for, as the engine does for a prompt's chunks.
absl::Status PrefillChunk(LlamaModel& model, PagedKvCache& cache, int64_t begin, int64_t end,
                          int64_t blocks) {
  BatchInput batch;
  for (int64_t p = begin; p < end; ++p) {
    batch.tokens.push_back(TokenAt(p, model.config().vocab_size));
    batch.positions.push_back(static_cast<int32_t>(p));
    batch.seq_index.push_back(0);
  }
  batch.table_begin = {0, static_cast<int32_t>(blocks)};
  for (int64_t b = 0; b < blocks; ++b) batch.block_tables.push_back(static_cast<int32_t>(b));
  batch.logit_rows = {static_cast<int32_t>(end - begin - 1)};
  return model.ForwardBatch(batch, cache).status();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"long_context: decode and prefill speed of the CPU backend as the context grows"};
  std::string model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int threads = 2, repeats = 3, decode_steps = 16, chunk = 512, prefill_len = 6000;
  std::vector<int> contexts = {16, 2048}, batches = {1, 16};
  bool skip_prefill = false, skip_decode = false;
  app.add_option("--model", model_path, "HF directory or .gguf file");
  app.add_option("--threads", threads, "CPU threads");
  app.add_option("--repeats", repeats, "Measurements per figure (the median is reported)");
  app.add_option("--contexts", contexts, "Context lengths for decode");
  app.add_option("--batches", batches, "Decode batch sizes");
  app.add_option("--decode-steps", decode_steps, "Decode steps timed per measurement");
  app.add_option("--prefill-len", prefill_len, "Prompt length for the chunked prefill");
  app.add_option("--chunk", chunk, "Prefill chunk (tokens per step)");
  app.add_flag("--skip-prefill", skip_prefill);
  app.add_flag("--skip-decode", skip_decode);
  CLI11_PARSE(app, argc, argv);

  auto checkpoint = OpenCheckpoint(model_path);
  if (!checkpoint.ok()) {
    std::fprintf(stderr, "long_context: %s\n", std::string(checkpoint.status().message()).c_str());
    return 1;
  }
  auto backend = CreateCpuBackend(threads);
  auto loaded = LlamaModel::Load(checkpoint->config, *checkpoint->weights, *backend);
  if (!loaded.ok()) {
    std::fprintf(stderr, "long_context: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  LlamaModel& model = **loaded;
  constexpr int kBlock = 16;
  const int64_t vocab = model.config().vocab_size;
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "long_context: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  std::string json = "{\"threads\":" + std::to_string(threads);

  if (!skip_decode) {
    const int max_batch = *std::max_element(batches.begin(), batches.end());
    // Per context: a cache of max_batch sequences of blocks_per_seq blocks each.
    struct Setup {
      int context;
      int64_t blocks_per_seq;
      PagedKvCache cache;
    };
    std::vector<Setup> setups;
    for (int c : contexts) {
      const int64_t blocks_per_seq = (c + decode_steps + kBlock - 1) / kBlock;
      Setup s{c, blocks_per_seq, model.NewPagedCache(kBlock, blocks_per_seq * max_batch)};
      for (int64_t p = 0; p < c; p += chunk) {
        if (auto st = PrefillChunk(model, s.cache, p, std::min<int64_t>(c, p + chunk),
                                   blocks_per_seq);
            !st.ok()) {
          return fail(st);
        }
      }
      // Sequence b's blocks are [b * blocks_per_seq, (b + 1) * blocks_per_seq): copy the rows.
      for (size_t l = 0; l < s.cache.k.size(); ++l) {
        for (Tensor* t : {&s.cache.k[l], &s.cache.v[l]}) {
          const int64_t row_bytes = t->nbytes() / t->dim(0);
          char* base = static_cast<char*>(t->raw());
          for (int b = 1; b < max_batch; ++b) {
            std::memcpy(base + b * blocks_per_seq * kBlock * row_bytes, base,
                        static_cast<size_t>(c * row_bytes));
          }
        }
      }
      setups.push_back(std::move(s));
    }
    // times[batch][context]: seconds per step, every measurement.
    std::vector<std::vector<std::vector<double>>> times(
        batches.size(), std::vector<std::vector<double>>(setups.size()));
    for (int r = 0; r < repeats; ++r) {
      for (size_t bi = 0; bi < batches.size(); ++bi) {
        for (size_t ci = 0; ci < setups.size(); ++ci) {
          Setup& s = setups[ci];
          const int b_count = batches[bi];
          BatchInput batch;
          for (int b = 0; b <= b_count; ++b) batch.table_begin.push_back(b * s.blocks_per_seq);
          for (int64_t blk = 0; blk < b_count * s.blocks_per_seq; ++blk) {
            batch.block_tables.push_back(static_cast<int32_t>(blk));
          }
          for (int b = 0; b < b_count; ++b) {
            batch.seq_index.push_back(b);
            batch.logit_rows.push_back(b);
          }
          std::vector<double> steps;
          for (int step = 0; step < decode_steps; ++step) {
            batch.tokens.clear();
            batch.positions.clear();
            for (int b = 0; b < b_count; ++b) {
              batch.tokens.push_back(TokenAt(step * 31 + b, vocab));
              batch.positions.push_back(s.context + step);  // rewritten by every repeat
            }
            auto t0 = std::chrono::steady_clock::now();
            auto logits = model.ForwardBatch(batch, s.cache);
            if (!logits.ok()) return fail(logits.status());
            steps.push_back(Seconds(t0));
          }
          times[bi][ci].push_back(Median(steps));
        }
      }
    }
    for (size_t bi = 0; bi < batches.size(); ++bi) {
      const double base = batches[bi] / Median(times[bi][0]);
      for (size_t ci = 0; ci < setups.size(); ++ci) {
        const double tok_s = batches[bi] / Median(times[bi][ci]);
        std::printf("decode batch %d context %d: %.1f tok/s (%.2f ms/step, %.2fx context %d)\n",
                    batches[bi], setups[ci].context, tok_s, 1000.0 * Median(times[bi][ci]),
                    tok_s / base, setups[0].context);
        json += ",\"decode_b" + std::to_string(batches[bi]) + "_c" +
                std::to_string(setups[ci].context) + "_tok_s\":" + std::to_string(tok_s);
      }
    }
  }

  if (!skip_prefill) {
    const int64_t blocks = (prefill_len + kBlock - 1) / kBlock;
    PagedKvCache cache = model.NewPagedCache(kBlock, blocks);
    const int64_t chunks = (prefill_len + chunk - 1) / chunk;
    std::vector<std::vector<double>> times(static_cast<size_t>(chunks));
    for (int r = 0; r < repeats; ++r) {
      for (int64_t c = 0; c < chunks; ++c) {
        auto t0 = std::chrono::steady_clock::now();
        if (auto st = PrefillChunk(model, cache, c * chunk,
                                   std::min<int64_t>(prefill_len, (c + 1) * chunk), blocks);
            !st.ok()) {
          return fail(st);
        }
        times[c].push_back(Seconds(t0));
      }
    }
    std::string line = "prefill " + std::to_string(prefill_len) + " tokens in chunks of " +
                       std::to_string(chunk) + ", seconds per chunk:";
    json += ",\"prefill_chunk_s\":[";
    for (int64_t c = 0; c < chunks; ++c) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), " %.3f", Median(times[c]));
      line += buf;
      json += (c ? "," : "") + std::string(buf + 1);
    }
    json += "]";
    // The last full chunk: a shorter final one would flatter the ratio.
    const int64_t last_full = prefill_len / chunk - 1;
    const double first = Median(times.front()), last = Median(times[std::max<int64_t>(0, last_full)]);
    std::printf("%s\nprefill last full chunk (%lld) / first: %.2fx\n", line.c_str(),
                static_cast<long long>(last_full), last / first);
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}
