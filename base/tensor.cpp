#include "base/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "absl/strings/str_join.h"

namespace shardlm {

namespace {
int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

Tensor Tensor::Empty(std::vector<int64_t> shape, DType dtype) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  size_t bytes = t.nbytes();
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded == 0 ? 64 : rounded);
  t.data_ = p;
  t.holder_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  return t;
}

Tensor Tensor::View(void* data, std::vector<int64_t> shape, DType dtype,
                    std::shared_ptr<const void> holder, Device device) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.data_ = data;
  t.holder_ = std::move(holder);
  return t;
}

int64_t Tensor::numel() const { return Product(shape_); }

Tensor Tensor::Reshape(std::vector<int64_t> shape) const {
  if (Product(shape) != numel()) {
    throw std::invalid_argument("Reshape " + ShapeString() + " -> " +
                                shardlm::ShapeString(shape) + " changes the element count");
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Rows(int64_t begin, int64_t end) const {
  if (rank() == 0 || begin < 0 || end > shape_[0] || begin > end) {
    throw std::out_of_range("Rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") of " + ShapeString());
  }
  Tensor t = *this;
  int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + DTypeBytes(dtype_, begin * row);
  return t;
}

std::string Tensor::ShapeString() const { return shardlm::ShapeString(shape_); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

}  // namespace shardlm
