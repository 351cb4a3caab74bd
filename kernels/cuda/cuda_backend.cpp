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
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/quant/codec.h"
#include "kernels/cuda/cuda_attention.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_quant.h"
#include "kernels/cuda/cuda_sampling.h"
#include "kernels/cuda/scatter_plan.h"
#include "base/check.h"
#include "base/dtype.h"

// Every CUDA runtime / cuBLAS call goes through the checks of base/check.h: a failure throws
// shardlm::CheckFailure naming the call, the error, the rank, the device, the file and the line.

namespace shardlm {
namespace {

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

// The backend's stream, shared with the deleters of the tensors it allocated (stream-ordered
// frees), so that a tensor may outlive the backend object.
struct StreamHolder {
  int device = 0;
  cudaStream_t stream = nullptr;
  ~StreamHolder() {
    // A destructor has nobody to report to: the results are dropped on purpose (a device that
    // failed has already failed the step that used it).
    if (stream != nullptr) {
      static_cast<void>(cudaSetDevice(device));
      static_cast<void>(cudaStreamSynchronize(stream));
      static_cast<void>(cudaStreamDestroy(stream));
    }
  }
};

// A device buffer that grows on demand (never shrinks), for the few results read back on the host
// (argmax); never used while capturing.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) static_cast<void>(cudaFree(ptr_));  // no throwing from a destructor
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

// Host-to-device copies of index arrays staged through pinned host memory, so that
// cudaMemcpyAsync is a real asynchronous DMA (from pageable memory the driver first copies into a
// bounce buffer of its own while the host waits). A few pinned slots, each with an event
// recorded after the copy that reads it: a slot is refilled only once its event has completed,
// so no copy still queued on the stream (the WriteIndices before one graph replay while the
// previous replay still runs) has its bytes overwritten. Slots grow by doubling and are kept.
class PinnedStaging {
 public:
  PinnedStaging() { slots_.reserve(kMaxSlots); }
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  ~PinnedStaging() {
    // The backend synchronized its stream first; failures are dropped (a destructor).
    for (Slot& slot : slots_) {
      if (slot.done != nullptr) static_cast<void>(cudaEventSynchronize(slot.done));
      if (slot.host != nullptr) static_cast<void>(cudaFreeHost(slot.host));
      if (slot.done != nullptr) static_cast<void>(cudaEventDestroy(slot.done));
    }
  }

  // dst (device) = bytes at src (host), enqueued on `stream`; src may be reused on return.
  void CopyToDevice(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    Slot& slot = FreeSlot(bytes);
    if (slot.capacity < bytes) {
      // Its last copy has completed (FreeSlot): the old buffer can go.
      if (slot.host != nullptr) SHARDLM_CUDA_CHECK(cudaFreeHost(slot.host));
      slot.host = nullptr;
      slot.capacity = 0;
      size_t capacity = kMinBytes;
      while (capacity < bytes) capacity *= 2;
      SHARDLM_CUDA_CHECK(cudaHostAlloc(&slot.host, capacity, cudaHostAllocDefault));
      slot.capacity = capacity;
    }
    std::memcpy(slot.host, src, bytes);
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, stream));
    SHARDLM_CUDA_CHECK(cudaEventRecord(slot.done, stream));
    slot.last_use = ++uses_;
  }

 private:
  static constexpr size_t kMaxSlots = 4;
  static constexpr size_t kMinBytes = 4096;
  struct Slot {
    void* host = nullptr;
    size_t capacity = 0;
    cudaEvent_t done = nullptr;  // recorded after the last copy from `host`
    uint64_t last_use = 0;
  };

  // Whether the slot's last copy has completed (cudaEventQuery; an event never recorded has).
  static bool Idle(const Slot& slot) {
    const cudaError_t rc = cudaEventQuery(slot.done);
    if (rc == cudaSuccess) return true;
    // Not ready is an answer: reset it, or the next launch check would report it.
    static_cast<void>(cudaGetLastError());
    if (rc != cudaErrorNotReady) SHARDLM_CUDA_CHECK(cudaEventQuery(slot.done));  // names it
    return false;
  }

  // An idle slot, preferring one that holds `bytes`; a new one while there are fewer than
  // kMaxSlots; else the least recently used one, once its copy has completed.
  Slot& FreeSlot(size_t bytes) {
    Slot* idle = nullptr;
    for (Slot& slot : slots_) {
      if (!Idle(slot)) continue;
      if (slot.capacity >= bytes) return slot;
      if (idle == nullptr) idle = &slot;
    }
    if (idle != nullptr) return *idle;
    if (slots_.size() < kMaxSlots) {
      Slot slot;
      SHARDLM_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
      slots_.push_back(slot);
      return slots_.back();
    }
    Slot* oldest =
        &*std::min_element(slots_.begin(), slots_.end(),
                           [](const Slot& a, const Slot& b) { return a.last_use < b.last_use; });
    SHARDLM_CUDA_CHECK(cudaEventSynchronize(oldest->done));
    return *oldest;
  }

  std::vector<Slot> slots_;
  uint64_t uses_ = 0;
};

class CudaGraph final : public BackendGraph {
 public:
  CudaGraph(int device, cudaStream_t stream, cudaGraph_t graph, cudaGraphExec_t exec)
      : device_(device), stream_(stream), graph_(graph), exec_(exec) {}
  ~CudaGraph() override {
    // No throwing from a destructor: failures here are dropped on purpose.
    static_cast<void>(cudaSetDevice(device_));
    if (exec_ != nullptr) static_cast<void>(cudaGraphExecDestroy(exec_));
    if (graph_ != nullptr) static_cast<void>(cudaGraphDestroy(graph_));
  }
  void Replay() override {
    SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
    SHARDLM_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
  }

