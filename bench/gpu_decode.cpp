// Decode speed of the CUDA backend on a Llama-2-7B-shaped model with random bf16 weights,
// against the memory roofline of the same GPU measured in the same run.
//   build/bin/gpu_decode [--layers 32] [--prompt 128] [--gen 128] [--batches 1,2,4,...,256]
//       [--max-batch-tokens 8192] [--json results.json]
// Batch 1 must stream every weight byte once per token, so its ceiling is the device-to-device
// copy bandwidth (read + write) divided by the weight bytes (all of them, the embedding table's
// 250 MiB included, which decode reads one row of: a ~2% lower ceiling than the true one).
// Exits 77 without a CUDA device; 1 on any error.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/cuda/cuda_backend.h"
#include "runtime/decode_graphs.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "nlohmann/json.hpp"

using namespace shardlm;

namespace {

constexpr int kBlockSize = 16;

uint64_t Mix(uint64_t z) {  // SplitMix64's finalizer
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random bf16 tensors made on demand by name: element i of a tensor is a hash of (seed, name, i),
// so any slice is generated alone and in parallel. Matrices and embeddings are uniform in
// +-0.02, norm gains in 1 +- 0.1; never zero. The loader frees each one once it is on the device.
class RandomBf16Source : public WeightSource {
 public:
  RandomBf16Source(const ModelConfig& config, uint64_t seed) : seed_(seed) {
    for (auto& [name, shape] : CheckpointTensorShapes(config)) shapes_.emplace(name, shape);
  }
  std::string Describe() const override { return "random bf16 weights (in memory)"; }
  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    for (const auto& [name, shape] : shapes_) names.push_back(name);
    return names;
  }
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    auto it = shapes_.find(name);
    if (it == shapes_.end()) {
      return absl::NotFoundError("tensor '" + std::string(name) + "' not found in " + Describe());
    }
    TensorInfo info{
        .name = it->first, .dtype = DType::kBF16, .shape = it->second, .file = Describe()};
    info.size = DTypeBytes(DType::kBF16, Numel(it->second));
    return info;
  }
  absl::StatusOr<Tensor> Load(std::string_view name) const override {
    auto info = Info(name);
    if (!info.ok()) return info.status();
    return Generate(*info, 0, info->shape[0], 0, Cols(*info));
  }
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                  int64_t end) const override {
    auto info = Info(name);
    if (!info.ok()) return info.status();
    if (begin < 0 || begin > end || end > info->shape[0])
      return OutOfRange(name, "rows", begin, end);
    return Generate(*info, begin, end, 0, Cols(*info));
  }
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                     int64_t end) const override {
    auto info = Info(name);
    if (!info.ok()) return info.status();
    if (info->shape.size() != 2 || begin < 0 || begin > end || end > info->shape[1]) {
      return OutOfRange(name, "columns", begin, end);
    }
    return Generate(*info, 0, info->shape[0], begin, end);
  }

 private:
  static int64_t Numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  static int64_t Cols(const TensorInfo& info) { return info.shape.size() == 2 ? info.shape[1] : 1; }
  static absl::Status OutOfRange(std::string_view name, const char* what, int64_t b, int64_t e) {
    return absl::OutOfRangeError(std::string(what) + " [" + std::to_string(b) + ", " +
                                 std::to_string(e) + ") out of range for '" + std::string(name) +
                                 "'");
  }

  // Rows [r0, r1) x columns [c0, c1) of the tensor, in threads over rows.
  Tensor Generate(const TensorInfo& info, int64_t r0, int64_t r1, int64_t c0, int64_t c1) const {
    std::vector<int64_t> shape = info.shape;
    shape[0] = r1 - r0;
    if (shape.size() == 2) shape[1] = c1 - c0;
    Tensor t = Tensor::Empty(shape, DType::kBF16);
    const bool norm = info.name.ends_with("norm.weight");
    const float offset = norm ? 1.0f : 0.0f, half = norm ? 0.1f : 0.02f;
    uint64_t key = seed_ * 0x2545f4914f6cdd1dull;
    for (unsigned char ch : info.name) key = (key ^ ch) * 0x100000001b3ull;
    const int64_t cols = Cols(info), width = c1 - c0, rows = r1 - r0;
    uint16_t* out = t.data<uint16_t>();
    auto fill = [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          const uint64_t u = Mix(key + static_cast<uint64_t>((r0 + r) * cols + c0 + c)) >> 48;
          const float x = offset + half * ((static_cast<float>(u) + 0.5f) / 32768.0f - 1.0f);
          out[r * width + c] = static_cast<uint16_t>(std::bit_cast<uint32_t>(x) >> 16);
        }
      }
    };
    const int64_t threads = rows * width < (1 << 20)
                                ? 1
                                : std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
    std::vector<std::thread> pool;
    for (int64_t i = 0; i < threads; ++i) {
      pool.emplace_back(fill, rows * i / threads, rows * (i + 1) / threads);
    }
    for (std::thread& th : pool) th.join();
    return t;
  }

  std::map<std::string, std::vector<int64_t>, std::less<>> shapes_;
  uint64_t seed_;
};

