// Decode attention alone on the CUDA backend: one query token per sequence over a paged KV cache,
// at each batch size and context, timed as a CUDA graph of --iters calls (as decode steps run),
// with the bytes of K and V read per call and the rate (compare with the copy bandwidth that
// gpu_decode prints for the same GPU).
//   build/bin/gpu_attention [--heads 32] [--kv-heads 8] [--head-dim 128] [--cache bf16|f32]
//       [--batches 1,8,64] [--contexts 256,4096] [--iters 20]
// Exits 77 without a CUDA device; 1 on any error.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_attention.h"
#include "kernels/cuda/cuda_backend.h"

using namespace shardlm;

namespace {

constexpr int kBlockSize = 16;

void CudaCheck(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(rc));
  }
}

struct Options {
  int heads = 32, kv_heads = 8, head_dim = 128, iters = 20;
  std::string cache = "bf16";
  std::vector<int> batches = {1, 8, 64}, contexts = {256, 4096};
};

// Milliseconds per attention call for `batch` sequences whose last token is at context - 1.
double TimeOne(Backend& b, const Options& o, DType cache_dtype, int batch, int context) {
  const int per_seq = (context + kBlockSize - 1) / kBlockSize;
  const int64_t rows = int64_t{batch} * per_seq * kBlockSize;
  // Zeros: the values do not change the work.
  Tensor k = b.Allocate({rows, o.kv_heads, o.head_dim}, cache_dtype);
  Tensor v = b.Allocate({rows, o.kv_heads, o.head_dim}, cache_dtype);
  Tensor q = b.Allocate({batch, o.heads, o.head_dim});
  Tensor out = b.Allocate({batch, o.heads * o.head_dim});
  std::vector<int32_t> positions(batch, context - 1), seq(batch), begin(batch + 1),
      tables(static_cast<size_t>(batch) * per_seq);
  for (int s = 0; s < batch; ++s) seq[s] = s;
  for (int s = 0; s <= batch; ++s) begin[s] = s * per_seq;
  // Sequences interleaved block by block, as a busy server hands blocks out.
  for (int s = 0; s < batch; ++s) {
    for (int j = 0; j < per_seq; ++j) tables[static_cast<size_t>(s) * per_seq + j] = j * batch + s;
  }
  const PagedKvIndices idx =
      b.UploadLayout(PagedKvLayout{kBlockSize, positions, seq, begin, tables});
  const AttentionParams p{o.heads, o.kv_heads, o.head_dim,
                          1.0f / std::sqrt(static_cast<float>(o.head_dim)), 0};
  b.PagedAttention(q, k, v, idx, p, out);  // warm-up outside the capture
  b.Synchronize();
  if (!b.BeginCapture()) throw std::runtime_error("the CUDA backend did not start a capture");
  for (int i = 0; i < o.iters; ++i) b.PagedAttention(q, k, v, idx, p, out);
  std::unique_ptr<BackendGraph> graph = b.EndCapture();
  graph->Replay();  // warm-up
  b.Synchronize();
  cudaStream_t stream = CudaBackendStream(b);
  cudaEvent_t start = nullptr, stop = nullptr;
  CudaCheck(cudaEventCreate(&start), "cudaEventCreate");
  CudaCheck(cudaEventCreate(&stop), "cudaEventCreate");
  constexpr int kReplays = 5;
  CudaCheck(cudaEventRecord(start, stream), "cudaEventRecord");
  for (int r = 0; r < kReplays; ++r) graph->Replay();
  CudaCheck(cudaEventRecord(stop, stream), "cudaEventRecord");
  CudaCheck(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  CudaCheck(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(stop);
  cudaEventDestroy(start);
  return static_cast<double>(ms) / (kReplays * o.iters);
}

int Run(const Options& o) {
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "gpu_attention: no CUDA device\n");
    return 77;
  }
  const DType cache_dtype = o.cache == "f32" ? DType::kF32 : DType::kBF16;
  std::unique_ptr<Backend> b = CreateCudaBackend(0, cache_dtype);
  cudaDeviceProp prop{};
  CudaCheck(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("%s, %d SMs; heads %d / %d KV, head_dim %d, %s cache, block %d\n", prop.name,
              prop.multiProcessorCount, o.heads, o.kv_heads, o.head_dim, o.cache.c_str(),
              kBlockSize);
  std::printf("%6s %8s %10s %12s %10s %8s %6s\n", "batch", "context", "us/call", "KV MiB/call",
              "GB/s", "chunks", "tiles");
  const int elem = cache_dtype == DType::kF32 ? 4 : 2;
  for (int batch : o.batches) {
    for (int context : o.contexts) {
      const double ms = TimeOne(*b, o, cache_dtype, batch, context);
      const double bytes =
          2.0 * batch * static_cast<double>(context) * o.kv_heads * o.head_dim * elem;
      cuda::AttentionArgs a;
      a.cache_kind = cache_dtype == DType::kF32 ? cuda::HalfKind::kF32 : cuda::HalfKind::kBF16;
      a.k_cache = a.v_cache = reinterpret_cast<const void*>(uintptr_t{256});
      a.n = a.num_seqs = batch;
      a.heads = o.heads;
      a.kv_heads = o.kv_heads;
      a.head_dim = o.head_dim;
      a.block_size = kBlockSize;
      const cuda::AttentionPlan plan = cuda::PlanAttention(a, prop.multiProcessorCount);
      std::printf("%6d %8d %10.1f %12.2f %10.1f %8d %6d\n", batch, context, ms * 1e3,
                  bytes / (1 << 20), bytes / (ms * 1e-3) / 1e9, plan.splits, plan.grid_x);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Times the CUDA decode attention alone and prints the K/V read rate"};
  const CLI::Range kPositive(1, 1 << 20);
  app.add_option("--heads", o.heads, "Query heads")->check(kPositive);
  app.add_option("--kv-heads", o.kv_heads, "KV heads (a divisor of --heads)")->check(kPositive);
  app.add_option("--head-dim", o.head_dim, "Features per head")->check(CLI::Range(1, 256));
  app.add_option("--cache", o.cache, "KV cache dtype")->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--batches", o.batches, "Sequences per call")->delimiter(',')->check(kPositive);
  app.add_option("--contexts", o.contexts, "Keys per sequence")->delimiter(',')->check(kPositive);
  app.add_option("--iters", o.iters, "Calls per recorded graph")->check(kPositive);
  CLI11_PARSE(app, argc, argv);
  if (o.heads % o.kv_heads != 0) {
    std::fprintf(stderr, "gpu_attention: --heads %d is not a multiple of --kv-heads %d\n", o.heads,
                 o.kv_heads);
    return 1;
  }
  try {
    return Run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_attention: %s\n", e.what());
    return 1;
  }
}
