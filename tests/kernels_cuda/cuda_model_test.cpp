// The whole model on the CUDA backend against the CPU backend, on tiny random checkpoints written
// with WriteTinyModel (hidden 256, 4 layers, 8 heads / 2 KV heads, vocab 1000, intermediate 512):
// bf16 weights (Llama, Qwen2 with q/k/v biases, Mistral with a sliding window) and f32 weights,
// and mixtures of experts (Mixtral with bf16 weights, Qwen3-MoE with f32 ones; f32 KV caches).
//  (a) The served path (runtime/generator.h: WorkerEngine steps, CUDA-graph decode steps on the
//      GPU): logits of a 40-token prompt (every row, one prefill step) and of 8 greedy decode
//      steps, the CUDA run fed the CPU's greedy tokens: max |diff| <= 2e-2 x max |CPU logit|
//      (an f32 KV cache: 1e-3), the same greedy ids wherever the CPU's top-2 margin is > 0.05
//      (and > twice that row's diff); Generate on CUDA gives the CPU's 9 ids,
//      or differs first at a row where the CPU's margin is <= max(0.05, 4 x that row's diff)
//      (a near-tie).
//  (b) ForwardBatch over a paged cache: 3 sequences of different lengths, chunked prefill mixed
//      with decode, interleaved scattered block tables; every row's logits vs the CPU, as in (a).
//  (a') The same for GGUF files with a quantized token_embd and a tied LM head (Q4_K, Q6_K, Q8_0,
//      Q4_0 matrices) against the CPU on the same file, 2e-2.
//  (c) DecodeGraphs: the same decode steps run eagerly (ForwardBatch) on one cache and through
//      CUDA graphs on an identical one give logits within 1e-4 x max |logit|: the recording step,
//      replays with new tokens, a batch padded up (3 sequences -> size 4), a second size, and a
//      replay of the first size after it.
//  (d) Mixtures of experts: DecodeGraphs stays off (routing reads the router's logits on the
//      host), and eager paged decode steps give the CPU's logits as in (b).
// Every test skips without a CUDA device.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "formats/checkpoint_loader.h"
#include "formats/gguf_export.h"
#include "runtime/decode_graphs.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "tests/kernels_cuda/logit_compare.h"

namespace shardlm {
namespace {

using cudatest::CompareLogits;
using cudatest::CompareGenerated;
using cudatest::LogitReport;

constexpr double kHalfTol = 2e-2;    // bf16 weights or a bf16 KV cache
constexpr double kF32Tol = 1e-3;     // f32 weights and an f32 KV cache
constexpr double kGraphTol = 1e-4;   // graph replay vs the same steps run eagerly
constexpr double kMinMargin = 0.05;  // top-2 margin below which greedy ids are not compared

struct ModelCase {
  std::string name;
  TinyModelSpec spec;
  DType kv = DType::kBF16;  // the CUDA backend's KV cache dtype
  double tol = kHalfTol;
};

using cudatest::GpuTestSpec;

std::vector<ModelCase> Cases() {
  return {
      {"llama-bf16", GpuTestSpec(Arch::kLlama, DType::kBF16, 41)},
      {"qwen2-bias-bf16", GpuTestSpec(Arch::kQwen2, DType::kBF16, 42)},
      {"mistral-swa-bf16", GpuTestSpec(Arch::kMistral, DType::kBF16, 43)},
      {"llama-f32", GpuTestSpec(Arch::kLlama, DType::kF32, 44)},
      {"llama-f32-kv-f32", GpuTestSpec(Arch::kLlama, DType::kF32, 44), DType::kF32, kF32Tol},
      // Mixtures of experts (Mixtral: 4 experts, top 2, renormalised; Qwen3-MoE: 6 experts, top
      // 3, q/k norm, the last layer dense): the router's host read-back, the per-expert gathers,
      // GEMMs and ScatterAddRows, and no decode graphs (DecodeGraphs refuses a mixture). An f32
      // KV cache on CUDA, as on the CPU: a bf16 cache moves the router's logits by ~1e-3, enough
      // to flip a near-tie between two experts in one of the ~200 routing decisions and change
      // that token's output outright, which says nothing about the kernels.
      {"mixtral-bf16-kv-f32", GpuTestSpec(Arch::kMixtral, DType::kBF16, 46), DType::kF32, kF32Tol},
      {"qwen3moe-f32-kv-f32", GpuTestSpec(Arch::kQwen3Moe, DType::kF32, 47), DType::kF32, kF32Tol},
  };
}

bool IsMixture(const ModelCase& c) {
  return c.spec.arch == Arch::kMixtral || c.spec.arch == Arch::kQwen3Moe;
}

// A directory of this process's own under the system temp dir, removed at the end.
class TempDir {
 public:
  TempDir() {
    path_ = (std::filesystem::temp_directory_path() /
             ("shardlm_cuda_model_test_" + std::to_string(::getpid())))
                .string();
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A checkpoint on disk and the model loaded from it on one backend.
struct Loaded {
  std::unique_ptr<OpenedCheckpoint> checkpoint;  // the weights may be views of its mapping
  std::unique_ptr<Backend> backend;
  std::unique_ptr<LlamaModel> model;
};

class CudaModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) {
      GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount gives 0 or an error";
    }
  }

