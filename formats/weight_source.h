// Where a model's weights come from: a checkpoint on disk (safetensors; GGUF with [2 of 5]) or a
// generator of random weights. Each rank asks only for the slices it owns.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "base/tensor.h"

namespace shardlm {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string file;        // the file holding it (for messages)
  uint64_t offset = 0;     // absolute byte offset of its data in that file
  uint64_t size = 0;       // bytes
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // A short description for messages: the checkpoint path.
  virtual std::string Describe() const = 0;
  virtual std::vector<std::string> Names() const = 0;
  // NotFound naming the tensor and the checkpoint when absent.
  virtual absl::StatusOr<TensorInfo> Info(std::string_view name) const = 0;
  // The whole tensor. For files: a view into the mmap, no copy.
  virtual absl::StatusOr<Tensor> Load(std::string_view name) const = 0;
  // Rows [begin, end) of dimension 0 (a view into the mmap for files: no copy, only those pages
  // are ever touched).
  virtual absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                          int64_t end) const = 0;
  // Columns [begin, end) of the last dimension of a 2-D tensor: an owned copy of just those bytes.
  virtual absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                             int64_t end) const = 0;
};

// Opens a HF checkpoint directory: model.safetensors, or the shards listed in
// model.safetensors.index.json. `dir` may also name a single .safetensors file.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsCheckpoint(const std::string& dir);

}  // namespace shardlm
