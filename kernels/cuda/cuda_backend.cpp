#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/dtype.h"

// Every CUDA runtime / cuBLAS call goes through these: a failure throws std::runtime_error
// naming the call, the file, the line and the error.
#define SHARDLM_CUDA_CHECK(call) \
  ::shardlm::cuda::ThrowCudaError(static_cast<int>(call), #call, __FILE__, __LINE__)
#define SHARDLM_CUBLAS_CHECK(call) \
  ::shardlm::ThrowCublasError(static_cast<int>(call), #call, __FILE__, __LINE__)

namespace shardlm {
namespace {

void ThrowCublasError(int status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const auto s = static_cast<cublasStatus_t>(status);
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
}

[[noreturn]] void ThrowShape(std::string_view op, std::string_view what,
                             std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  std::string msg = std::string(op) + ": " + std::string(what) + " (";
  bool first = true;
  for (const auto& [name, t] : ts) {
    if (!first) msg += ", ";
    first = false;
    msg += name;
    msg += ' ';
    msg += t->ShapeString();
    msg += ' ';
    msg += DTypeName(t->dtype());
    msg += t->device() == Device::kCuda ? " on device" : " on host";
  }
  msg += ')';
  throw std::invalid_argument(msg);
}

void Require(bool ok, std::string_view op, std::string_view what,
             std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  if (!ok) [[unlikely]] ThrowShape(op, what, ts);
}

// Device f32 tensors only.
void RequireDeviceF32(std::string_view op,
                      std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
  for (const auto& [name, t] : ts) {
    if (t->dtype() != DType::kF32 || t->device() != Device::kCuda || !t->defined()) [[unlikely]] {
      ThrowShape(op, "expects defined device f32 tensors", ts);
    }
  }
}

bool IsHalf(DType d) { return d == DType::kBF16 || d == DType::kF16; }

cuda::HalfKind KindOf(DType d) {
  return d == DType::kBF16 ? cuda::HalfKind::kBF16
                           : (d == DType::kF16 ? cuda::HalfKind::kF16 : cuda::HalfKind::kF32);
}

// A device buffer that grows on demand (never shrinks); for per-call index arrays and
// converted activations.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // no throwing from a destructor
  }
  void* Get(size_t bytes) {
    if (bytes > size_) {
      if (ptr_ != nullptr) SHARDLM_CUDA_CHECK(cudaFree(ptr_));
      ptr_ = nullptr;
      size_ = 0;
      SHARDLM_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
      size_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("CreateCudaBackend: no usable CUDA device: ") +
                               cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
    }
    if (device < 0 || device >= count) {
      throw std::runtime_error("CreateCudaBackend: device " + std::to_string(device) +
                               " does not exist (" + std::to_string(count) +
                               " CUDA devices visible)");
    }
    SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
    SHARDLM_CUBLAS_CHECK(cublasCreate(&cublas_));
    // Plain f32 GEMMs (no TF32 tensor cores), to stay within 1e-5 of the CPU backend.
    SHARDLM_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  }
  ~CudaBackend() override {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
  }

  std::string_view name() const override { return "cuda"; }

  Tensor Allocate(std::vector<int64_t> shape, DType dtype) override {
    Tensor probe = Tensor::View(nullptr, shape, dtype, nullptr, Device::kCuda);
    const size_t bytes = probe.nbytes();
    void* ptr = nullptr;
    if (bytes > 0) {
      Activate();
      SHARDLM_CUDA_CHECK(cudaMalloc(&ptr, bytes));
      const cudaError_t err = cudaMemset(ptr, 0, bytes);
      if (err != cudaSuccess) {
        cudaFree(ptr);
        SHARDLM_CUDA_CHECK(err);
      }
    }
    std::shared_ptr<const void> holder(ptr, [](const void* p) {
      if (p != nullptr) cudaFree(const_cast<void*>(p));
    });
    return Tensor::View(ptr, std::move(shape), dtype, std::move(holder), Device::kCuda);
  }

  // Host tensor of any float dtype -> device f32.
  Tensor ToDevice(const Tensor& host) override {
    Activate();
    Require(host.device() == Device::kCpu && host.defined() && !IsQuantized(host.dtype()),
            "ToDevice", "expects a defined host tensor of a float dtype", {{"host", &host}});
    Tensor out = Allocate(host.shape(), DType::kF32);
    if (host.numel() == 0) return out;
    if (host.dtype() == DType::kF32) {
      SHARDLM_CUDA_CHECK(cudaMemcpy(out.raw(), host.raw(), out.nbytes(), cudaMemcpyHostToDevice));
    } else {
      std::vector<float> buf(static_cast<size_t>(host.numel()));
      ConvertToF32(host.dtype(), host.raw(), buf.data(), buf.size());
      SHARDLM_CUDA_CHECK(cudaMemcpy(out.raw(), buf.data(), out.nbytes(), cudaMemcpyHostToDevice));
    }
    return out;
  }

  // Device f32 -> host f32 (waits for the work queued before it).
  Tensor ToHost(const Tensor& t) override {
    Activate();
    RequireDeviceF32("ToHost", {{"t", &t}});
    Tensor out = Tensor::Empty(t.shape(), DType::kF32);
    if (t.numel() > 0) {
      SHARDLM_CUDA_CHECK(cudaMemcpy(out.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost));
    }
    return out;
  }

  // f32 stays f32; bf16 / f16 matrices stay 16-bit; anything else (1-D, other ranks) -> f32.
  Tensor PrepareWeight(const Tensor& host) override {
    Activate();
    Require(host.device() == Device::kCpu && host.defined(), "PrepareWeight",
            "expects a defined host tensor", {{"host", &host}});
    if (IsQuantized(host.dtype())) {
      throw std::invalid_argument(std::string("PrepareWeight: ") + DTypeName(host.dtype()) +
                                  " weights are not supported by the CUDA backend yet");
    }
    if (IsHalf(host.dtype()) && host.rank() == 2) {
      Tensor out = Allocate(host.shape(), host.dtype());
      if (host.numel() > 0) {
        SHARDLM_CUDA_CHECK(
            cudaMemcpy(out.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice));
      }
      return out;
    }
    return ToDevice(host);
  }

  Tensor PrepareWeightColumns(const Tensor& host, int64_t, int64_t) override {
    throw std::invalid_argument(std::string("PrepareWeightColumns: ") + DTypeName(host.dtype()) +
                                " weights are not supported by the CUDA backend yet");
  }

  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    Activate();
    RequireDeviceF32("Linear", {{"x", &x}, {"y", &y}});
    if (bias != nullptr) RequireDeviceF32("Linear", {{"bias", bias}});
    Require(w.device() == Device::kCuda && w.defined() && w.rank() == 2 &&
                (w.dtype() == DType::kF32 || IsHalf(w.dtype())) && w.dim(0) < INT32_MAX &&
                w.dim(1) < INT32_MAX,
            "Linear", "w must be a prepared device [out, in] matrix of f32, bf16 or f16",
            {{"w", &w}});
    const int64_t out = w.dim(0), in = w.dim(1);
    const int64_t n = x.rank() >= 1 && in > 0 ? x.numel() / in : 0;
    Require(x.rank() >= 1 && x.dim(-1) == in && y.rank() >= 1 && y.dim(-1) == out &&
                y.numel() == n * out && n < INT32_MAX && (bias == nullptr || bias->numel() == out),
            "Linear", "expects x [n, in], w [out, in], y [n, out], bias [out]",
            {{"x", &x}, {"w", &w}, {"y", &y}});
    if (n == 0 || out == 0) return;
    const float alpha = 1.0f, beta = 0.0f;
    const int m_ = static_cast<int>(out), n_ = static_cast<int>(n), k_ = static_cast<int>(in);
    // cuBLAS is column-major: y^T [out, n] = op(A) * B with A = w seen as [in, out] (ld in),
    // transposed, and B = x seen as [in, n] (ld in); C = y seen as [out, n] (ld out).
    if (w.dtype() == DType::kF32) {
      SHARDLM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha,
                                       w.data<float>(), k_, x.data<float>(), k_, &beta,
                                       y.data<float>(), m_));
    } else {
      // Activations rounded to the weight's 16-bit type on the way in; f32 accumulation and
      // f32 output.
      const cudaDataType_t type = w.dtype() == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F;
      void* xh = activation_scratch_.Get(static_cast<size_t>(n * in) * 2);
      cuda::LaunchConvertF32ToHalf(x.data<float>(), xh, n * in, KindOf(w.dtype()));
      SHARDLM_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha,
                                        w.raw(), type, k_, xh, type, k_, &beta, y.raw(),
                                        CUDA_R_32F, m_, CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
    }
    if (bias != nullptr) cuda::LaunchAddBias(y.data<float>(), bias->data<float>(), n, out);
  }

  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    Activate();
    RequireDeviceF32("RmsNorm", {{"x", &x}, {"w", &w}, {"y", &y}});
    const int64_t d = w.numel();
    Require(w.rank() == 1 && d > 0 && x.rank() >= 1 && x.dim(-1) == d && y.rank() >= 1 &&
                y.dim(-1) == d && y.numel() == x.numel(),
            "RmsNorm", "expects x [n, d], w [d], y [n, d]", {{"x", &x}, {"w", &w}, {"y", &y}});
    cuda::LaunchRmsNorm(x.data<float>(), w.data<float>(), eps, y.data<float>(), x.numel() / d, d);
  }

  void Rope(Tensor& x, std::span<const int32_t> positions, const RopeConfig& rope) override {
    Activate();
    RequireDeviceF32("Rope", {{"x", &x}});
    const std::vector<float>& inv_freq = InverseFrequencies(rope);
    const int64_t half = static_cast<int64_t>(inv_freq.size());
    Require(x.rank() == 3 && x.dim(0) == static_cast<int64_t>(positions.size()) && half > 0 &&
                2 * half <= x.dim(2),
            "Rope",
            "expects x [n, heads, head_dim] with n == positions.size() and "
            "0 < rotary_dim <= head_dim",
            {{"x", &x}});
    if (positions.empty()) return;
    // One upload: positions (as int32), then the frequencies (as float bits).
    std::vector<int32_t> host(positions.begin(), positions.end());
    const size_t freq_at = host.size();
    host.resize(freq_at + inv_freq.size());
    std::memcpy(host.data() + freq_at, inv_freq.data(), inv_freq.size() * sizeof(float));
    const int32_t* dev = Upload(host);
    cuda::LaunchRope(x.data<float>(), dev, reinterpret_cast<const float*>(dev + freq_at),
                     x.dim(0), x.dim(1), x.dim(2), half, rope.interleaved);
  }

  void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y) override {
    Activate();
    RequireDeviceF32("Embedding", {{"y", &y}});
    Require(table.device() == Device::kCuda && table.defined() && table.rank() == 2 &&
                (table.dtype() == DType::kF32 || IsHalf(table.dtype())) && y.rank() >= 1 &&
                y.dim(-1) == table.dim(1) &&
                y.numel() == static_cast<int64_t>(ids.size()) * table.dim(1),
            "Embedding",
            "expects a prepared device table [vocab, d] of f32, bf16 or f16 and y [n, d] with "
            "n == ids.size()",
            {{"table", &table}, {"y", &y}});
    const int64_t vocab = table.dim(0);
    for (int32_t id : ids) {
      if (id < -1 || id >= vocab) {
        throw std::out_of_range("Embedding: token id " + std::to_string(id) + " outside [0, " +
                                std::to_string(vocab) + ") (or -1 for a zero row)");
      }
    }
    if (ids.empty()) return;
    const int32_t* dev = Upload(ids);
    cuda::LaunchEmbedding(table.raw(), KindOf(table.dtype()), dev, y.data<float>(),
                          static_cast<int64_t>(ids.size()), table.dim(1));
  }

  void SiluMul(const Tensor& gate, const Tensor& up, Tensor& y) override {
    Activate();
    RequireDeviceF32("SiluMul", {{"gate", &gate}, {"up", &up}, {"y", &y}});
    Require(gate.numel() == up.numel() && gate.numel() == y.numel(), "SiluMul",
            "expects gate, up and y of one size", {{"gate", &gate}, {"up", &up}, {"y", &y}});
    cuda::LaunchSiluMul(gate.data<float>(), up.data<float>(), y.data<float>(), y.numel());
  }

  void Add(Tensor& x, const Tensor& y) override {
    Activate();
    RequireDeviceF32("Add", {{"x", &x}, {"y", &y}});
    Require(x.numel() == y.numel(), "Add", "expects x and y of one size", {{"x", &x}, {"y", &y}});
    cuda::LaunchAdd(x.data<float>(), y.data<float>(), x.numel());
  }

  void Argmax(const Tensor& logits, std::span<int32_t> out, std::span<float> values) override {
    Activate();
    RequireDeviceF32("Argmax", {{"logits", &logits}});
    Require(logits.rank() >= 1 && logits.dim(-1) > 0 && logits.dim(-1) <= INT32_MAX &&
                logits.numel() / logits.dim(-1) == static_cast<int64_t>(out.size()) &&
                (values.empty() || values.size() == out.size()),
            "Argmax", "expects logits [n, vocab] with n == out.size() (== values.size() if given)",
            {{"logits", &logits}});
    const int64_t rows = static_cast<int64_t>(out.size());
    if (rows == 0) return;
    // Results: rows indices then rows values, in one scratch buffer.
    auto* dev = static_cast<int32_t*>(index_scratch_.Get(static_cast<size_t>(rows) * 8));
    auto* dev_values = reinterpret_cast<float*>(dev + rows);
    cuda::LaunchArgmax(logits.data<float>(), rows, logits.dim(-1), dev, dev_values);
    SHARDLM_CUDA_CHECK(
        cudaMemcpy(out.data(), dev, out.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    if (!values.empty()) {
      SHARDLM_CUDA_CHECK(cudaMemcpy(values.data(), dev_values, values.size() * sizeof(float),
                                    cudaMemcpyDeviceToHost));
    }
  }

  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> positions,
               Tensor& k_cache, Tensor& v_cache) override {
    Activate();
    RequireDeviceF32("WriteKv",
                     {{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
    const int64_t n = static_cast<int64_t>(positions.size());
    const bool ranks_ok = k.rank() >= 1 && k_cache.rank() >= 1;
    const int64_t max_seq = ranks_ok ? k_cache.dim(0) : 0;
    const int64_t row = max_seq > 0 ? k_cache.numel() / max_seq : 0;
    Require(ranks_ok && k.dim(0) == n && k.shape() == v.shape() &&
                k_cache.shape() == v_cache.shape() && k.numel() == n * row,
            "WriteKv",
            "expects k, v [n, kv_heads, head_dim] with n == positions.size() and caches "
            "[max_seq, kv_heads, head_dim]",
            {{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
    CheckPositions("WriteKv", positions, max_seq);
    if (n == 0) return;
    const int32_t* dev = Upload(positions);
    cuda::LaunchWriteKv(k.data<float>(), v.data<float>(), dev, k_cache.data<float>(),
                        v_cache.data<float>(), n, row);
  }

  void Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                 std::span<const int32_t> positions, const AttentionParams& params,
                 Tensor& out) override {
    Activate();
    const int64_t n = static_cast<int64_t>(positions.size());
    CheckAttentionShapes("Attention", q, k_cache, v_cache, out, n, params);
    CheckPositions("Attention", positions, k_cache.dim(0));
    if (n == 0) return;
    cuda::AttentionArgs a = BaseArgs(q, k_cache, v_cache, out, n, params, positions);
    a.positions = Upload(positions);
    cuda::LaunchAttention(a);
  }

  void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const PagedKvLayout& layout, const AttentionParams& params,
                      Tensor& out) override {
    Activate();
    const int64_t n = static_cast<int64_t>(layout.positions.size());
    CheckAttentionShapes("PagedAttention", q, k_cache, v_cache, out, n, params);
    const int64_t bs = layout.block_size;
    const int64_t rows = k_cache.dim(0);
    Require(bs > 0 && rows % bs == 0, "PagedAttention",
            "expects block_size > 0 dividing the cache rows", {{"k_cache", &k_cache}});
    if (const std::string error = PagedKvLayoutError(layout, rows / bs); !error.empty()) {
      throw std::out_of_range("PagedAttention: " + error);
    }
    if (n == 0) return;
    cuda::AttentionArgs a = BaseArgs(q, k_cache, v_cache, out, n, params, layout.positions);
    // One upload: positions, seq_index, table_begin, block_tables.
    std::vector<int32_t> host;
    host.reserve(2 * n + layout.table_begin.size() + layout.block_tables.size());
    host.insert(host.end(), layout.positions.begin(), layout.positions.end());
    host.insert(host.end(), layout.seq_index.begin(), layout.seq_index.end());
    host.insert(host.end(), layout.table_begin.begin(), layout.table_begin.end());
    host.insert(host.end(), layout.block_tables.begin(), layout.block_tables.end());
    const int32_t* dev = Upload(host);
    a.positions = dev;
    a.seq_index = dev + n;
    a.table_begin = dev + 2 * n;
    a.block_tables = dev + 2 * n + layout.table_begin.size();
    a.block_size = bs;
    cuda::LaunchAttention(a);
  }

 private:
  // Makes this backend's device current for the calling thread (cheap; several backends on
  // several devices may share a thread).
  void Activate() { SHARDLM_CUDA_CHECK(cudaSetDevice(device_)); }

  // Copies host ints into the index scratch buffer; valid until the next Upload. The copy is
  // ordered after the work already queued on the default stream, which may still read the
  // previous contents.
  const int32_t* Upload(std::span<const int32_t> host) {
    auto* dev = static_cast<int32_t*>(index_scratch_.Get(host.size() * sizeof(int32_t)));
    if (!host.empty()) {
      SHARDLM_CUDA_CHECK(
          cudaMemcpy(dev, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
    return dev;
  }

  static void CheckPositions(std::string_view op, std::span<const int32_t> positions,
                             int64_t max_seq) {
    for (int32_t p : positions) {
      if (p < 0 || p >= max_seq) {
        throw std::out_of_range(std::string(op) + ": position " + std::to_string(p) +
                                " outside the cache [0, " + std::to_string(max_seq) + ")");
      }
    }
  }

  static void CheckAttentionShapes(const char* op, const Tensor& q, const Tensor& k_cache,
                                   const Tensor& v_cache, const Tensor& out, int64_t n,
                                   const AttentionParams& params) {
    RequireDeviceF32(op, {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}});
    const int64_t heads = params.num_heads, kv_heads = params.num_kv_heads;
    const int64_t head_dim = params.head_dim;
    const int64_t width = heads * head_dim, kv_width = kv_heads * head_dim;
    Require(heads > 0 && kv_heads > 0 && head_dim > 0 && heads % kv_heads == 0 &&
                params.sliding_window >= 0 && q.rank() >= 1 && q.dim(0) == n &&
                q.numel() == n * width && out.rank() >= 1 && out.dim(0) == n &&
                out.numel() == n * width && k_cache.rank() >= 1 &&
                k_cache.shape() == v_cache.shape() &&
                k_cache.numel() == k_cache.dim(0) * kv_width,
            op,
            "expects q [n, num_heads, head_dim] with n == positions.size(), caches "
            "[rows, num_kv_heads, head_dim], out [n, num_heads * head_dim] and num_heads a "
            "multiple of num_kv_heads",
            {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}});
  }

  static cuda::AttentionArgs BaseArgs(const Tensor& q, const Tensor& k_cache,
                                      const Tensor& v_cache, Tensor& out, int64_t n,
                                      const AttentionParams& params,
                                      std::span<const int32_t> positions) {
    cuda::AttentionArgs a;
    a.q = q.data<float>();
    a.k_cache = k_cache.data<float>();
    a.v_cache = v_cache.data<float>();
    a.out = out.data<float>();
    a.n = n;
    a.heads = params.num_heads;
    a.kv_heads = params.num_kv_heads;
    a.head_dim = params.head_dim;
    a.scale = params.scale;
    a.window = params.sliding_window;
    for (int32_t p : positions) {
      const int64_t first = a.window > 0 ? std::max<int64_t>(0, p - a.window + 1) : 0;
      a.max_span = std::max<int64_t>(a.max_span, p - first + 1);
    }
    return a;
  }

  // Every RopeConfig field that the frequencies depend on (not `interleaved`).
  using RopeKey = std::tuple<float, int, RopeConfig::Scaling, float, float, float, int>;

  const std::vector<float>& InverseFrequencies(const RopeConfig& rope) {
    RopeKey key{rope.theta,           rope.rotary_dim,      rope.scaling,
                rope.factor,          rope.low_freq_factor, rope.high_freq_factor,
                rope.original_max_position};
    std::lock_guard<std::mutex> lock(rope_mu_);
    auto it = inv_freq_cache_.find(key);
    if (it == inv_freq_cache_.end()) {
      it = inv_freq_cache_.emplace(key, RopeInverseFrequencies(rope)).first;
    }
    return it->second;
  }

  const int device_;
  cublasHandle_t cublas_ = nullptr;
  Scratch index_scratch_;
  Scratch activation_scratch_;
  std::mutex rope_mu_;
  std::map<RopeKey, std::vector<float>> inv_freq_cache_;
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // reset the runtime's last error so that later checks start clean
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> CreateCudaBackend(int device) {
  return std::make_unique<CudaBackend>(device);
}

}  // namespace shardlm