  // The checkpoint of `spec` (written once per test).
  std::string ModelDir(const ModelCase& c) {
    const std::string dir = tmp_.path() + "/" + c.name;
    if (!std::filesystem::exists(dir + "/config.json")) {
      const absl::Status s = WriteTinyModel(c.spec, dir);
      EXPECT_TRUE(s.ok()) << s;
    }
    return dir;
  }

  Loaded Load(const ModelCase& c, bool cuda) { return LoadPath(ModelDir(c), c.name, c.kv, cuda); }

  // The checkpoint at `path` (a directory or a .gguf file) on the CPU or on CUDA.
  static Loaded LoadPath(const std::string& path, const std::string& name, DType kv, bool cuda) {
    Loaded l;
    auto checkpoint = OpenCheckpoint(path);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    if (!checkpoint.ok()) return l;
    l.checkpoint = std::make_unique<OpenedCheckpoint>(std::move(*checkpoint));
    l.backend = cuda ? CreateCudaBackend(0, kv) : CreateCpuBackend(2);
    auto model = LlamaModel::Load(l.checkpoint->config, *l.checkpoint->weights, *l.backend);
    EXPECT_TRUE(model.ok()) << name << " on " << l.backend->name() << ": " << model.status();
    if (model.ok()) l.model = std::move(*model);
    return l;
  }

