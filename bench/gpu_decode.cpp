// Decode speed of the CUDA backend on a Llama-2-7B-shaped model with random bf16 weights, per
// (batch, context): the time of a decode step at that context against the HBM roofline.
//   build/bin/gpu_decode [--batches 1,8,64] [--contexts 256,4096] [--gen 32] [--layers 32]
//       [--hbm-gbs GB/s] [--max-batch-tokens 8192] [--copy-gib 1] [--seed 1] [--json FILE]
//       [--plan]
// For each context C: sequence 0 is prefilled with C random tokens (timed), its K/V blocks are
// copied to the other sequences of the batch (each has its own blocks, so a step reads B distinct
// caches), then --gen decode steps run at positions C, C+1, ... (CUDA graphs; timed, wall clock,
// every step ends with the greedy ids read back). Bytes a step must read: every weight but the
// embedding table (decode reads B rows of it), plus each sequence's K/V of positions [0, p]. The
// roofline is the HBM peak bandwidth (--hbm-gbs, else the device's memory clock x 2 x bus width);
// the measured device-to-device copy bandwidth is reported beside it. At the first context,
// batch 1 also runs without graphs (the same greedy tokens expected). A cell whose KV cache does
// not fit next to the weights is reported as such, not run.
// --plan: checks the arguments and prints the cells with their bytes per step and KV memory,
// without a GPU. Exits 77 without a CUDA device (without --plan); 2 on bad arguments; 1 on any
// other error.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "formats/random_weights.h"
#include "kernels/cuda/cuda_backend.h"
#include "model/llama.h"
#include "nlohmann/json.hpp"
#include "runtime/decode_graphs.h"

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

// The bytes that decide a decode step's time: bf16 weights, a bf16 KV cache.
struct ModelBytes {
  uint64_t weights = 0;       // every weight as held on the device
  uint64_t embedding = 0;     // the input embedding table (untied): a step reads B rows of it
  uint64_t kv_per_token = 0;  // K and V of one token over all layers

  uint64_t streamed() const { return weights - embedding; }
  // What `steps` decode steps at positions first, first + 1, ... of `batch` sequences must read
  // from memory: the weights once per step, and each sequence's keys and values [0, p] at p.
  double StepsBytes(int batch, int64_t first, int steps) const {
    const double positions = static_cast<double>(steps) * static_cast<double>(first) +
                             0.5 * static_cast<double>(steps) * (steps + 1);
    return static_cast<double>(steps) * static_cast<double>(streamed()) +
           static_cast<double>(batch) * static_cast<double>(kv_per_token) * positions;
  }
};