// CUDA runtime errors end the benchmark (main catches and prints them).
void CudaCheck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Device-to-device copy bandwidth (bytes read + written per second): the median of 10 timed
// cudaMemcpyAsync of `bytes`, after 3 warm-ups.
double CopyBandwidth(size_t bytes) {
  void *src = nullptr, *dst = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  CudaCheck(cudaMalloc(&src, bytes), "cudaMalloc (copy source)");
  CudaCheck(cudaMalloc(&dst, bytes), "cudaMalloc (copy destination)");
  CudaCheck(cudaStreamCreate(&stream), "cudaStreamCreate");
  CudaCheck(cudaEventCreate(&start), "cudaEventCreate");
  CudaCheck(cudaEventCreate(&stop), "cudaEventCreate");
  CudaCheck(cudaMemsetAsync(src, 1, bytes, stream), "cudaMemsetAsync");
  std::vector<float> ms;
  for (int i = 0; i < 13; ++i) {
    CudaCheck(cudaEventRecord(start, stream), "cudaEventRecord");
    CudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream),
              "cudaMemcpyAsync");
    CudaCheck(cudaEventRecord(stop, stream), "cudaEventRecord");
    CudaCheck(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    CudaCheck(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
    if (i >= 3) ms.push_back(t);
  }
  cudaEventDestroy(stop);
  cudaEventDestroy(start);
  cudaStreamDestroy(stream);
  CudaCheck(cudaFree(dst), "cudaFree");
  CudaCheck(cudaFree(src), "cudaFree");
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3);
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

struct Sequence {
  std::vector<int32_t> prompt, blocks;
  int32_t next = 0;  // the token to feed at the next decode step
};

struct RunTimes {
  double prefill_s = 0, decode_s = 0;
  std::vector<int32_t> first_seq_tokens;  // what sequence 0 generated, for the graphs check
};

// B sequences in one cache: sequence s owns blocks [s * per_seq, (s + 1) * per_seq).
class Bench {
 public:
  Bench(LlamaModel& model, PagedKvCache& cache, DecodeGraphs& graphs, int prompt, int gen,
        int max_batch_tokens)
      : model_(model),
        cache_(cache),
        graphs_(graphs),
        prompt_(prompt),
        gen_(gen),
        max_batch_tokens_(max_batch_tokens) {}

  static int BlocksPerSeq(int prompt, int gen) {
    return (prompt + gen + kBlockSize - 1) / kBlockSize;
  }