  TempDir tmp_;
};

// Logits (backend memory) -> host vector.
std::vector<float> HostLogits(LlamaModel& model, const Tensor& logits) {
  const Tensor h = model.backend().ToHost(logits);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

std::vector<int32_t> Prompt(int64_t n, int64_t vocab, int32_t salt) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>((i * 37 + 11 * salt + 5) % vocab);
  return p;
}

// The prompt through the step engine (every row's logits), then `steps` decode steps fed
// `feed` (when empty, the model's own greedy ids): every row's logits and greedy id.
struct Forced {
  std::vector<float> logits;
  std::vector<int32_t> ids;  // the argmax of every row
  std::vector<int32_t> fed;  // the decode steps' tokens
};

Forced TeacherForced(LlamaModel& model, const std::vector<int32_t>& prompt, int64_t steps,
                     const std::vector<int32_t>& feed) {
  Forced out;
  const int64_t vocab = model.config().vocab_size;
  auto add_rows = [&](const std::vector<float>& rows) {
    out.logits.insert(out.logits.end(), rows.begin(), rows.end());
    for (size_t r = 0; (r + 1) * vocab <= rows.size(); ++r) {
      const float* row = rows.data() + r * vocab;
      out.ids.push_back(static_cast<int32_t>(std::max_element(row, row + vocab) - row));
    }
  };
  SequenceRunner run(model, static_cast<int64_t>(prompt.size()) + steps);
  auto first = run.Step(prompt, /*sample=*/true, worker::v1::LOGITS_ALL);
  EXPECT_TRUE(first.ok()) << first.status();
  if (!first.ok()) return out;
  add_rows(first->logits);
  EXPECT_EQ(first->token, out.ids.back()) << "the greedy id is not its row's argmax";
  int32_t next = first->token;
  for (int64_t s = 0; s < steps; ++s) {
    if (!feed.empty()) next = feed[s];
    out.fed.push_back(next);
    auto step = run.Step(std::span<const int32_t>(&next, 1), /*sample=*/true,
                         worker::v1::LOGITS_SAMPLED);
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return out;
    add_rows(step->logits);
    EXPECT_EQ(step->token, out.ids.back()) << "the greedy id is not its row's argmax";
    next = step->token;
  }
  return out;
}

// (a) Prompt of 40 tokens, every row's logits, then 8 decode steps through the step engine.
TEST_F(CudaModelTest, ServedPathMatchesCpu) {
  constexpr int64_t kPrompt = 40, kSteps = 8;
  for (const ModelCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    Loaded cpu = Load(c, false), gpu = Load(c, true);
    ASSERT_TRUE(cpu.model && gpu.model);
    const int64_t vocab = cpu.model->config().vocab_size;
    const std::vector<int32_t> prompt = Prompt(kPrompt, vocab, 1);

    // The CPU with its own greedy tokens fed back; CUDA fed the same tokens.
    const Forced cpu_run = TeacherForced(*cpu.model, prompt, kSteps, {});
    ASSERT_EQ(cpu_run.ids.size(), static_cast<size_t>(kPrompt + kSteps));
    const Forced gpu_run = TeacherForced(*gpu.model, prompt, kSteps, cpu_run.fed);
    ASSERT_EQ(gpu_run.ids.size(), static_cast<size_t>(kPrompt + kSteps));
    const std::vector<int32_t>& cpu_ids = cpu_run.ids;
    const LogitReport rep = CompareLogits(gpu_run.logits, cpu_run.logits, gpu_run.ids, vocab,
                                          c.tol, kMinMargin, c.name + " served path");
    EXPECT_GE(rep.ids_compared, kPrompt / 2) << "too few confident rows to compare greedy ids";

    // Free-running greedy generation on CUDA: the CPU's ids (prompt's last row, then the
    // decode rows), or a first difference at a near-tie.
    GenerateOptions options;
    options.max_new_tokens = kSteps + 1;
    options.stop_at_eos = false;
    auto gen = Generate(*gpu.model, prompt, options);
    ASSERT_TRUE(gen.ok()) << gen.status();
    const std::vector<int32_t> cpu_gen(cpu_ids.begin() + (kPrompt - 1), cpu_ids.end());
    ASSERT_EQ(gen->tokens.size(), cpu_gen.size());
    const size_t same = CompareGenerated(gen->tokens, cpu_gen, rep.confident, kPrompt - 1,
                                         c.name + " Generate");
    std::printf("%-18s max |logit diff| %.3g = %.3g x max|logit| (%.3g); greedy ids equal on "
                "%d of %d confident rows; generation: %zu of %zu ids equal\n",
                c.name.c_str(), rep.max_diff, rep.max_diff / rep.scale, rep.scale, rep.ids_equal,
                rep.ids_compared, same, cpu_gen.size());
  }
}

// (a) for GGUF files as llama.cpp's quantizations write them: token_embd quantized and the LM
// head tied to it (no output.weight), every matrix of one block type, on CUDA (the quantized
// embedding gather, the quantized GEMV / dequantizing GEMM, the tied head's Linear over the same
// device blocks) against the CPU backend on the same file.
TEST_F(CudaModelTest, QuantizedGgufTiedEmbeddingMatchesCpu) {
  constexpr int64_t kPrompt = 24, kSteps = 6;
  for (DType dt :
       {DType::kQ4_K, DType::kQ6_K, DType::kQ8_0, DType::kQ4_0, DType::kQ5_0, DType::kQ5_1}) {
    const std::string name = std::string("llama-tied-") + DTypeName(dt);
    SCOPED_TRACE(name);
    TinyModelSpec spec = GpuTestSpec(Arch::kLlama, DType::kF32, 45);
    spec.tie_embeddings = true;
    auto config = TinyModelConfig(spec);
    ASSERT_TRUE(config.ok()) << config.status();
    RandomWeightSource hf(*config, spec.seed, DType::kF32);
    const std::string path = tmp_.path() + "/" + name + ".gguf";
    const absl::Status exported = ExportGguf(*config, hf, path, dt);
    ASSERT_TRUE(exported.ok()) << exported;

    Loaded cpu = LoadPath(path, name, DType::kBF16, false);
    Loaded gpu = LoadPath(path, name, DType::kBF16, true);
    ASSERT_TRUE(cpu.model && gpu.model);
    ASSERT_TRUE(gpu.checkpoint->config.tie_word_embeddings) << "the GGUF file has an output.weight";
    auto embd = gpu.checkpoint->weights->Info("model.embed_tokens.weight");
    ASSERT_TRUE(embd.ok()) << embd.status();
    ASSERT_EQ(embd->dtype, dt) << "token_embd is not stored quantized";

    const int64_t vocab = cpu.model->config().vocab_size;
    const std::vector<int32_t> prompt = Prompt(kPrompt, vocab, 3);
    const Forced cpu_run = TeacherForced(*cpu.model, prompt, kSteps, {});
    ASSERT_EQ(cpu_run.ids.size(), static_cast<size_t>(kPrompt + kSteps));
    const Forced gpu_run = TeacherForced(*gpu.model, prompt, kSteps, cpu_run.fed);
    ASSERT_EQ(gpu_run.ids.size(), static_cast<size_t>(kPrompt + kSteps));
    const LogitReport rep = CompareLogits(gpu_run.logits, cpu_run.logits, gpu_run.ids, vocab,
                                          kHalfTol, kMinMargin, name);
    EXPECT_GE(rep.ids_compared, kPrompt / 2) << "too few confident rows to compare greedy ids";
    std::printf("%-18s max |logit diff| %.3g = %.3g x max|logit| (%.3g); greedy ids equal on "
                "%d of %d confident rows\n",
                name.c_str(), rep.max_diff, rep.max_diff / rep.scale, rep.scale, rep.ids_equal,
                rep.ids_compared);
  }
}

// Sequences for the paged tests: each holds its blocks; blocks come from a shuffled list that
// never hands out `reserved` (DecodeGraphs' padding block).
class BlockPool {
 public:
  BlockPool(int64_t num_blocks, int32_t reserved) {
    for (int64_t i = 0; i < num_blocks; ++i) {
      const auto b = static_cast<int32_t>((i * 13 + 7) % num_blocks);  // 13 coprime with 40
      if (b != reserved) free_.push_back(b);
    }
  }
  int32_t Take() {
    EXPECT_FALSE(free_.empty());
    const int32_t b = free_.front();
    free_.erase(free_.begin());
    return b;
  }

