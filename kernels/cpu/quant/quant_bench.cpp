// Benchmark of the quantized kernels (not a test): GB/s of weight bytes streamed by QuantGemv on a
// 4096 x 4096 matrix per type and ISA, hot (one matrix, cache-resident once the L3 holds it) and
// cold (cycling through copies that add up to more than the caches), and GFLOP/s of QuantMatmul
// at n = 512 against f32 sgemm. Each figure is the fastest of many runs (see Time).
//
//   quant_bench [rows=4096] [cols=4096] [n=512] [threads=omp default]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/quant/quant.h"

namespace {

using shardlm::DType;
using namespace shardlm::quant;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of `fn`: the fastest of the repetitions that fill ~`budget` seconds (at least
// 5). The fastest, not the median: on a shared 2-core machine a busy neighbour delays a whole
// OpenMP team by a scheduler time slice (milliseconds, longer than one product), and the
// fastest run is the one that measured the kernel rather than the neighbour.
template <class F>
double Time(F&& fn, double budget = 0.4) {
  fn();  // warm up
  double best = 1e30;
  int reps = 0;
  const double start = Now();
  while (reps < 5 || (Now() - start < budget && reps < 2000)) {
    const double t0 = Now();
    fn();
    best = std::min(best, Now() - t0);
    ++reps;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int64_t cols = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t n = argc > 3 ? std::atoll(argv[3]) : 512;
  const int threads = argc > 4 ? std::atoi(argv[4]) : omp_get_max_threads();
  std::printf("rows %lld cols %lld n %lld threads %d best isa %s\n", static_cast<long long>(rows),
              static_cast<long long>(cols), static_cast<long long>(n), threads,
              IsaName(BestIsa()));

  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  for (float& v : wf) v = dist(rng);
  std::vector<float> x(static_cast<size_t>(cols * n));
  for (float& v : x) v = dist(rng);
  std::vector<float> y(static_cast<size_t>(rows * n));

  const DType types[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1,
                         DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  std::printf("\nQuantGemv, GB/s of weight bytes (hot: one matrix; cold: %s)\n",
              "copies totalling 1 GiB");
  std::printf("%-6s %9s %9s %9s %9s %9s %9s\n", "type", "MiB", "scalar", "avx2", "avx512",
              "cold", "cold-1t");
  for (DType t : types) {
    const size_t bytes = shardlm::DTypeBytes(t, rows * cols);
    std::vector<uint8_t> w(bytes);
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(t, wf.data() + r * cols, w.data() + r * shardlm::DTypeBytes(t, cols), cols);
    }
    std::printf("%-6s %9.1f", shardlm::DTypeName(t), bytes / 1048576.0);
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!IsaSupported(isa)) {
        std::printf(" %9s", "-");
        continue;
      }
      const double s = Time(
          [&] { QuantGemv(t, w.data(), rows, cols, x.data(), y.data(), threads, isa); },
          isa == Isa::kScalar ? 0.2 : 0.4);
      std::printf(" %9.2f", bytes / s / 1e9);
    }
    // Cold: a ring of copies larger than any cache.
    const size_t copies = std::max<size_t>(2, (size_t{1} << 30) / bytes + 1);
    std::vector<uint8_t> ring(bytes * copies);
    for (size_t c = 0; c < copies; ++c) std::memcpy(ring.data() + c * bytes, w.data(), bytes);
    for (int th : {threads, 1}) {
      size_t next = 0;
      const double s = Time([&] {
        QuantGemv(t, ring.data() + next * bytes, rows, cols, x.data(), y.data(), th);
        next = (next + 1) % copies;
      }, 0.6);
      std::printf(" %9.2f", bytes / s / 1e9);
    }
    std::printf("\n");
  }

  // A plain f32 stream for scale: OpenBLAS sgemv over the f32 matrix, hot and cold.
  {
    const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
    auto sgemv = [&](const float* w) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0f,
                  w, static_cast<int>(cols), x.data(), 1, 0.0f, y.data(), 1);
    };
    const double hot = Time([&] { sgemv(wf.data()); });
    const size_t copies = std::max<size_t>(2, (size_t{1} << 30) / bytes + 1);
    std::vector<float> ring(wf.size() * copies);
    for (size_t c = 0; c < copies; ++c) std::copy(wf.begin(), wf.end(), ring.begin() + c * wf.size());
    size_t next = 0;
    const double cold = Time([&] {
      sgemv(ring.data() + next * wf.size());
      next = (next + 1) % copies;
    }, 0.6);
    std::printf("%-6s %9.1f   f32 sgemv (OpenBLAS, %d threads): hot %.2f GB/s, cold %.2f GB/s\n",
                "F32", bytes / 1048576.0, openblas_get_num_threads(), bytes / hot / 1e9,
                bytes / cold / 1e9);
  }

  std::printf("\nQuantMatmul n = %lld, GFLOP/s\n", static_cast<long long>(n));
  const double flops = 2.0 * static_cast<double>(n) * rows * cols;
  {
    const double s = Time([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                  static_cast<int>(rows), static_cast<int>(cols), 1.0f, x.data(),
                  static_cast<int>(cols), wf.data(), static_cast<int>(cols), 0.0f, y.data(),
                  static_cast<int>(rows));
    }, 1.0);
    std::printf("%-6s %9.1f (f32 sgemm, OpenBLAS threads %d)\n", "F32", flops / s / 1e9,
                openblas_get_num_threads());
  }
  for (DType t : types) {
    const size_t bytes = shardlm::DTypeBytes(t, rows * cols);
    std::vector<uint8_t> w(bytes);
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(t, wf.data() + r * cols, w.data() + r * shardlm::DTypeBytes(t, cols), cols);
    }
    const double s = Time([&] {
      QuantMatmul(t, w.data(), rows, cols, x.data(), n, y.data(), rows, threads);
    }, 1.0);
    const double sd = Time([&] {
      DequantizeRow(t, w.data(), wf.data(), rows * cols);
    });
    std::printf("%-6s %9.1f   (dequantize alone: %.2f Gelem/s single thread)\n",
                shardlm::DTypeName(t), flops / s / 1e9, rows * cols / sd / 1e9);
  }
  return 0;
}