  // Random prompts (the same for the same batch size), one warm-up decode step at position 0
  // (records this size's graph; prefill overwrites its K/V), then the timed prefill and `gen`
  // greedy decode steps.
  absl::StatusOr<RunTimes> Run(int batch, bool use_graphs) {
    std::vector<Sequence> seqs(static_cast<size_t>(batch));
    const int per_seq = BlocksPerSeq(prompt_, gen_);
    uint64_t rng = static_cast<uint64_t>(batch);
    for (int s = 0; s < batch; ++s) {
      for (int i = 0; i < prompt_; ++i) {
        rng = Mix(rng);
        seqs[s].prompt.push_back(static_cast<int32_t>(rng % model_.config().vocab_size));
      }
      for (int b = 0; b < per_seq; ++b) seqs[s].blocks.push_back(s * per_seq + b);
    }
    if (auto warm = DecodeStep(seqs, 0, use_graphs); !warm.ok()) return warm;
    RunTimes times;
    auto t0 = std::chrono::steady_clock::now();
    if (absl::Status st = Prefill(seqs); !st.ok()) return st;
    times.prefill_s = Seconds(t0);
    t0 = std::chrono::steady_clock::now();
    for (int step = 0; step < gen_; ++step) {
      times.first_seq_tokens.push_back(seqs[0].next);
      if (absl::Status st = DecodeStep(seqs, prompt_ + step, use_graphs); !st.ok()) return st;
    }
    times.decode_s = Seconds(t0);
    return times;
  }

 private:
  // Runs one step; the greedy ids of its logit rows (the read-back synchronizes).
  absl::StatusOr<std::vector<int32_t>> Step(const BatchInput& batch, bool use_graphs) {
    absl::StatusOr<Tensor> logits = use_graphs && graphs_.Accepts(batch)
                                        ? graphs_.Run(batch)
                                        : model_.ForwardBatch(batch, cache_);
    if (!logits.ok()) return logits.status();
    if (batch.logit_rows.empty()) return std::vector<int32_t>();
    return model_.LastStageArgmax(*logits);
  }

  static void AddSequence(BatchInput& batch, const Sequence& seq) {
    batch.block_tables.insert(batch.block_tables.end(), seq.blocks.begin(), seq.blocks.end());
    batch.table_begin.push_back(static_cast<int32_t>(batch.block_tables.size()));
  }

  // Every sequence feeds `next` at `position`; `next` becomes its greedy successor.
  absl::Status DecodeStep(std::vector<Sequence>& seqs, int position, bool use_graphs) {
    BatchInput batch;
    batch.table_begin.push_back(0);
    for (size_t s = 0; s < seqs.size(); ++s) {
      batch.tokens.push_back(seqs[s].next);
      batch.positions.push_back(position);
      batch.seq_index.push_back(static_cast<int32_t>(s));
      batch.logit_rows.push_back(static_cast<int32_t>(s));
      AddSequence(batch, seqs[s]);
    }
    auto ids = Step(batch, use_graphs);
    if (!ids.ok()) return ids.status();
    for (size_t s = 0; s < seqs.size(); ++s) seqs[s].next = (*ids)[s];
    return absl::OkStatus();
  }

  // The prompts in steps of at most max_batch_tokens tokens (a prompt may span steps); each
  // sequence's first generated token comes from the step where its prompt ends.
  absl::Status Prefill(std::vector<Sequence>& seqs) {
    size_t s = 0;
    int done = 0;  // tokens of seqs[s] already prefilled
    while (s < seqs.size()) {
      BatchInput batch;
      batch.table_begin.push_back(0);
      std::vector<size_t> ending;
      while (s < seqs.size() && static_cast<int>(batch.tokens.size()) < max_batch_tokens_) {
        const int take =
            std::min(prompt_ - done, max_batch_tokens_ - static_cast<int>(batch.tokens.size()));
        const auto index = static_cast<int32_t>(batch.table_begin.size() - 1);
        for (int i = done; i < done + take; ++i) {
          batch.tokens.push_back(seqs[s].prompt[i]);
          batch.positions.push_back(i);
          batch.seq_index.push_back(index);
        }
        AddSequence(batch, seqs[s]);
        done += take;
        if (done == prompt_) {
          batch.logit_rows.push_back(static_cast<int32_t>(batch.tokens.size()) - 1);
          ending.push_back(s);
          ++s;
          done = 0;
        }
      }
      auto ids = Step(batch, false);
      if (!ids.ok()) return ids.status();
      for (size_t i = 0; i < ending.size(); ++i) seqs[ending[i]].next = (*ids)[i];
    }
    return absl::OkStatus();
  }