 private:
  std::vector<int32_t> free_;
};

struct Seq {
  int32_t len = 0;  // tokens already in the cache
  std::vector<int32_t> blocks;
};

// One step: sequence seqs[i] brings tokens[i] (possibly none: not in the step). Blocks are taken
// for every sequence in turn, one at a time, so that the tables interleave. Every row's logits
// are wanted when all_rows, else the last row of each sequence.
BatchInput MakeBatch(std::vector<Seq>& seqs, const std::vector<std::vector<int32_t>>& tokens,
                     int block_size, BlockPool& pool, bool all_rows) {
  BatchInput b;
  bool more = true;
  while (more) {
    more = false;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t need = seqs[s].len + static_cast<int64_t>(tokens[s].size());
      if (static_cast<int64_t>(seqs[s].blocks.size()) * block_size < need) {
        seqs[s].blocks.push_back(pool.Take());
        more = true;
      }
    }
  }
  b.table_begin.push_back(0);
  int32_t index = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    if (tokens[s].empty()) continue;
    for (size_t i = 0; i < tokens[s].size(); ++i) {
      b.tokens.push_back(tokens[s][i]);
      b.positions.push_back(seqs[s].len + static_cast<int32_t>(i));
      b.seq_index.push_back(index);
      if (all_rows || i + 1 == tokens[s].size()) {
        b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
      }
    }
    b.block_tables.insert(b.block_tables.end(), seqs[s].blocks.begin(), seqs[s].blocks.end());
    b.table_begin.push_back(static_cast<int32_t>(b.block_tables.size()));
    seqs[s].len += static_cast<int32_t>(tokens[s].size());
    ++index;
  }
  return b;
}

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, int32_t salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((i * 101 + salt * 7 + 3) % vocab);
  return t;
}

