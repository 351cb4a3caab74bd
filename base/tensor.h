// A Tensor: shape, dtype and a pointer into memory that a shared holder keeps alive.
// The holder is either an owned aligned buffer or something else (an mmap of a checkpoint, a
// device allocation): a view into an mmap keeps the whole mapping alive, never copies it.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"

namespace shardlm {

enum class Device : uint8_t { kCpu, kCuda };

class Tensor {
 public:
  Tensor() = default;

  // A zero-filled, 64-byte aligned host tensor that owns its memory.
  static Tensor Empty(std::vector<int64_t> shape, DType dtype);
  // A view of memory someone else owns; `holder` keeps it alive (may be null for static memory).
  static Tensor View(void* data, std::vector<int64_t> shape, DType dtype,
                     std::shared_ptr<const void> holder, Device device = Device::kCpu);

  bool defined() const { return data_ != nullptr || numel() == 0; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i < 0 ? shape_.size() + i : i]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return DTypeBytes(dtype_, numel()); }
  const std::shared_ptr<const void>& holder() const { return holder_; }

  void* raw() const { return data_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }

  // Same memory, new shape with the same number of elements.
  Tensor Reshape(std::vector<int64_t> shape) const;
  // Rows [begin, end) along dimension 0: a view, no copy.
  Tensor Rows(int64_t begin, int64_t end) const;

  std::string ShapeString() const;  // "[4, 64]"

 private:
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
  void* data_ = nullptr;
  std::shared_ptr<const void> holder_;
};

std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace shardlm