  LlamaModel& model_;
  PagedKvCache& cache_;
  DecodeGraphs& graphs_;
  int prompt_, gen_, max_batch_tokens_;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "gpu_decode: %s\n", std::string(status.message()).c_str());
  return 1;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "gpu_decode: decode tok/s of the CUDA backend vs the memory roofline (Llama-2-7B shape, "
      "random bf16)"};
  int layers = 32, prompt = 128, gen = 128, max_batch_tokens = 8192, copy_gib = 1;
  uint64_t seed = 1;
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  std::string json_path;
  const CLI::Range kPositive(1, 1 << 30);
  app.add_option("--layers", layers, "Decoder layers (32 for the real shape)")->check(kPositive);
  app.add_option("--prompt", prompt, "Prompt tokens per sequence")->check(kPositive);
  app.add_option("--gen", gen, "Decode steps per run")->check(kPositive);
  app.add_option("--batches", batches, "Batch sizes of the throughput runs")
      ->delimiter(',')
      ->check(kPositive);
  app.add_option("--max-batch-tokens", max_batch_tokens, "Most tokens in one prefill step")
      ->check(kPositive);
  app.add_option("--copy-gib", copy_gib, "GiB copied per bandwidth measurement")
      ->check(CLI::Range(1, 4));
  app.add_option("--seed", seed, "Seed of the random weights");
  app.add_option("--json", json_path, "Also write every figure to this JSON file");
  CLI11_PARSE(app, argc, argv);

  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr,
                 "gpu_decode: no CUDA device (or no driver): nothing to measure, skipping\n");
    return 77;
  }
  TinyModelSpec spec{.layers = layers,
                     .hidden = 4096,
                     .heads = 32,
                     .kv_heads = 32,
                     .intermediate = 11008,
                     .vocab = 32000,
                     .seed = seed,
                     .dtype = DType::kBF16};
  auto config = TinyModelConfig(spec);
  if (!config.ok()) return Fail(config.status());
  config->max_position_embeddings = 4096;  // rms eps 1e-5, rope theta 10000, head_dim 128 as given
  if (prompt + gen > config->max_position_embeddings) {
    return Fail(
        absl::InvalidArgumentError("--prompt + --gen exceeds max_position_embeddings 4096"));
  }
  const std::string model_name =
      layers == 32 ? "llama-2-7b shape" : "llama-2-7b shape, " + std::to_string(layers) + " layers";

  cudaDeviceProp prop{};
  CudaCheck(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const double bandwidth = CopyBandwidth(static_cast<size_t>(copy_gib) << 30);
  std::printf("gpu: %s; device copy bandwidth %.1f GB/s (read + write)\n", prop.name,
              bandwidth / 1e9);

  auto backend = CreateCudaBackend(0, DType::kBF16);
  RandomBf16Source weights(*config, seed);
  auto t0 = std::chrono::steady_clock::now();
  auto model = LlamaModel::Load(*config, weights, *backend);
  if (!model.ok()) return Fail(model.status());
  const uint64_t weight_bytes = (*model)->weight_bytes();
  const double roofline = bandwidth / static_cast<double>(weight_bytes);
  std::printf("model: %s, %.2f GiB of weights, generated + loaded in %.1f s\n", model_name.c_str(),
              weight_bytes / 1073741824.0, Seconds(t0));
  std::printf("roofline: %.1f tok/s at batch 1\n", roofline);

  // One cache for the largest batch that fits next to the weights and the prefill activations.
  const int per_seq = Bench::BlocksPerSeq(prompt, gen);
  const uint64_t block_bytes = (*model)->KvBytesPerBlock(kBlockSize);
  const CudaMemory mem = CudaMemoryInfo(0);
  const uint64_t reserve =
      (1ull << 30) + static_cast<uint64_t>(max_batch_tokens) *
                         (8 * config->hidden_size + 3 * config->intermediate_size) * 4;
  auto fits = [&](int b) {
    return (static_cast<uint64_t>(b) * per_seq + 1) * block_bytes + reserve <= mem.free;
  };
  int max_batch = 0;
  for (int b : batches) {
    if (fits(b)) max_batch = std::max(max_batch, b);
  }
  if (!fits(std::max(max_batch, 1))) {
    return Fail(absl::ResourceExhaustedError("kv cache does not fit even for one sequence"));
  }
  max_batch = std::max(max_batch, 1);
  const int64_t num_blocks = static_cast<int64_t>(max_batch) * per_seq + 1;
  PagedKvCache cache = (*model)->NewPagedCache(kBlockSize, num_blocks);
  std::printf("kv cache: %ld blocks of %d tokens, %.2f GiB (largest batch %d)\n",
              static_cast<long>(num_blocks), kBlockSize, num_blocks * block_bytes / 1073741824.0,
              max_batch);
  std::vector<int> graph_sizes;
  for (int size = 1; size <= std::max(256, max_batch); size *= 2) graph_sizes.push_back(size);
  DecodeGraphs graphs(**model, cache, graph_sizes, per_seq, static_cast<int32_t>(num_blocks - 1));
  Bench bench(**model, cache, graphs, prompt, gen, max_batch_tokens);

  // Batch 1, with and without CUDA graphs.
  auto with_graphs = bench.Run(1, true);
  if (!with_graphs.ok()) return Fail(with_graphs.status());
  auto eager = bench.Run(1, false);
  if (!eager.ok()) return Fail(eager.status());
  const double b1 = gen / with_graphs->decode_s, b1_eager = gen / eager->decode_s;
  std::printf(
      "batch 1 decode: %.1f tok/s with graphs%s, %.1f tok/s without; %.1f%% of the roofline\n", b1,
      graphs.enabled() ? "" : " (disabled: eager)", b1_eager, 100.0 * b1 / roofline);
  const auto& a = with_graphs->first_seq_tokens;
  const auto same =
      std::mismatch(a.begin(), a.end(), eager->first_seq_tokens.begin()).first - a.begin();
  std::printf("graphs vs eager: the same greedy tokens for the first %ld of %d\n",
              static_cast<long>(same), gen);

  nlohmann::json throughput = nlohmann::json::array();
  for (int b : batches) {
    if (b > max_batch) {
      std::printf("batch %d: kv cache does not fit\n", b);
      throughput.push_back(
          {{"batch", b}, {"prompt", prompt}, {"gen", gen}, {"error", "kv cache does not fit"}});
      continue;
    }
    auto run = bench.Run(b, true);
    if (!run.ok()) return Fail(run.status());
    const double total = run->prefill_s + run->decode_s;
    const double tok_s = static_cast<double>(b) * gen / total, step_ms = 1e3 * run->decode_s / gen;
    std::printf("batch %d: %.1f output tok/s (prefill %.3f s, decode %.2f ms/step, total %.2f s)\n",
                b, tok_s, run->prefill_s, step_ms, total);
    throughput.push_back({{"batch", b},
                          {"prompt", prompt},
                          {"gen", gen},
                          {"output_tok_s", tok_s},
                          {"total_s", total},
                          {"prefill_s", run->prefill_s},
                          {"decode_step_ms", step_ms}});
  }

  if (!json_path.empty()) {
    const nlohmann::json out = {{"gpu", prop.name},
                                {"model", model_name},
                                {"dtype", "bf16"},
                                {"weight_bytes", weight_bytes},
                                {"copy_bandwidth_gbs", bandwidth / 1e9},
                                {"roofline_tok_s", roofline},
                                {"batch1_decode_tok_s", b1},
                                {"batch1_decode_tok_s_no_graphs", b1_eager},
                                {"batch1_roofline_fraction", b1 / roofline},
                                {"cuda_graphs", graphs.enabled()},
                                {"throughput", throughput}};
    std::ofstream file(json_path);
    file << out.dump(2) << "\n";
    if (!file) return Fail(absl::UnavailableError("cannot write " + json_path));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_decode: %s\n", e.what());
    return 1;
  }
}