// (b) Paged ForwardBatch: prefill of 29 and 17 tokens with a first chunk of 6 of an 11-token
// prompt, then the chunk's rest with two decode tokens, then decode steps of all three.
TEST_F(CudaModelTest, PagedForwardBatchMatchesCpu) {
  constexpr int kBlock = 8;
  constexpr int64_t kBlocks = 40;
  for (const ModelCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    Loaded cpu = Load(c, false), gpu = Load(c, true);
    ASSERT_TRUE(cpu.model && gpu.model);
    const int64_t vocab = cpu.model->config().vocab_size;
    PagedKvCache cpu_cache = cpu.model->NewPagedCache(kBlock, kBlocks);
    PagedKvCache gpu_cache = gpu.model->NewPagedCache(kBlock, kBlocks);
    EXPECT_EQ(gpu_cache.k[0].dtype(), c.kv);
    BlockPool pool(kBlocks, -1);
    std::vector<Seq> seqs(3);
    const std::vector<int32_t> p0 = Tokens(29, vocab, 1), p1 = Tokens(11, vocab, 2),
                               p2 = Tokens(17, vocab, 3);
    std::vector<std::vector<std::vector<int32_t>>> steps = {
        {p0, std::vector<int32_t>(p1.begin(), p1.begin() + 6), p2},
        {{17}, std::vector<int32_t>(p1.begin() + 6, p1.end()), {923}},
    };
    for (int s = 0; s < 4; ++s) {
      steps.push_back({{static_cast<int32_t>(100 + s)}, {static_cast<int32_t>(500 + 3 * s)},
                       {static_cast<int32_t>(999 - 11 * s)}});
    }
    double worst = 0;
    int compared = 0, equal = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      const BatchInput batch = MakeBatch(seqs, steps[i], kBlock, pool, /*all_rows=*/true);
      auto want_t = cpu.model->ForwardBatch(batch, cpu_cache);
      ASSERT_TRUE(want_t.ok()) << want_t.status();
      auto got_t = gpu.model->ForwardBatch(batch, gpu_cache);
      ASSERT_TRUE(got_t.ok()) << got_t.status();
      const int64_t rows = static_cast<int64_t>(batch.logit_rows.size());
      ASSERT_EQ(got_t->dim(0), rows);
      auto ids = gpu.model->LastStageArgmax(*got_t);
      ASSERT_TRUE(ids.ok()) << ids.status();
      const LogitReport rep =
          CompareLogits(HostLogits(*gpu.model, *got_t), HostLogits(*cpu.model, *want_t), *ids,
                        vocab, c.tol, kMinMargin, c.name + " ForwardBatch step " + std::to_string(i));
      worst = std::max(worst, rep.max_diff / rep.scale);
      compared += rep.ids_compared;
      equal += rep.ids_equal;
    }
    std::printf("%-18s paged batches: max |logit diff| %.3g x max|logit|; greedy ids equal on %d "
                "of %d confident rows\n",
                c.name.c_str(), worst, equal, compared);
  }
}

// (d) A mixture of experts routes on the host (it reads the router's logits back every layer),
// which a recorded graph cannot do: DecodeGraphs stays off for it on the CUDA backend, and decode
// steps run eagerly, with the CPU's logits (the served path of (a) runs them through the engine,
// which asks for graphs by default).
TEST_F(CudaModelTest, MixtureOfExpertsRecordsNoDecodeGraphs) {
  constexpr int kBlock = 8;
  constexpr int64_t kBlocks = 24;
  constexpr int32_t kPadBlock = kBlocks - 1;
  for (const ModelCase& c : Cases()) {
    if (!IsMixture(c)) continue;
    SCOPED_TRACE(c.name);
    Loaded cpu = Load(c, false), gpu = Load(c, true);
    ASSERT_TRUE(cpu.model && gpu.model);
    ASSERT_GT(gpu.model->config().num_experts, 0);
    ASSERT_TRUE(gpu.model->backend().supports_graphs());
    const int64_t vocab = gpu.model->config().vocab_size;
    PagedKvCache cpu_cache = cpu.model->NewPagedCache(kBlock, kBlocks);
    PagedKvCache gpu_cache = gpu.model->NewPagedCache(kBlock, kBlocks);
    DecodeGraphs graphs(*gpu.model, gpu_cache, {1, 2, 4}, 6, kPadBlock);
    EXPECT_FALSE(graphs.enabled()) << "DecodeGraphs would record a mixture of experts";

    BlockPool pool(kBlocks, kPadBlock);
    std::vector<Seq> seqs(2);
    std::vector<std::vector<std::vector<int32_t>>> steps = {
        {Tokens(9, vocab, 7), Tokens(14, vocab, 8)}};
    for (int s = 0; s < 3; ++s) {
      steps.push_back({{static_cast<int32_t>(40 + 9 * s)}, {static_cast<int32_t>(700 - 5 * s)}});
    }
    for (size_t i = 0; i < steps.size(); ++i) {
      const BatchInput batch = MakeBatch(seqs, steps[i], kBlock, pool, /*all_rows=*/false);
      if (i > 0) {
        EXPECT_FALSE(graphs.Accepts(batch)) << "decode step " << i;
      }
      auto want = cpu.model->ForwardBatch(batch, cpu_cache);
      ASSERT_TRUE(want.ok()) << want.status();
      auto got = gpu.model->ForwardBatch(batch, gpu_cache);
      ASSERT_TRUE(got.ok()) << got.status();
      auto ids = gpu.model->LastStageArgmax(*got);
      ASSERT_TRUE(ids.ok()) << ids.status();
      CompareLogits(HostLogits(*gpu.model, *got), HostLogits(*cpu.model, *want), *ids, vocab, c.tol,
                    kMinMargin, c.name + " eager decode step " + std::to_string(i));
    }
    EXPECT_EQ(graphs.graphs(), 0);
  }
}

