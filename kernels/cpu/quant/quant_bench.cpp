// Benchmark of the quantized kernels (not a test): GB/s of weight bytes streamed by QuantGemv on a
// 4096 x 4096 matrix per type and ISA, hot (one matrix, cache-resident once the L3 holds it) and
// cold (cycling through copies that add up to more than the caches), GFLOP/s of QuantMatmul
// at n = 512 against f32 sgemm, and QuantMatmul at the small batches of continuous-batching
// decode (n = 8 and 32): GFLOP/s, the effective GB/s of weight bytes, and the time relative to
// one QuantGemv. Each figure is the fastest of many runs (see Time).
//
//   quant_bench [rows=4096] [cols=4096] [n=512] [threads=omp default] [sections=all] [isa=all]
//
// sections: "all", or a comma-separated subset of "gemv", "matmul" (n = the third argument),
// "small" (n = 8, 32) and "paths" (both paths of QuantMatmul against n, for the ISAs named by
// the last argument: "all", "scalar", "avx2" or "avx512").
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/quant/quant.h"
#include "kernels/cpu/quant/quant_internal.h"

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
  const std::string sections = argc > 5 ? argv[5] : "all";
  const std::string paths_isa = argc > 6 ? argv[6] : "all";
  auto section = [&](const char* name) {
    return sections == "all" || ("," + sections + ",").find(std::string(",") + name + ",") !=
                                    std::string::npos;
  };
  std::printf("rows %lld cols %lld n %lld threads %d best isa %s\n", static_cast<long long>(rows),
              static_cast<long long>(cols), static_cast<long long>(n), threads,
              IsaName(BestIsa()));

  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> wf(static_cast<size_t>(rows * cols));
  for (float& v : wf) v = dist(rng);
  constexpr int64_t kSmallBatches[] = {8, 32};
  std::vector<float> x(static_cast<size_t>(cols * std::max<int64_t>(n, 32)));
  for (float& v : x) v = dist(rng);
  std::vector<float> y(static_cast<size_t>(rows * std::max<int64_t>(n, 32)));

  const DType types[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                         DType::kQ5_1, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};
  auto quantize = [&](DType t) {
    std::vector<uint8_t> w(shardlm::DTypeBytes(t, rows * cols));
    for (int64_t r = 0; r < rows; ++r) {
      QuantizeRow(t, wf.data() + r * cols, w.data() + r * shardlm::DTypeBytes(t, cols), cols);
    }
    return w;
  };

  if (section("gemv")) {
    std::printf("\nQuantGemv, GB/s of weight bytes (hot: one matrix; cold: %s)\n",
                "copies totalling 1 GiB");
    std::printf("%-6s %9s %9s %9s %9s %9s %9s\n", "type", "MiB", "scalar", "avx2", "avx512",
                "cold", "cold-1t");
    for (DType t : types) {
      if (cols % shardlm::DTypeBlockElements(t) != 0) continue;
      const std::vector<uint8_t> w = quantize(t);
      const size_t bytes = w.size();
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
    const size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
    auto sgemv = [&](const float* w) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols),
                  1.0f, w, static_cast<int>(cols), x.data(), 1, 0.0f, y.data(), 1);
    };
    const double hot = Time([&] { sgemv(wf.data()); });
    const size_t copies = std::max<size_t>(2, (size_t{1} << 30) / bytes + 1);
    std::vector<float> ring(wf.size() * copies);
    for (size_t c = 0; c < copies; ++c) {
      std::copy(wf.begin(), wf.end(), ring.begin() + static_cast<std::ptrdiff_t>(c * wf.size()));
    }
    size_t next = 0;
    const double cold = Time([&] {
      sgemv(ring.data() + next * wf.size());
      next = (next + 1) % copies;
    }, 0.6);
    std::printf("%-6s %9.1f   f32 sgemv (OpenBLAS, %d threads): hot %.2f GB/s, cold %.2f GB/s\n",
                "F32", bytes / 1048576.0, openblas_get_num_threads(), bytes / hot / 1e9,
                bytes / cold / 1e9);
  }

  if (section("matmul")) {
    std::printf("\nQuantMatmul n = %lld, GFLOP/s\n", static_cast<long long>(n));
    const double flops = 2.0 * static_cast<double>(n) * rows * cols;
    const double s = Time([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
                  static_cast<int>(rows), static_cast<int>(cols), 1.0f, x.data(),
                  static_cast<int>(cols), wf.data(), static_cast<int>(cols), 0.0f, y.data(),
                  static_cast<int>(rows));
    }, 1.0);
    std::printf("%-6s %9.1f (f32 sgemm, OpenBLAS threads %d)\n", "F32", flops / s / 1e9,
                openblas_get_num_threads());
    std::vector<float> wd(wf.size());
    for (DType t : types) {
      if (cols % shardlm::DTypeBlockElements(t) != 0) continue;
      const std::vector<uint8_t> w = quantize(t);
      const double sq = Time([&] {
        QuantMatmul(t, w.data(), rows, cols, x.data(), n, y.data(), rows, threads);
      }, 1.0);
      const double sd = Time([&] { DequantizeRow(t, w.data(), wd.data(), rows * cols); });
      std::printf("%-6s %9.1f   (dequantize alone: %.2f Gelem/s single thread)\n",
                  shardlm::DTypeName(t), flops / sq / 1e9, rows * cols / sd / 1e9);
    }
  }

  if (section("small")) {
    // Hot weights: one matrix, reused call after call. The figures to read are the cost per
    // weight byte and the time next to QuantGemv's over the same bytes.
    std::printf("\nQuantMatmul small batches (hot): us per call, GFLOP/s, GB/s of weight bytes, "
                "time / QuantGemv's\n");
    std::printf("%-6s %8s %9s", "type", "MiB", "gemv us");
    for (int64_t nb : kSmallBatches) {
      std::printf(" %7s%-2lld %7s %7s %6s", "us n=", static_cast<long long>(nb), "GFLOP/s",
                  "GB/s", "x gemv");
    }
    std::printf("\n");
    for (DType t : types) {
      if (cols % shardlm::DTypeBlockElements(t) != 0) continue;
      const std::vector<uint8_t> w = quantize(t);
      const double bytes = static_cast<double>(w.size());
      const double s1 = Time([&] {
        QuantGemv(t, w.data(), rows, cols, x.data(), y.data(), threads);
      });
      std::printf("%-6s %8.2f %9.1f", shardlm::DTypeName(t), bytes / 1048576.0, s1 * 1e6);
      for (int64_t nb : kSmallBatches) {
        const double s = Time([&] {
          QuantMatmul(t, w.data(), rows, cols, x.data(), nb, y.data(), rows, threads);
        }, 0.6);
        std::printf(" %9.1f %7.1f %7.2f %6.2f", s * 1e6,
                    2.0 * static_cast<double>(nb) * rows * cols / s / 1e9, bytes / s / 1e9,
                    s / s1);
      }
      std::printf("\n");
    }
  }

  if (section("paths")) {
    // The two paths of QuantMatmul for n > 1 side by side, per ISA, to place the cutoff between
    // them (internal::SmallBatchLimit); "-" past what the small-batch kernels take. With one
    // thread, OpenBLAS is held to one too, so that both sides run on one core.
    const int64_t batches[] = {2, 4, 8, 12, 16, 24, 32, 48, 64};
    x.resize(static_cast<size_t>(cols * 64));
    y.resize(static_cast<size_t>(rows * 64));
    const int blas_threads = openblas_get_num_threads();
    if (threads == 1) openblas_set_num_threads(1);
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      if (!IsaSupported(isa) || (paths_isa != "all" && paths_isa != IsaName(isa))) continue;
      std::printf("\nQuantMatmul paths (hot, %s), us per call: small-batch kernels / dequantize "
                  "+ sgemm\n%-6s", IsaName(isa), "type");
      for (int64_t nb : batches) std::printf(" %11s%-2lld", "n=", static_cast<long long>(nb));
      std::printf("\n");
      for (DType t : types) {
        if (cols % shardlm::DTypeBlockElements(t) != 0) continue;
        const std::vector<uint8_t> w = quantize(t);
        std::printf("%-6s", shardlm::DTypeName(t));
        const double budget = isa == Isa::kScalar ? 0.1 : 0.3;
        for (int64_t nb : batches) {
          const double sgemm = Time([&] {
            internal::QuantMatmulSgemm(t, w.data(), rows, cols, x.data(), nb, y.data(), rows,
                                       threads, isa);
          }, budget);
          if (nb > internal::kMaxSmallBatch) {
            std::printf(" %6s/%-6.0f", "-", sgemm * 1e6);
            continue;
          }
          const double small = Time([&] {
            internal::QuantMatmulSmall(t, w.data(), rows, cols, x.data(), nb, y.data(), rows,
                                       threads, isa);
          }, budget);
          std::printf(" %6.0f/%-6.0f", small * 1e6, sgemm * 1e6);
        }
        std::printf("  limit %lld\n", static_cast<long long>(internal::SmallBatchLimit(t, isa)));
      }
    }
    openblas_set_num_threads(blas_threads);
  }
  return 0;
}
