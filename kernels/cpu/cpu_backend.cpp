#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/quant/quant.h"

namespace shardlm {
namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads) : num_threads_(num_threads) {
    if (num_threads < 0) {
      throw std::invalid_argument("CreateCpuBackend: num_threads must be >= 0, got " +
                                  std::to_string(num_threads));
    }
    if (num_threads > 0) openblas_set_num_threads(num_threads);
  }

  std::string_view name() const override { return "cpu"; }

  Tensor Allocate(std::vector<int64_t> shape, DType dtype) override {
    return Tensor::Empty(std::move(shape), dtype);
  }

  // Also converts a non-f32 host tensor: accepting it costs nothing and saves callers a step.
  Tensor ToDevice(const Tensor& host) override { return CopyAsF32("ToDevice", host); }
  Tensor ToHost(const Tensor& t) override { return CopyAsF32("ToHost", t); }
  // Matrices (Linear weights, embedding tables) stay in their checkpoint dtype: decode streams
  // every one of them per token, and 16 bits halve those bytes. f32 tensors and matrices of
  // bf16 / f16 / quantized blocks are used in place, views of the checkpoint's mapping when they
  // come from a file (the shard loader maps their pages at load), so that a rank holds each
  // weight once. The kernels read them with unaligned vector loads (quantized blocks byte-wise),
  // so only element alignment counts; a misaligned one is copied. Everything else (16-bit norm
  // weights and biases) is small and becomes f32, so that only Linear and Embedding see 16 bits.
  Tensor PrepareWeight(const Tensor& host) override {
    cpu::Require(host.device() == Device::kCpu && host.defined(), "PrepareWeight",
                 "expects a defined host tensor", {{"t", &host}});
    const bool half = host.dtype() == DType::kBF16 || host.dtype() == DType::kF16;
    if (IsQuantized(host.dtype()) && host.rank() == 2) return host;
    if ((half && host.rank() == 2) || host.dtype() == DType::kF32) {
      if (reinterpret_cast<uintptr_t>(host.raw()) % DTypeSize(host.dtype()) == 0) return host;
      Tensor out = Tensor::Empty(host.shape(), host.dtype());
      CopyParallel(host.raw(), out.raw(), host.nbytes());
      return out;
    }
    return CopyAsF32("PrepareWeight", host);
  }

  Tensor PrepareWeightColumns(const Tensor& host, int64_t begin, int64_t end) override {
    cpu::Require(host.device() == Device::kCpu && host.defined() && host.rank() == 2 &&
                     IsQuantized(host.dtype()) && 0 <= begin && begin <= end &&
                     end <= host.dim(1),
                 "PrepareWeightColumns", "expects a quantized host matrix and 0 <= begin <= end <= columns",
                 {{"host", &host}});
    const int64_t rows = host.dim(0), width = end - begin;
    Tensor out = Tensor::Empty({rows, width}, DType::kF32);
    quant::DequantizeColumns(host.dtype(), host.raw(), rows, host.dim(1), begin, end,
                             out.data<float>(),
                             [](DType t, const void* src, float* dst, int64_t n) {
                               quant::DequantizeRow(t, src, dst, n);
                             });
    return out;
  }

  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    cpu::Linear(x, w, bias, y, Threads());
  }
  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    cpu::RmsNorm(x, w, eps, y, Threads());
  }
  Tensor UploadIndices(std::span<const int32_t> host) override {
    Tensor t = Tensor::Empty({static_cast<int64_t>(host.size())}, DType::kI32);
    if (!host.empty()) std::memcpy(t.raw(), host.data(), host.size() * sizeof(int32_t));
    return t;
  }
  void WriteIndices(std::span<const int32_t> host, Tensor& dst) override {
    cpu::Require(dst.dtype() == DType::kI32 && dst.device() == Device::kCpu &&
                     dst.numel() >= static_cast<int64_t>(host.size()),
                 "WriteIndices", "expects a host I32 tensor of at least host.size() elements",
                 {{"dst", &dst}});
    if (!host.empty()) std::memcpy(dst.raw(), host.data(), host.size() * sizeof(int32_t));
  }
  void Copy(const Tensor& src, Tensor& dst) override {
    cpu::Require(src.dtype() == dst.dtype() && src.numel() == dst.numel() &&
                     src.device() == Device::kCpu && dst.device() == Device::kCpu,
                 "Copy", "expects host tensors of one dtype and size", {{"src", &src}, {"dst", &dst}});
    if (src.nbytes() > 0) std::memmove(dst.raw(), src.raw(), src.nbytes());
  }
  void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps,
                  Tensor& y) override {
    // Shapes first, so that a bad call leaves x untouched.
    const int64_t d = w.numel();
    cpu::Require(w.rank() == 1 && d > 0 && x.rank() >= 1 && x.dim(-1) == d &&
                     delta.shape() == x.shape() && y.numel() == x.numel() && y.dim(-1) == d,
                 "AddRmsNorm", "expects x, delta, y [n, d] and w [d]",
                 {{"x", &x}, {"delta", &delta}, {"w", &w}, {"y", &y}});
    cpu::Add(x, delta, Threads());
    cpu::RmsNorm(x, w, eps, y, Threads());
  }
  void Rope(Tensor& x, const Tensor& positions, const RopeConfig& rope) override {
    cpu::Rope(x, Ints("Rope", positions), InverseFrequencies(rope), rope.interleaved,
              rope.attention_factor, Threads());
  }
  void RopeWriteKv(const Tensor& qkv, const Tensor& positions, const RopeConfig& rope,
                   const Tensor& rows, Tensor& k_cache, Tensor& v_cache, Tensor& q) override {
    cpu::RopeWriteKv(qkv, Ints("RopeWriteKv", positions), InverseFrequencies(rope),
                     rope.interleaved, rope.attention_factor, Ints("RopeWriteKv", rows), k_cache,
                     v_cache, q, Threads());
  }
  void Embedding(const Tensor& table, const Tensor& ids, Tensor& y) override {
    cpu::Embedding(table, Ints("Embedding", ids), y, Threads());
  }
  void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) override {
    cpu::GluMul(gate, up, act, y, Threads());
  }
  void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y) override {
    cpu::GluMulPacked(gate_up, act, y, Threads());
  }
  void Add(Tensor& x, const Tensor& y) override { cpu::Add(x, y, Threads()); }
  void Scale(Tensor& x, float s) override { cpu::Scale(x, s, Threads()); }
  void ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                      std::span<const float> weights, Tensor& dst) override {
    cpu::RequireHostF32("ScatterAddRows", {{"src", &src}, {"dst", &dst}});
    ScatterAddRowsOnHost(src, rows, weights, dst);  // in place: no copies
  }
  void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w, const Tensor& k_w,
                   float eps) override {
    cpu::HeadRmsNorm(qkv, heads, kv_heads, q_w, k_w, eps, Threads());
  }
  void Argmax(const Tensor& logits, std::span<int32_t> out, std::span<float> values) override {
    cpu::Argmax(logits, out, values, Threads());
  }
  void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& k_cache,
               Tensor& v_cache) override {
    cpu::WriteKv(k, v, Ints("WriteKv", rows), k_cache, v_cache);
  }
  void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const PagedKvIndices& layout, const AttentionParams& params,
                      Tensor& out) override {
    const PagedKvLayout host{layout.block_size, Ints("PagedAttention", layout.positions),
                             Ints("PagedAttention", layout.seq_index),
                             Ints("PagedAttention", layout.table_begin),
                             Ints("PagedAttention", layout.block_tables)};
    cpu::PagedAttention(q, k_cache, v_cache, host, params, out, Threads());
  }

 private:
  // A host I32 index tensor as a span (an undefined tensor: empty).
  static std::span<const int32_t> Ints(const char* op, const Tensor& t) {
    if (!t.defined() && t.numel() == 0) return {};
    cpu::Require(t.dtype() == DType::kI32 && t.device() == Device::kCpu && t.rank() == 1, op,
                 "expects index arrays as host I32 vectors", {{"indices", &t}});
    return {t.data<int32_t>(), static_cast<size_t>(t.numel())};
  }

  // Chunks like ConvertToF32Parallel: a multi-GB checkpoint copies faster on several cores.
  void CopyParallel(const void* src, void* dst, size_t bytes) {
    constexpr size_t kChunk = size_t{1} << 18;
    const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
    const auto* s = static_cast<const char*>(src);
    auto* d = static_cast<char*>(dst);
#pragma omp parallel for num_threads(Threads()) schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const size_t begin = static_cast<size_t>(c) * kChunk;
      std::memcpy(d + begin, s + begin, std::min(kChunk, bytes - begin));
    }
  }

  int Threads() const { return num_threads_ > 0 ? num_threads_ : omp_get_max_threads(); }

  Tensor CopyAsF32(std::string_view op, const Tensor& src) {
    cpu::Require(src.device() == Device::kCpu && src.defined(), op, "expects a defined host tensor",
                 {{"t", &src}});
    Tensor out = Tensor::Empty(src.shape(), DType::kF32);
    cpu::ConvertToF32Parallel(src.dtype(), src.raw(), out.data<float>(), src.numel(), Threads());
    return out;
  }

  // Rope runs for every layer of every step with the same one or two configs; the frequencies
  // are computed once. std::map never moves its values, so the span stays valid after unlock.
  std::span<const float> InverseFrequencies(const RopeConfig& rope) {
    const RopeFrequencyKey key = FrequencyKey(rope);
    std::lock_guard<std::mutex> lock(rope_mu_);
    auto it = inv_freq_cache_.find(key);
    if (it == inv_freq_cache_.end()) {
      it = inv_freq_cache_.emplace(key, RopeInverseFrequencies(rope)).first;
    }
    return it->second;
  }

  const int num_threads_;
  std::mutex rope_mu_;
  std::map<RopeFrequencyKey, std::vector<float>> inv_freq_cache_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int num_threads) {
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace shardlm

namespace shardlm {

std::string BlasCoreName() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

void EnsureBlasKernelsMatchCpu(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  std::string core = BlasCoreName();
  std::transform(core.begin(), core.end(), core.begin(), ::tolower);
  if (core != "prescott") return;
  __builtin_cpu_init();
  const char* better = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                           ? "SkylakeX"
                       : __builtin_cpu_supports("avx2") ? "Haswell"
                                                        : nullptr;
  if (better == nullptr) return;
  setenv("OPENBLAS_CORETYPE", better, 1);
  // Marks the re-executed process, so that it can say why (and never loops).
  setenv("SHARDLM_BLAS_REEXEC", better, 1);
  // The binary's own path, not /proc/self/exe: the process name (ps, /proc/PID/comm) comes from
  // the executed file's name.
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len > 0) {
    self[len] = '\0';
    execv(self, argv);
  }
  // The exec failed: go on with the slow kernels.
  unsetenv("OPENBLAS_CORETYPE");
}

}  // namespace shardlm