// (c) DecodeGraphs against eager ForwardBatch on a second cache with the same contents.
TEST_F(CudaModelTest, DecodeGraphReplayEqualsEager) {
  constexpr int kBlock = 8;
  constexpr int64_t kBlocks = 40;
  constexpr int32_t kPadBlock = kBlocks - 1;
  constexpr int kMaxBlocks = 6;
  const std::vector<ModelCase> all = Cases();
  for (const ModelCase& c : {all[0], all[1], all[3]}) {
    SCOPED_TRACE(c.name);
    Loaded gpu = Load(c, true);
    ASSERT_TRUE(gpu.model);
    LlamaModel& model = *gpu.model;
    const int64_t vocab = model.config().vocab_size;
    PagedKvCache eager_cache = model.NewPagedCache(kBlock, kBlocks);
    PagedKvCache graph_cache = model.NewPagedCache(kBlock, kBlocks);
    BlockPool pool(kBlocks, kPadBlock);
    std::vector<Seq> seqs(3);

    // Prefill the three sequences into both caches (the same ops: the same contents).
    const BatchInput prefill =
        MakeBatch(seqs, {Tokens(13, vocab, 4), Tokens(5, vocab, 5), Tokens(21, vocab, 6)}, kBlock,
                  pool, /*all_rows=*/false);
    ASSERT_TRUE(model.ForwardBatch(prefill, eager_cache).ok());
    ASSERT_TRUE(model.ForwardBatch(prefill, graph_cache).ok());

    DecodeGraphs graphs(model, graph_cache, {1, 2, 4, 8}, kMaxBlocks, kPadBlock);
    ASSERT_TRUE(graphs.enabled()) << "a single-rank CUDA model must record decode graphs";
    EXPECT_FALSE(graphs.Accepts(prefill)) << "a prefill step is not a graph's";

    // (sequences in the step, graphs recorded after it)
    struct Step {
      std::vector<bool> in;
      int graphs_after;
    };
    const std::vector<Step> plan = {
        {{true, true, true}, 1},   // 3 -> padded to 4: run eagerly and recorded
        {{true, true, true}, 1},   // replay, new tokens
        {{true, true, true}, 1},   // replay again
        {{true, false, true}, 2},  // 2 sequences: a second graph (no padding)
        {{true, false, true}, 2},  // its replay
        {{true, true, true}, 2},   // the size-4 graph again, after the other one ran
        {{false, true, false}, 3}, // 1 sequence: size 1
        {{false, true, false}, 3},
    };
    double worst = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
      SCOPED_TRACE("decode step " + std::to_string(i));
      std::vector<std::vector<int32_t>> tokens(3);
      for (int s = 0; s < 3; ++s) {
        if (plan[i].in[s]) tokens[s] = {static_cast<int32_t>((i * 211 + s * 67 + 1) % vocab)};
      }
      const BatchInput batch = MakeBatch(seqs, tokens, kBlock, pool, /*all_rows=*/false);
      ASSERT_TRUE(graphs.Accepts(batch));
      auto eager = model.ForwardBatch(batch, eager_cache);
      ASSERT_TRUE(eager.ok()) << eager.status();
      const std::vector<float> want = HostLogits(model, *eager);
      auto replayed = graphs.Run(batch);
      ASSERT_TRUE(replayed.ok()) << replayed.status();
      ASSERT_EQ(replayed->dim(0), static_cast<int64_t>(batch.logit_rows.size()));
      const std::vector<float> got = HostLogits(model, *replayed);
      EXPECT_EQ(graphs.graphs(), plan[i].graphs_after);
      ASSERT_EQ(got.size(), want.size());
      const double scale = std::max(1.0, cudatest::MaxAbs(want));
      const double diff = cudatest::MaxDiff(got, want);
      EXPECT_LE(diff, kGraphTol * scale) << "graph logits differ from eager ones";
      worst = std::max(worst, diff / scale);
    }
    std::printf("%-18s decode graphs: %d recorded, max |graph - eager| %.3g x max|logit|\n",
                c.name.c_str(), graphs.graphs(), worst);
  }
}

}  // namespace
}  // namespace shardlm