// From the checkpoint's shapes alone (--plan): what the CUDA backend holds for bf16 weights.
ModelBytes PlannedBytes(const ModelConfig& c) {
  ModelBytes b;
  for (const auto& [name, shape] : CheckpointTensorShapes(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    b.weights += DTypeBytes(DType::kBF16, n);
  }
  b.embedding = c.tie_word_embeddings ? 0 : DTypeBytes(DType::kBF16, c.vocab_size * c.hidden_size);
  b.kv_per_token = DTypeBytes(DType::kBF16, 2 * c.num_layers * c.num_kv_heads * c.head_dim);
  return b;
}

int BlocksPerSeq(int64_t context, int gen) {
  return static_cast<int>((context + gen + kBlockSize - 1) / kBlockSize);
}

// Device memory a context's cache takes for `batch` sequences (+1: the graphs' padding block),
// and what the prefill of one sequence needs beside it (activations of its longest step, 1 GiB
// for cuBLAS workspaces and the graphs' buffers).
uint64_t CacheBytes(int batch, int64_t context, int gen, uint64_t kv_per_token) {
  return (static_cast<uint64_t>(batch) * BlocksPerSeq(context, gen) + 1) * kBlockSize *
         kv_per_token;
}
uint64_t ReserveBytes(const ModelConfig& c, int64_t context, int max_batch_tokens) {
  const auto tokens = static_cast<uint64_t>(std::min<int64_t>(context, max_batch_tokens));
  return (1ull << 30) +
         tokens * static_cast<uint64_t>(8 * c.hidden_size + 3 * c.intermediate_size) * 4;
}

double GiB(double bytes) { return bytes / 1073741824.0; }

struct Sequence {
  std::vector<int32_t> blocks;
  int32_t next = 0;  // the token to feed at the next decode step
};

struct CellTimes {
  double prefill_s = 0, decode_s = 0;
  std::vector<int32_t> first_seq_tokens;  // what sequence 0 generated, for the graphs check
};

// The cells of one context: B sequences in one cache, sequence s owning blocks
// [s * per_seq, (s + 1) * per_seq).
class ContextBench {
 public:
  ContextBench(LlamaModel& model, PagedKvCache& cache, DecodeGraphs& graphs, int64_t context,
               int gen, int max_batch_tokens)
      : model_(model),
        cache_(cache),
        graphs_(graphs),
        context_(context),
        gen_(gen),
        max_batch_tokens_(max_batch_tokens),
        per_seq_(BlocksPerSeq(context, gen)) {}

  // Two warm-up decode steps at position 0 (the first records this size's graph, the second
  // replays it; the prefill overwrites their K/V), the timed prefill of sequence 0, its K/V copied
  // to the others, then `gen` timed greedy decode steps from position `context`.
  absl::StatusOr<CellTimes> Run(int batch, bool use_graphs) {
    std::vector<Sequence> seqs(static_cast<size_t>(batch));
    for (int s = 0; s < batch; ++s) {
      for (int b = 0; b < per_seq_; ++b) seqs[s].blocks.push_back(s * per_seq_ + b);
    }
    for (int i = 0; i < 2; ++i) {
      if (absl::Status st = DecodeStep(seqs, 0, use_graphs); !st.ok()) return st;
    }
    CellTimes times;
    auto t0 = std::chrono::steady_clock::now();
    if (absl::Status st = Prefill(seqs[0]); !st.ok()) return st;
    times.prefill_s = Seconds(t0);
    CopyPrefix(seqs);
    t0 = std::chrono::steady_clock::now();
    for (int step = 0; step < gen_; ++step) {
      times.first_seq_tokens.push_back(seqs[0].next);
      const auto position = static_cast<int32_t>(context_ + step);
      if (absl::Status st = DecodeStep(seqs, position, use_graphs); !st.ok()) return st;
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
  absl::Status DecodeStep(std::vector<Sequence>& seqs, int32_t position, bool use_graphs) {
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

  // `context` random tokens (the same for every cell of this context) in steps of at most
  // max_batch_tokens; the last step's greedy id is the sequence's first decode input.
  absl::Status Prefill(Sequence& seq) {
    uint64_t rng = static_cast<uint64_t>(context_);
    for (int64_t begin = 0; begin < context_; begin += max_batch_tokens_) {
      const int64_t end = std::min<int64_t>(context_, begin + max_batch_tokens_);
      BatchInput batch;
      batch.table_begin.push_back(0);
      for (int64_t i = begin; i < end; ++i) {
        rng = Mix(rng);
        batch.tokens.push_back(static_cast<int32_t>(rng % model_.config().vocab_size));
        batch.positions.push_back(static_cast<int32_t>(i));
        batch.seq_index.push_back(0);
      }
      AddSequence(batch, seq);
      if (end == context_) batch.logit_rows.push_back(static_cast<int32_t>(end - begin - 1));
      auto ids = Step(batch, false);
      if (!ids.ok()) return ids.status();
      if (end == context_) seq.next = (*ids)[0];
    }
    return absl::OkStatus();
  }

  // Sequence 0's K/V of positions [0, context) into every other sequence's own blocks: the
  // blocks of a sequence are consecutive, so one copy per layer, K and V, and sequence.
  void CopyPrefix(std::vector<Sequence>& seqs) {
    model_.backend().Synchronize();
    const int64_t blocks = (context_ + kBlockSize - 1) / kBlockSize;
    for (std::vector<Tensor>* caches : {&cache_.k, &cache_.v}) {
      for (Tensor& t : *caches) {
        const size_t block_bytes = t.nbytes() / static_cast<size_t>(cache_.num_blocks);
        auto* base = static_cast<char*>(t.raw());
        for (size_t s = 1; s < seqs.size(); ++s) {
          CudaCheck(cudaMemcpy(base + s * per_seq_ * block_bytes, base, blocks * block_bytes,
                               cudaMemcpyDeviceToDevice),
                    "cudaMemcpy (K/V prefix to another sequence)");
        }
      }
    }
    CudaCheck(cudaDeviceSynchronize(), "cudaDeviceSynchronize (after the K/V copies)");
    for (size_t s = 1; s < seqs.size(); ++s) seqs[s].next = seqs[0].next;
  }

  LlamaModel& model_;
  PagedKvCache& cache_;
  DecodeGraphs& graphs_;
  int64_t context_;
  int gen_, max_batch_tokens_, per_seq_;
};

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "gpu_decode: %s\n", std::string(status.message()).c_str());
  return 1;
}

// Sorted, without repeats.
template <typename T>
std::vector<T> Unique(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "gpu_decode: decode speed of the CUDA backend per batch and context vs the HBM roofline "
      "(Llama-2-7B shape, random bf16)"};
  int layers = 32, gen = 32, max_batch_tokens = 8192, copy_gib = 1;
  uint64_t seed = 1;
  double hbm_gbs = 0;
  std::vector<int> batches = {1, 8, 64};
  std::vector<int64_t> contexts = {256, 4096};
  std::string json_path;
  bool plan_only = false;
  app.add_option("--layers", layers, "Decoder layers (32 for the real shape)")
      ->check(CLI::Range(1, 256));
  app.add_option("--batches", batches, "Batch sizes (sequences decoded together)")
      ->delimiter(',')
      ->check(CLI::Range(1, 4096));
  app.add_option("--contexts", contexts,
                 "Context lengths: tokens in each sequence's cache when the timed steps start")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--gen", gen, "Timed decode steps per cell")->check(CLI::Range(1, 1 << 16));
  app.add_option("--hbm-gbs", hbm_gbs,
                 "HBM peak bandwidth in GB/s for the roofline (default: the device's memory "
                 "clock x 2 x bus width)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-batch-tokens", max_batch_tokens, "Most tokens in one prefill step")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--copy-gib", copy_gib, "GiB copied per bandwidth measurement")
      ->check(CLI::Range(1, 4));
  app.add_option("--seed", seed, "Seed of the random weights");
  app.add_option("--json", json_path, "Also write every figure to this JSON file");
  app.add_flag("--plan", plan_only,
               "Print the cells, their bytes per step and KV memory, and exit (no GPU needed)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the help or the error
    return rc == 0 ? 0 : 2;
  }
  batches = Unique(batches);
  contexts = Unique(contexts);

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
  // Llama-2 says 4096; nothing in the model depends on it, and longer contexts are asked for.
  config->max_position_embeddings = std::max<int64_t>(4096, contexts.back() + gen);
  const std::string model_name =
      layers == 32 ? "llama-2-7b shape" : "llama-2-7b shape, " + std::to_string(layers) + " layers";
  ModelBytes bytes = PlannedBytes(*config);

  if (plan_only) {
    std::printf(
        "plan: %s, bf16: %.3f GB of weights, %.3f GB streamed per step, %lu bytes of "
        "K/V per token; %d timed steps per cell\n",
        model_name.c_str(), bytes.weights / 1e9, bytes.streamed() / 1e9,
        static_cast<unsigned long>(bytes.kv_per_token), gen);
    for (int64_t c : contexts) {
      for (int b : batches) {
        std::printf("plan: batch %d context %ld: %.3f GB read per step, KV cache %.2f GiB\n", b,
                    static_cast<long>(c), bytes.StepsBytes(b, c, gen) / gen / 1e9,
                    GiB(static_cast<double>(CacheBytes(b, c, gen, bytes.kv_per_token))));
      }
    }
    return 0;
  }

  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr,
                 "gpu_decode: no CUDA device (or no driver): nothing to measure, skipping\n");
    return 77;
  }
  cudaDeviceProp prop{};
  CudaCheck(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  int mem_clock_khz = 0, bus_bits = 0;
  CudaCheck(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0),
            "cudaDeviceGetAttribute (memory clock)");
  CudaCheck(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0),
            "cudaDeviceGetAttribute (memory bus width)");
  // Double data rate: two transfers per clock over the whole bus.
  const double clock_gbs = 2.0 * mem_clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  const bool peak_given = hbm_gbs > 0;
  const double peak_gbs = peak_given ? hbm_gbs : clock_gbs;
  if (peak_gbs <= 0) {
    return Fail(absl::FailedPreconditionError(
        "the device reports no memory clock or bus width: give the HBM bandwidth with --hbm-gbs"));
  }
  const double copy_gbs = CopyBandwidth(static_cast<size_t>(copy_gib) << 30) / 1e9;
  std::printf(
      "gpu: %s; HBM peak %.0f GB/s (%s; memory clock %d MHz x 2 x %d bits = %.0f GB/s); "
      "device copy %.0f GB/s (read + write)\n",
      prop.name, peak_gbs, peak_given ? "--hbm-gbs" : "clock x bus width", mem_clock_khz / 1000,
      bus_bits, clock_gbs, copy_gbs);

  auto backend = CreateCudaBackend(0, DType::kBF16);
  RandomBf16Source weights(*config, seed);
  auto t0 = std::chrono::steady_clock::now();
  auto model = LlamaModel::Load(*config, weights, *backend);
  if (!model.ok()) return Fail(model.status());
  bytes.weights = (*model)->weight_bytes();
  bytes.kv_per_token = (*model)->KvBytesPerBlock(kBlockSize) / kBlockSize;
  std::printf(
      "model: %s, %.2f GB of weights (%.2f GB streamed per step), generated + loaded in "
      "%.1f s\n",
      model_name.c_str(), bytes.weights / 1e9, bytes.streamed() / 1e9, Seconds(t0));
  std::printf("roofline at batch 1, no context: %.1f tok/s\n", peak_gbs * 1e9 / bytes.streamed());

  nlohmann::json cells = nlohmann::json::array();
  nlohmann::json graphs_check;
  bool graphs_enabled = false;
  for (int64_t context : contexts) {
    const int per_seq = BlocksPerSeq(context, gen);
    const uint64_t reserve = ReserveBytes(*config, context, max_batch_tokens);
    const uint64_t free = CudaMemoryInfo(0).free;
    std::vector<int> fit;
    for (int b : batches) {
      const uint64_t need = CacheBytes(b, context, gen, bytes.kv_per_token);
      if (need + reserve <= free) {
        fit.push_back(b);
        continue;
      }
      char why[160];
      std::snprintf(why, sizeof why,
                    "kv cache does not fit: %.1f GiB + %.1f GiB reserve > %.1f "
                    "GiB free",
                    GiB(need), GiB(reserve), GiB(free));
      std::printf("batch %d context %ld: %s\n", b, static_cast<long>(context), why);
      cells.push_back({{"batch", b}, {"context", context}, {"error", why}});
    }
    if (fit.empty()) continue;
    {  // this context's cache and graphs, freed before the next context's
      const int64_t num_blocks = static_cast<int64_t>(fit.back()) * per_seq + 1;
      PagedKvCache cache = (*model)->NewPagedCache(kBlockSize, num_blocks);
      DecodeGraphs graphs(**model, cache, fit, per_seq, static_cast<int32_t>(num_blocks - 1));
      graphs_enabled = graphs.enabled();
      ContextBench bench(**model, cache, graphs, context, gen, max_batch_tokens);
      std::printf("context %ld: kv cache %ld blocks of %d tokens, %.2f GiB (batches up to %d)\n",
                  static_cast<long>(context), static_cast<long>(num_blocks), kBlockSize,
                  GiB(static_cast<double>(num_blocks) * kBlockSize * bytes.kv_per_token),
                  fit.back());
      for (int b : fit) {
        auto run = bench.Run(b, true);
        if (!run.ok()) return Fail(run.status());
        const double step_bytes = bytes.StepsBytes(b, context, gen) / gen;
        const double step_s = run->decode_s / gen;
        const double achieved_gbs = step_bytes / step_s / 1e9;
        const double tok_s = b / step_s;
        std::printf(
            "batch %d context %ld: %.1f tok/s, %.3f ms/step, %.2f GB/step, %.0f GB/s = "
            "%.1f%% of HBM peak (%.1f%% of copy); prefill %ld tokens %.2f s\n",
            b, static_cast<long>(context), tok_s, 1e3 * step_s, step_bytes / 1e9, achieved_gbs,
            100 * achieved_gbs / peak_gbs, 100 * achieved_gbs / copy_gbs,
            static_cast<long>(context), run->prefill_s);
        cells.push_back({{"batch", b},
                         {"context", context},
                         {"gen", gen},
                         {"decode_tok_s", tok_s},
                         {"decode_step_ms", 1e3 * step_s},
                         {"bytes_per_step", step_bytes},
                         {"achieved_gbs", achieved_gbs},
                         {"roofline_fraction", achieved_gbs / peak_gbs},
                         {"copy_fraction", achieved_gbs / copy_gbs},
                         {"prefill_s", run->prefill_s},
                         {"prefill_tok_s", static_cast<double>(context) / run->prefill_s}});
        if (b == 1 && graphs_check.is_null()) {
          // The same cell without graphs: the same greedy tokens, and what the graphs gain.
          auto eager = bench.Run(1, false);
          if (!eager.ok()) return Fail(eager.status());
          const auto& a = run->first_seq_tokens;
          const auto same =
              std::mismatch(a.begin(), a.end(), eager->first_seq_tokens.begin()).first - a.begin();
          std::printf(
              "batch 1 context %ld without graphs: %.1f tok/s; the same greedy tokens for "
              "the first %ld of %d\n",
              static_cast<long>(context), gen / eager->decode_s, static_cast<long>(same), gen);
          graphs_check = {{"context", context},
                          {"graphs_tok_s", tok_s},
                          {"eager_tok_s", gen / eager->decode_s},
                          {"same_tokens", same},
                          {"of", gen}};
        }
      }
    }
    // The backend frees through the device's memory pool, which keeps what it frees: hand it back
    // so that the next context's cache sees the whole of the free memory.
    backend->Synchronize();
    cudaMemPool_t pool = nullptr;
    CudaCheck(cudaDeviceGetDefaultMemPool(&pool, 0), "cudaDeviceGetDefaultMemPool");
    CudaCheck(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
  }

  if (!json_path.empty()) {
    const nlohmann::json out = {{"gpu", prop.name},
                                {"model", model_name},
                                {"dtype", "bf16"},
                                {"weight_bytes", bytes.weights},
                                {"streamed_weight_bytes", bytes.streamed()},
                                {"kv_bytes_per_token", bytes.kv_per_token},
                                {"hbm_peak_gbs", peak_gbs},
                                {"hbm_peak_source", peak_given ? "--hbm-gbs" : "clock x bus width"},
                                {"hbm_clock_gbs", clock_gbs},
                                {"memory_clock_mhz", mem_clock_khz / 1000},
                                {"memory_bus_bits", bus_bits},
                                {"copy_bandwidth_gbs", copy_gbs},
                                {"cuda_graphs", graphs_enabled},
                                {"graphs_vs_eager", graphs_check},
                                {"cells", cells}};
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