 private:
  int device_;
  cudaStream_t stream_;
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    SetCheckDevice(device_);
    int count = 0;
    SHARDLM_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count) {
      throw std::runtime_error("CreateCudaBackend: device " + std::to_string(device) +
                               " does not exist (" + std::to_string(count) +
                               " CUDA devices visible)");
    }
    SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
    stream_holder_ = std::make_shared<StreamHolder>();
    stream_holder_->device = device_;
    SHARDLM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_holder_->stream, cudaStreamNonBlocking));
    stream_ = stream_holder_->stream;
    // Activations are allocated and freed every step (stream-ordered): keep the freed memory in
    // the device's pool instead of returning it to the driver.
    cudaMemPool_t pool = nullptr;
    SHARDLM_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_));
    uint64_t threshold = UINT64_MAX;
    SHARDLM_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    SHARDLM_CUBLAS_CHECK(cublasCreate(&cublas_));
    SHARDLM_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // A workspace of our own, so that cuBLAS allocates nothing while a graph is captured.
    SHARDLM_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspace));
    SHARDLM_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
    // Plain f32 GEMMs (no TF32 tensor cores), to stay within 1e-5 of the CPU backend.
    SHARDLM_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  }
  ~CudaBackend() override {
    // No throwing from a destructor: failures here are dropped on purpose.
    static_cast<void>(cudaSetDevice(device_));
    if (stream_ != nullptr) static_cast<void>(cudaStreamSynchronize(stream_));
    if (cublas_ != nullptr) static_cast<void>(cublasDestroy(cublas_));
    if (cublas_workspace_ != nullptr) static_cast<void>(cudaFree(cublas_workspace_));
  }

  std::string_view name() const override { return "cuda"; }

  Tensor Allocate(std::vector<int64_t> shape, DType dtype) override {
    Tensor t = AllocateUninitialized(std::move(shape), dtype);
    if (t.nbytes() > 0) SHARDLM_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream_));
    return t;
  }

  // Stream-ordered: cudaMallocAsync from the device's pool, cudaFreeAsync when the last view
  // goes. Inside a graph capture both become graph nodes.
  Tensor AllocateUninitialized(std::vector<int64_t> shape, DType dtype) override {
    Tensor probe = Tensor::View(nullptr, shape, dtype, nullptr, Device::kCuda);
    const size_t bytes = probe.nbytes();
    void* ptr = nullptr;
    if (bytes > 0) {
      Activate();
      SHARDLM_CUDA_CHECK(cudaMallocAsync(&ptr, bytes, stream_));
    }
    std::shared_ptr<const void> holder(ptr, [streams = stream_holder_](const void* p) {
      // A deleter must not throw: a failed free is dropped on purpose (the step that broke
      // the device has reported it).
      if (p != nullptr) {
        static_cast<void>(cudaSetDevice(streams->device));
        if (cudaFreeAsync(const_cast<void*>(p), streams->stream) != cudaSuccess) {
          // Reset the (non-sticky) error, or the next launch check would report it: e.g. a
          // tensor allocated inside an aborted capture, whose memory the graph never allocated.
          static_cast<void>(cudaGetLastError());
        }
      }
    });
    return Tensor::View(ptr, std::move(shape), dtype, std::move(holder), Device::kCuda);
  }

  // Host tensor of any float dtype -> device f32.
  Tensor ToDevice(const Tensor& host) override {
    Activate();
    Require(host.device() == Device::kCpu && host.defined() && !IsQuantized(host.dtype()) &&
                host.dtype() != DType::kI32,
            "ToDevice", "expects a defined host tensor of a float dtype", {{"host", &host}});
    Tensor out = AllocateUninitialized(host.shape(), DType::kF32);
    if (host.numel() == 0) return out;
    if (host.dtype() == DType::kF32) {
      CopyToDevice(out.raw(), host.raw(), out.nbytes());
    } else {
      std::vector<float> buf(static_cast<size_t>(host.numel()));
      ConvertToF32(host.dtype(), host.raw(), buf.data(), buf.size());
      CopyToDevice(out.raw(), buf.data(), out.nbytes());
    }
    return out;
  }

  // Device f32 -> host f32 (waits for the work queued before it).
  Tensor ToHost(const Tensor& t) override {
    Activate();
    RequireDeviceF32("ToHost", {{"t", &t}});
    Tensor out = Tensor::Empty(t.shape(), DType::kF32);
    if (t.numel() > 0) {
      SHARDLM_CUDA_CHECK(
          cudaMemcpyAsync(out.raw(), t.raw(), t.nbytes(), cudaMemcpyDeviceToHost, stream_));
    }
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return out;
  }

  Tensor UploadIndices(std::span<const int32_t> host) override {
    RequireNotCapturing("UploadIndices");
    Tensor t = AllocateUninitialized({static_cast<int64_t>(host.size())}, DType::kI32);
    WriteIndices(host, t);
    return t;
  }

  // Through pinned staging (asynchronous; `host` may be reused on return).
  void WriteIndices(std::span<const int32_t> host, Tensor& dst) override {
    Activate();
    RequireNotCapturing("WriteIndices");
    Require(dst.dtype() == DType::kI32 && dst.device() == Device::kCuda &&
                dst.numel() >= static_cast<int64_t>(host.size()),
            "WriteIndices", "expects a device I32 tensor of at least host.size() elements",
            {{"dst", &dst}});
    if (!host.empty()) {
      index_staging_.CopyToDevice(dst.raw(), host.data(), host.size() * sizeof(int32_t), stream_);
    }
  }

  void Copy(const Tensor& src, Tensor& dst) override {
    Activate();
    Require(src.dtype() == dst.dtype() && src.numel() == dst.numel() &&
                src.device() == Device::kCuda && dst.device() == Device::kCuda,
            "Copy", "expects device tensors of one dtype and size", {{"src", &src}, {"dst", &dst}});
    if (src.nbytes() > 0) {
      SHARDLM_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(),
                                         cudaMemcpyDeviceToDevice, stream_));
    }
  }

  // f32 stays f32; bf16 / f16 matrices stay 16-bit; quantized matrices stay as their blocks
  // (dequantized by the kernels); anything else (1-D, other ranks) -> f32. Returns once the host
  // bytes are read and keeps nothing of them: the shard loader then drops the file pages of
  // `host` (a view of the checkpoint's mapping) from the process.
  Tensor PrepareWeight(const Tensor& host) override {
    Activate();
    Require(host.device() == Device::kCpu && host.defined(), "PrepareWeight",
            "expects a defined host tensor", {{"host", &host}});
    if (IsQuantized(host.dtype())) {
      Require(host.rank() == 2, "PrepareWeight", "expects a quantized matrix [out, in]",
              {{"host", &host}});
      return CopyRaw(host);
    }
    if (IsHalf(host.dtype()) && host.rank() == 2) return CopyRaw(host);
    Tensor out = ToDevice(host);
    // Like CopyRaw: the copy from `host` has finished before its pages may go.
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return out;
  }

  // A tensor-parallel column slice through quantization blocks: dequantized on the host, kept
  // as bf16 on the device.
  Tensor PrepareWeightColumns(const Tensor& host, int64_t begin, int64_t end) override {
    Activate();
    Require(host.device() == Device::kCpu && host.defined() && host.rank() == 2 &&
                IsQuantized(host.dtype()) && 0 <= begin && begin <= end && end <= host.dim(1),
            "PrepareWeightColumns",
            "expects a quantized host matrix and 0 <= begin <= end <= columns", {{"host", &host}});
    const int64_t rows = host.dim(0), width = end - begin;
    std::vector<float> f32(static_cast<size_t>(rows * width));
    quant::DequantizeColumns(host.dtype(), host.raw(), rows, host.dim(1), begin, end, f32.data());
    Tensor out16 = Tensor::Empty({rows, width}, DType::kBF16);
    for (size_t i = 0; i < f32.size(); ++i) out16.data<uint16_t>()[i] = F32ToBf16(f32[i]);
    return CopyRaw(out16);
  }

  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    Activate();
    RequireDeviceF32("Linear", {{"x", &x}, {"y", &y}});
    if (bias != nullptr) RequireDeviceF32("Linear", {{"bias", bias}});
    const bool quantized = IsQuantized(w.dtype()) && QuantKindOf(w.dtype()) >= 0;
    Require(w.device() == Device::kCuda && w.defined() && w.rank() == 2 &&
                (w.dtype() == DType::kF32 || IsHalf(w.dtype()) || quantized) &&
                w.dim(0) < INT32_MAX && w.dim(1) < INT32_MAX,
            "Linear",
            "w must be a prepared device [out, in] matrix of f32, bf16, f16 or a quantized type",
            {{"w", &w}});
    const int64_t out = w.dim(0), in = w.dim(1);
    const int64_t n = x.rank() >= 1 && in > 0 ? x.numel() / in : 0;
    Require(x.rank() >= 1 && x.dim(-1) == in && y.rank() >= 1 && y.dim(-1) == out &&
                y.numel() == n * out && n < INT32_MAX && (bias == nullptr || bias->numel() == out),
            "Linear", "expects x [n, in], w [out, in], y [n, out], bias [out]",
            {{"x", &x}, {"w", &w}, {"y", &y}});
    if (n == 0 || out == 0) return;
    const float* b = bias != nullptr ? bias->data<float>() : nullptr;
    const float* xp = x.data<float>();
    float* yp = y.data<float>();
    // Activations stay f32 on every path, as on the CPU: no rounding of x to 16 bits (which made
    // the results of one row depend on the batch size, and overflowed f16).
    if (quantized) {
      const auto kind = static_cast<cuda::QuantKind>(QuantKindOf(w.dtype()));
      if (n <= cuda::QuantGemvMaxBatch(kind)) {
        // Decode: one read of the blocks for all n rows, dequantized in registers.
        cuda::LaunchQuantGemv(kind, w.raw(), out, in, xp, n, yp, stream_);
      } else if (n <= cuda::kTiledMatmulMaxBatch) {
        // Small batches: each weight dequantized once per tile of 32 rows of x (bias fused).
        cuda::LaunchQuantMatmul(kind, w.raw(), out, in, xp, n, b, yp, stream_);
        return;
      } else {
        F32ChunkedGemm(x, w, n, y);
      }
    } else if (IsHalf(w.dtype()) && cuda::HalfRowsAligned(in, w.raw()) &&
               n <= cuda::kTiledMatmulMaxBatch) {
      // Decode and small batches: the weights read once per call (per 32 rows of x), f32 FMAs
      // (bias fused).
      if (n <= cuda::kGemvMaxBatch) {
        cuda::LaunchHalfGemv(w.raw(), KindOf(w.dtype()), out, in, xp, n, b, yp, stream_);
      } else {
        cuda::LaunchHalfMatmul(KindOf(w.dtype()), w.raw(), out, in, xp, n, b, yp, stream_);
      }
      return;
    } else if (w.dtype() == DType::kF32) {
      const float alpha = 1.0f, beta = 0.0f;
      const int m_ = static_cast<int>(out), n_ = static_cast<int>(n), k_ = static_cast<int>(in);
      // cuBLAS is column-major: y^T [out, n] = op(A) * B with A = w seen as [in, out] (ld in),
      // transposed, and B = x seen as [in, n] (ld in); C = y seen as [out, n] (ld out).
      SHARDLM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m_, n_, k_, &alpha,
                                       w.data<float>(), k_, xp, k_, &beta, yp, m_));
    } else {
      F32ChunkedGemm(x, w, n, y);
    }
    if (b != nullptr) cuda::LaunchAddBias(yp, b, n, out, stream_);
  }

  void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) override {
    Activate();
    RequireDeviceF32("RmsNorm", {{"x", &x}, {"w", &w}, {"y", &y}});
    const int64_t d = w.numel();
    Require(w.rank() == 1 && d > 0 && x.rank() >= 1 && x.dim(-1) == d && y.rank() >= 1 &&
                y.dim(-1) == d && y.numel() == x.numel(),
            "RmsNorm", "expects x [n, d], w [d], y [n, d]", {{"x", &x}, {"w", &w}, {"y", &y}});
    cuda::LaunchRmsNorm(x.data<float>(), w.data<float>(), eps, y.data<float>(), x.numel() / d, d,
                        stream_);
  }

  void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps,
                  Tensor& y) override {
    Activate();
    RequireDeviceF32("AddRmsNorm", {{"x", &x}, {"delta", &delta}, {"w", &w}, {"y", &y}});
    const int64_t d = w.numel();
    Require(w.rank() == 1 && d > 0 && x.rank() >= 1 && x.dim(-1) == d &&
                delta.shape() == x.shape() && y.numel() == x.numel() && y.dim(-1) == d,
            "AddRmsNorm", "expects x, delta, y [n, d] and w [d]",
            {{"x", &x}, {"delta", &delta}, {"w", &w}, {"y", &y}});
    cuda::LaunchAddRmsNorm(x.data<float>(), delta.data<float>(), w.data<float>(), eps,
                           y.data<float>(), x.numel() / d, d, stream_);
  }

  void Rope(Tensor& x, const Tensor& positions, const RopeConfig& rope) override {
    Activate();
    RequireDeviceF32("Rope", {{"x", &x}});
    RequireIndices("Rope", {{"positions", &positions}});
    const Tensor& inv_freq = InverseFrequencies(rope);
    const int64_t half = inv_freq.numel();
    Require(x.rank() == 3 && x.dim(0) == positions.numel() && half > 0 && 2 * half <= x.dim(2),
            "Rope",
            "expects x [n, heads, head_dim] with n == positions.size() and "
            "0 < rotary_dim <= head_dim",
            {{"x", &x}, {"positions", &positions}});
    cuda::LaunchRope(x.data<float>(), positions.data<int32_t>(), inv_freq.data<float>(), x.dim(0),
                     x.dim(1), x.dim(2), half, rope.interleaved, rope.attention_factor, stream_);
  }

  void Embedding(const Tensor& table, const Tensor& ids, Tensor& y) override {
    Activate();
    RequireDeviceF32("Embedding", {{"y", &y}});
    RequireIndices("Embedding", {{"ids", &ids}});
    // A GGUF token_embd stays quantized (the tied LM head's Linear reads the same blocks).
    const bool quantized = IsQuantized(table.dtype()) && QuantKindOf(table.dtype()) >= 0;
    Require(table.device() == Device::kCuda && table.defined() && table.rank() == 2 &&
                (table.dtype() == DType::kF32 || IsHalf(table.dtype()) || quantized) &&
                y.rank() >= 1 && y.dim(-1) == table.dim(1) &&
                y.numel() == ids.numel() * table.dim(1),
            "Embedding",
            "expects a prepared device table [vocab, d] of f32, bf16, f16 or a quantized type "
            "and y [n, d] with n == ids.size()",
            {{"table", &table}, {"ids", &ids}, {"y", &y}});
    if (quantized) {
      cuda::LaunchQuantEmbedding(static_cast<cuda::QuantKind>(QuantKindOf(table.dtype())),
                                 table.raw(), table.dim(0), table.dim(1), ids.data<int32_t>(),
                                 ids.numel(), y.data<float>(), stream_);
      return;
    }
    cuda::LaunchEmbedding(table.raw(), KindOf(table.dtype()), ids.data<int32_t>(),
                          y.data<float>(), ids.numel(), table.dim(1), stream_);
  }

  void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) override {
    Activate();
    RequireDeviceF32("GluMul", {{"gate", &gate}, {"up", &up}, {"y", &y}});
    Require(gate.numel() == up.numel() && gate.numel() == y.numel(), "GluMul",
            "expects gate, up and y of one size", {{"gate", &gate}, {"up", &up}, {"y", &y}});
    cuda::LaunchGluMul(gate.data<float>(), up.data<float>(), y.data<float>(), y.numel(),
                       GluKindOf("GluMul", act), stream_);
  }

  void Scale(Tensor& x, float s) override {
    Activate();
    RequireDeviceF32("Scale", {{"x", &x}});
    cuda::LaunchScale(x.data<float>(), s, x.numel(), stream_);
  }

  void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w, const Tensor& k_w,
                   float eps) override {
    Activate();
    RequireDeviceF32("HeadRmsNorm", {{"qkv", &qkv}, {"q_w", &q_w}, {"k_w", &k_w}});
    const int64_t d = q_w.numel();
    Require(heads > 0 && kv_heads > 0 && d > 0 && q_w.rank() == 1 && k_w.rank() == 1 &&
                k_w.numel() == d && qkv.rank() == 2 &&
                qkv.dim(1) == static_cast<int64_t>(heads + 2 * kv_heads) * d,
            "HeadRmsNorm",
            "expects qkv [n, (heads + 2 * kv_heads) * head_dim], q_w and k_w [head_dim]",
            {{"qkv", &qkv}, {"q_w", &q_w}, {"k_w", &k_w}});
    cuda::LaunchHeadRmsNorm(qkv.data<float>(), q_w.data<float>(), k_w.data<float>(), eps,
                            qkv.dim(0), heads, kv_heads, d, stream_);
  }

  void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y) override {
    Activate();
    RequireDeviceF32("GluMulPacked", {{"gate_up", &gate_up}, {"y", &y}});
    const int64_t inter = y.rank() >= 1 ? y.dim(-1) : 0;
    Require(inter > 0 && gate_up.rank() >= 1 && gate_up.dim(-1) == 2 * inter &&
                gate_up.numel() == 2 * y.numel() && gate_up.raw() != y.raw(),
            "GluMulPacked", "expects gate_up [n, 2 * inter] and y [n, inter], not aliased",
            {{"gate_up", &gate_up}, {"y", &y}});
    cuda::LaunchGluMulPacked(gate_up.data<float>(), y.data<float>(), y.numel() / inter, inter,
                             GluKindOf("GluMulPacked", act), stream_);
  }

  void RopeWriteKv(const Tensor& qkv, const Tensor& positions, const RopeConfig& rope,
                   const Tensor& rows, Tensor& k_cache, Tensor& v_cache, Tensor& q) override {
    Activate();
    RequireDeviceF32("RopeWriteKv", {{"qkv", &qkv}, {"q", &q}});
    RequireIndices("RopeWriteKv", {{"positions", &positions}, {"rows", &rows}});
    RequireCaches("RopeWriteKv", k_cache, v_cache);
    const int64_t n = positions.numel();
    Require(RopeWriteKvShapesAgree(qkv, n, k_cache, v_cache, q) && rows.numel() == n, "RopeWriteKv",
            kRopeWriteKvShapes,
            {{"qkv", &qkv}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"q", &q}});
    const Tensor& inv_freq = InverseFrequencies(rope);
    const int64_t half = inv_freq.numel(), head_dim = q.dim(2);
    Require(half > 0 && 2 * half <= head_dim, "RopeWriteKv", "expects 0 < rotary_dim <= head_dim",
            {{"q", &q}});
    const int64_t kv_heads = k_cache.numel() / k_cache.dim(0) / head_dim;
    cuda::LaunchRopeWriteKv(qkv.data<float>(), positions.data<int32_t>(), inv_freq.data<float>(),
                            rows.data<int32_t>(), q.data<float>(), k_cache.raw(), v_cache.raw(),
                            KindOf(k_cache.dtype()), n, q.dim(1), kv_heads, head_dim, half,
                            rope.interleaved, rope.attention_factor, stream_);
  }

  void Add(Tensor& x, const Tensor& y) override {
    Activate();
    RequireDeviceF32("Add", {{"x", &x}, {"y", &y}});
    Require(x.numel() == y.numel(), "Add", "expects x and y of one size", {{"x", &x}, {"y", &y}});
    cuda::LaunchAdd(x.data<float>(), y.data<float>(), x.numel(), stream_);
  }

  // The rows grouped by destination on the host (scatter_plan.h), uploaded with the weights in
  // one pinned-staging copy (asynchronous, as WriteIndices), then one kernel: deterministic, no
  // atomics, the CPU's result bit for bit.
  void ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                      std::span<const float> weights, Tensor& dst) override {
    Activate();
    RequireDeviceF32("ScatterAddRows", {{"src", &src}, {"dst", &dst}});
    CheckScatterAddRows(src, rows, weights, dst);
    const int64_t m = src.dim(0), d = src.dim(1);
    if (m == 0 || d == 0) return;
    const auto s0 = reinterpret_cast<uintptr_t>(src.raw());
    const auto d0 = reinterpret_cast<uintptr_t>(dst.raw());
    Require(s0 + src.nbytes() <= d0 || d0 + dst.nbytes() <= s0, "ScatterAddRows",
            "expects src and dst not to overlap", {{"src", &src}, {"dst", &dst}});
    Require(m < INT32_MAX, "ScatterAddRows", "expects fewer than 2^31 - 1 source rows",
            {{"src", &src}});
    RequireNotCapturing("ScatterAddRows");
    const cuda::ScatterAddRowsPlan plan = cuda::PlanScatterAddRows(rows, weights);
    Tensor dev = AllocateUninitialized({static_cast<int64_t>(plan.packed.size())}, DType::kI32);
    index_staging_.CopyToDevice(dev.raw(), plan.packed.data(), plan.packed.size() * sizeof(int32_t),
                                stream_);
    cuda::LaunchScatterAddRows(src.data<float>(), dev.data<int32_t>(), plan.groups, m, d,
                               dst.data<float>(), stream_);
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
    // Results: rows indices then rows values, in one scratch buffer, read back together.
    auto* dev = static_cast<int32_t*>(result_scratch_.Get(static_cast<size_t>(rows) * 8));
    auto* dev_values = reinterpret_cast<float*>(dev + rows);
    cuda::LaunchArgmax(logits.data<float>(), rows, logits.dim(-1), dev, dev_values, stream_);
    std::vector<int32_t> host(static_cast<size_t>(rows) * 2);
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(host.data(), dev, host.size() * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream_));
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(out.data(), host.data(), out.size() * sizeof(int32_t));
    if (!values.empty()) {
      std::memcpy(values.data(), host.data() + rows, values.size() * sizeof(float));
    }
  }

  void Sample(const Tensor& logits, std::span<const SampleRowParams> rows,
              std::span<int32_t> out) override {
    Activate();
    RequireDeviceF32("Sample", {{"logits", &logits}});
    const int64_t n = static_cast<int64_t>(rows.size());
    Require(logits.rank() == 2 && logits.dim(0) == n && out.size() == rows.size() &&
                logits.dim(1) <= cuda::kSampleMaxVocab,
            "Sample", "expects logits [n, vocab <= 2^20] with n == rows.size() == out.size()",
            {{"logits", &logits}});
    if (n == 0) return;
    static_assert(sizeof(cuda::SampleRowParams) == sizeof(SampleRowParams) &&
                  alignof(cuda::SampleRowParams) == alignof(SampleRowParams));
    std::vector<cuda::SampleRowParams> params(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      params[i] = {rows[i].temperature, rows[i].top_k, rows[i].top_p, rows[i].min_p,
                   rows[i].uniform};
    }
    const size_t param_bytes = params.size() * sizeof(cuda::SampleRowParams);
    // Parameters, then the ids, in one buffer (8-byte aligned from cudaMalloc).
    auto* dev = static_cast<char*>(result_scratch_.Get(param_bytes + out.size() * sizeof(int32_t)));
    auto* dev_params = reinterpret_cast<cuda::SampleRowParams*>(dev);
    auto* dev_out = reinterpret_cast<int32_t*>(dev + param_bytes);
    CopyToDevice(dev_params, params.data(), param_bytes);
    const int64_t vocab = logits.dim(1);
    Tensor workspace = AllocateUninitialized(
        {static_cast<int64_t>(cuda::SampleWorkspaceBytes(n, vocab)) + 1}, DType::kI32);
    cuda::LaunchSample(logits.data<float>(), n, vocab, dev_params, dev_out, workspace.raw(),
                       static_cast<size_t>(workspace.nbytes()), stream_);
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(out.data(), dev_out, out.size() * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, stream_));
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  DType kv_cache_dtype() const override { return kv_dtype_; }

  void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& k_cache,
               Tensor& v_cache) override {
    Activate();
    RequireDeviceF32("WriteKv", {{"k", &k}, {"v", &v}});
    RequireIndices("WriteKv", {{"rows", &rows}});
    RequireCaches("WriteKv", k_cache, v_cache);
    const int64_t n = rows.numel();
    Require(KvWriteShapesAgree(k, v, n, k_cache, v_cache), "WriteKv", kKvWriteShapes,
            {{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
    const int64_t max_seq = k_cache.dim(0);
    const int64_t row = max_seq > 0 ? k_cache.numel() / max_seq : 0;
    cuda::LaunchWriteKv(k.data<float>(), v.data<float>(), rows.data<int32_t>(), k_cache.raw(),
                        v_cache.raw(), KindOf(k_cache.dtype()), n, row, stream_);
  }

  void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const PagedKvIndices& layout, const AttentionParams& params,
                      Tensor& out) override {
    Activate();
    RequireIndices("PagedAttention", {{"positions", &layout.positions},
                                      {"seq_index", &layout.seq_index},
                                      {"table_begin", &layout.table_begin},
                                      {"block_tables", &layout.block_tables}});
    const int64_t n = layout.positions.numel();
    CheckAttentionShapes("PagedAttention", q, k_cache, v_cache, out, n, params);
    const int64_t bs = layout.block_size;
    Require(bs > 0 && k_cache.dim(0) % bs == 0 && layout.seq_index.numel() == n, "PagedAttention",
            "expects block_size > 0 dividing the cache rows and one seq_index per position",
            {{"k_cache", &k_cache}, {"seq_index", &layout.seq_index}});
    cuda::AttentionArgs a = BaseArgs(q, k_cache, v_cache, out, n, params);
    a.positions = layout.positions.data<int32_t>();
    a.seq_index = layout.seq_index.data<int32_t>();
    a.table_begin = layout.table_begin.data<int32_t>();
    a.block_tables = layout.block_tables.data<int32_t>();
    a.block_size = bs;
    a.num_seqs = std::max<int64_t>(layout.table_begin.numel() - 1, 0);
    // Partial results of the key chunks (and the query tiles): stream-ordered, so that a
    // captured step records the allocation as a graph node, of a size fixed by the shapes.
    Tensor workspace;
    if (const size_t bytes = cuda::AttentionWorkspaceBytes(a); bytes > 0) {
      workspace = AllocateUninitialized({static_cast<int64_t>((bytes + 3) / 4)}, DType::kF32);
      a.workspace = workspace.raw();
      a.workspace_bytes = workspace.nbytes();
    }
    cuda::LaunchAttention(a, stream_);
  }

  bool supports_graphs() const override { return true; }

  bool BeginCapture() override {
    Activate();
    if (capturing_) {
      throw std::logic_error("BeginCapture: a capture is already open on this backend's stream "
                             "(EndCapture or AbortCapture first)");
    }
    SHARDLM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    return true;
  }

  std::unique_ptr<BackendGraph> EndCapture() override {
    Activate();
    if (!capturing_) throw std::logic_error("EndCapture: no capture is open (BeginCapture first)");
    cudaGraph_t graph = nullptr;
    try {
      // Fails when an op invalidated the capture (a synchronizing call, say): the capture is
      // over then too, and AbortCapture clears what the failure left.
      SHARDLM_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    } catch (...) {
      if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
      AbortCapture();
      throw;
    }
    capturing_ = false;
    // The graph is destroyed if its instantiation fails.
    std::unique_ptr<std::remove_pointer_t<cudaGraph_t>, cudaError_t (*)(cudaGraph_t)> owned(
        graph, cudaGraphDestroy);
    cudaGraphExec_t exec = nullptr;
    try {
      SHARDLM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    } catch (...) {
      static_cast<void>(cudaGetLastError());  // not sticky: the next launch check starts clean
      throw;
    }
    return std::make_unique<CudaGraph>(device_, stream_, owned.release(), exec);
  }

  // cudaStreamEndCapture ends a capture in any state, active or invalidated by an illegal call;
  // its graph is dropped. The errors that the failed capture left in the runtime's last-error
  // slot (cudaErrorStreamCaptureInvalidated, ...) are not sticky and are reset, or the next
  // kernel's launch check would report them. Tensors allocated and freed inside the capture were
  // graph nodes only: the dropped graph never allocated them.
  void AbortCapture() noexcept override {
    static_cast<void>(cudaSetDevice(device_));
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream_, &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t graph = nullptr;
      if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph != nullptr) {
        static_cast<void>(cudaGraphDestroy(graph));
      }
    }
    capturing_ = false;
    static_cast<void>(cudaGetLastError());
  }

  void Synchronize() override {
    Activate();
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  cudaStream_t stream() const { return stream_; }
  void set_kv_cache_dtype(DType d) { kv_dtype_ = d; }

 private:
  static constexpr size_t kCublasWorkspace = size_t{32} << 20;

  // Makes this backend's device current for the calling thread (cheap; several backends on
  // several devices may share a thread), and the device that failures on this thread name.
  void Activate() {
    SetCheckDevice(device_);
    SHARDLM_CUDA_CHECK(cudaSetDevice(device_));
  }

  // A recorded copy would read the staging slot at every replay, long after later copies
  // refilled it: index arrays are written before a capture or between replays.
  void RequireNotCapturing(const char* op) const {
    if (capturing_) {
      throw std::logic_error(std::string(op) +
                             ": not allowed while a graph is being captured (write index "
                             "arrays before BeginCapture or between replays)");
    }
  }

  void CopyToDevice(void* dst, const void* src, size_t bytes) {
    SHARDLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }

  // A device copy of a host tensor's bytes, dtype kept.
  Tensor CopyRaw(const Tensor& host) {
    Tensor out = AllocateUninitialized(host.shape(), host.dtype());
    if (host.nbytes() > 0) CopyToDevice(out.raw(), host.raw(), host.nbytes());
    // The host tensor may be a view of an mmap that goes away: finish the copy now.
    SHARDLM_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return out;
  }

  // y [n, out] = x [n, in] w^T for a quantized or 16-bit w [out, in] and a large batch (or
  // unaligned 16-bit rows): blocks of weight rows converted to f32 (exactly as the CPU does) into
  // one temporary of at most kWeightChunkBytes, each followed by an f32 SGEMM that writes those
  // columns of y. x stays f32, as in the CPU's blocked sgemm; the temporary stays small whatever
  // the size of w (a 152k-row LM head would need 1.1 GB as a whole bf16 copy).
  static constexpr int64_t kWeightChunkBytes = int64_t{16} << 20;
  void F32ChunkedGemm(const Tensor& x, const Tensor& w, int64_t n, Tensor& y) {
    const int64_t out = w.dim(0), in = w.dim(1);
    const int64_t chunk =
        std::clamp<int64_t>(kWeightChunkBytes / (in * static_cast<int64_t>(sizeof(float))), 1, out);
    Tensor buf = AllocateUninitialized({chunk, in}, DType::kF32);
    const auto* wbytes = static_cast<const uint8_t*>(w.raw());
    const int64_t row_bytes = static_cast<int64_t>(DTypeBytes(w.dtype(), in));
    const int quant_kind = QuantKindOf(w.dtype());
    const float alpha = 1.0f, beta = 0.0f;
    for (int64_t r0 = 0; r0 < out; r0 += chunk) {
      const int64_t m = std::min(chunk, out - r0);
      const uint8_t* rows = wbytes + r0 * row_bytes;
      if (quant_kind >= 0) {
        cuda::LaunchDequantize(static_cast<cuda::QuantKind>(quant_kind), rows, m, in, buf.raw(),
                               cuda::HalfKind::kF32, stream_);
      } else {
        cuda::LaunchConvertHalfToF32(rows, KindOf(w.dtype()), buf.data<float>(), m * in, stream_);
      }
      // Column-major as in Linear: C = rows r0 .. r0 + m of y^T [out, n] (ld out).
      SHARDLM_CUBLAS_CHECK(cublasSgemm(
          cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
          static_cast<int>(in), &alpha, buf.data<float>(), static_cast<int>(in), x.data<float>(),
          static_cast<int>(in), &beta, y.data<float>() + r0, static_cast<int>(out)));
    }
  }

  static cuda::GluKind GluKindOf(std::string_view op, Activation act) {
    switch (act) {
      case Activation::kSilu: return cuda::GluKind::kSilu;
      case Activation::kGeluTanh: return cuda::GluKind::kGeluTanh;
    }
    throw std::invalid_argument(std::string(op) + ": unknown activation " +
                                std::to_string(static_cast<int>(act)));
  }

  // The cuda::QuantKind of a quantized dtype, -1 when the kernels have none.
  static int QuantKindOf(DType d) {
    switch (d) {
      case DType::kQ8_0: return static_cast<int>(cuda::QuantKind::kQ8_0);
      case DType::kQ4_0: return static_cast<int>(cuda::QuantKind::kQ4_0);
      case DType::kQ4_1: return static_cast<int>(cuda::QuantKind::kQ4_1);
      case DType::kQ5_0: return static_cast<int>(cuda::QuantKind::kQ5_0);
      case DType::kQ5_1: return static_cast<int>(cuda::QuantKind::kQ5_1);
      case DType::kQ4_K: return static_cast<int>(cuda::QuantKind::kQ4_K);
      case DType::kQ5_K: return static_cast<int>(cuda::QuantKind::kQ5_K);
      case DType::kQ6_K: return static_cast<int>(cuda::QuantKind::kQ6_K);
      default: return -1;
    }
  }

  static void RequireIndices(std::string_view op,
                             std::initializer_list<std::pair<const char*, const Tensor*>> ts) {
    for (const auto& [name, t] : ts) {
      if (t->dtype() != DType::kI32 || t->device() != Device::kCuda || t->rank() != 1 ||
          !t->defined()) [[unlikely]] {
        ThrowShape(op, "expects index arrays as device I32 vectors (UploadIndices)", ts);
      }
    }
  }

  static void RequireCaches(std::string_view op, const Tensor& k_cache, const Tensor& v_cache) {
    Require(k_cache.device() == Device::kCuda && k_cache.defined() &&
                (k_cache.dtype() == DType::kF32 || IsHalf(k_cache.dtype())) &&
                v_cache.dtype() == k_cache.dtype() && v_cache.device() == Device::kCuda &&
                v_cache.defined(),
            op, "expects device caches of f32, bf16 or f16 (both of one dtype)",
            {{"k_cache", &k_cache}, {"v_cache", &v_cache}});
  }

  static void CheckAttentionShapes(const char* op, const Tensor& q, const Tensor& k_cache,
                                   const Tensor& v_cache, const Tensor& out, int64_t n,
                                   const AttentionParams& params) {
    RequireDeviceF32(op, {{"q", &q}, {"out", &out}});
    RequireCaches(op, k_cache, v_cache);
    Require(AttentionShapesAgree(q, k_cache, v_cache, out, n, params), op, kAttentionShapes,
            {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}});
  }

  static cuda::AttentionArgs BaseArgs(const Tensor& q, const Tensor& k_cache,
                                      const Tensor& v_cache, Tensor& out, int64_t n,
                                      const AttentionParams& params) {
    cuda::AttentionArgs a;
    a.q = q.data<float>();
    a.k_cache = k_cache.raw();
    a.v_cache = v_cache.raw();
    a.cache_kind = KindOf(k_cache.dtype());
    a.out = out.data<float>();
    a.n = n;
    a.heads = params.num_heads;
    a.kv_heads = params.num_kv_heads;
    a.head_dim = params.head_dim;
    a.scale = params.scale;
    a.window = params.sliding_window;
    return a;
  }

  // The frequencies of a config, uploaded once (at the first step, before any graph capture).
  const Tensor& InverseFrequencies(const RopeConfig& rope) {
    const RopeFrequencyKey key = FrequencyKey(rope);
    std::lock_guard<std::mutex> lock(rope_mu_);
    auto it = inv_freq_cache_.find(key);
    if (it == inv_freq_cache_.end()) {
      const std::vector<float> host = RopeInverseFrequencies(rope);
      Tensor t = Tensor::Empty({static_cast<int64_t>(host.size())}, DType::kF32);
      if (!host.empty()) std::memcpy(t.raw(), host.data(), host.size() * sizeof(float));
      it = inv_freq_cache_.emplace(key, CopyRaw(t)).first;
    }
    return it->second;
  }

  const int device_;
  std::shared_ptr<StreamHolder> stream_holder_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;
  DType kv_dtype_ = DType::kBF16;
  bool capturing_ = false;  // between BeginCapture and EndCapture / AbortCapture
  Scratch result_scratch_;
  PinnedStaging index_staging_;
  std::mutex rope_mu_;
  std::map<RopeFrequencyKey, Tensor> inv_freq_cache_;
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No device is an answer here, not an error: reset the runtime's last error so that later
    // checks start clean.
    static_cast<void>(cudaGetLastError());
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> CreateCudaBackend(int device, DType kv_cache_dtype) {
  if (kv_cache_dtype != DType::kF32 && !IsHalf(kv_cache_dtype)) {
    throw std::invalid_argument(std::string("CreateCudaBackend: KV caches of ") +
                                DTypeName(kv_cache_dtype) + " are not supported (F32, BF16, F16)");
  }
  auto backend = std::make_unique<CudaBackend>(device);
  backend->set_kv_cache_dtype(kv_cache_dtype);
  return backend;
}

cudaStream_t CudaBackendStream(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  return cuda != nullptr ? cuda->stream() : nullptr;
}

CudaMemory CudaMemoryInfo(int device) {
  CudaMemory m;
  int current = 0;
  // A query: what fails reads as no memory (the caller's budget then refuses the load, naming
  // the numbers), and the runtime's last error is reset so that later checks start clean.
  if (cudaGetDevice(&current) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return m;
  }
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    m.free = free_bytes;
    m.total = total_bytes;
  } else {
    static_cast<void>(cudaGetLastError());
  }
  // The pool keeps freed activations: count what it holds but does not use as free.
  cudaMemPool_t pool = nullptr;
  if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t reserved = 0, used = 0;
    if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) ==
            cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess &&
        reserved >= used) {
      m.free += reserved - used;
    }
  }
  static_cast<void>(cudaGetLastError());
  // Restoring the caller's device is a courtesy: every backend op selects its own device.
  static_cast<void>(cudaSetDevice(current));
  return m;
}

}  // namespace shardlm
