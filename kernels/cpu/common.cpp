#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cpu/cpu_ops.h"

namespace shardlm::cpu {

void ThrowShapeError(std::string_view op, std::string_view what,
                     std::initializer_list<Named> tensors) {
  std::string msg = std::string(op) + ": " + std::string(what) + " (";
  bool first = true;
  for (const Named& n : tensors) {
    if (!first) msg += ", ";
    first = false;
    msg += n.name;
    msg += ' ';
    msg += n.tensor->ShapeString();
    if (n.tensor->dtype() != DType::kF32) msg += ' ' + std::string(DTypeName(n.tensor->dtype()));
    if (n.tensor->device() != Device::kCpu) msg += " on device";
  }
  msg += ')';
  throw std::invalid_argument(msg);
}

void RequireHostF32(std::string_view op, std::initializer_list<Named> tensors) {
  for (const Named& n : tensors) {
    const Tensor& t = *n.tensor;
    if (t.dtype() != DType::kF32 || t.device() != Device::kCpu || !t.defined()) [[unlikely]] {
      ThrowShapeError(op, "expects defined host f32 tensors", tensors);
    }
  }
}

void ConvertToF32Parallel(DType dtype, const void* src, float* dst, int64_t n, int threads) {
  // Chunks big enough to amortise scheduling, small enough to balance a multi-GB checkpoint.
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const auto* bytes = static_cast<const char*>(src);
  const size_t elem = DTypeSize(dtype);
  // An exception may not leave an OpenMP region: refuse other dtypes here, before it.
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    throw std::invalid_argument(std::string("ConvertToF32: not a float dtype: ") +
                                DTypeName(dtype));
  }
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t count = std::min(kChunk, n - begin);
    ConvertToF32(dtype, bytes + static_cast<size_t>(begin) * elem, dst + begin,
                 static_cast<size_t>(count));
  }
}

}  // namespace shardlm::cpu
