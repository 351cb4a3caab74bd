// Where a model's weights come from: a checkpoint on disk (safetensors; GGUF with [2 of 5]) or a
// generator of random weights. Each rank asks only for the slices it owns.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
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
  // Columns [begin, end) of the last dimension of a 2-D tensor: an owned copy of just those bytes
  // (for files, the pages read for it are then dropped from this process, as Release does).
  virtual absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                             int64_t end) const = 0;

  // What the loader tells the source about a tensor it returned, once the backend holds it. Both
  // do nothing unless `t` is a view into this source's file mapping (not for owned copies, nor
  // for generated weights).
  // Used in place (the backend kept the view): maps all its pages now, so that no step waits on
  // page faults. Error: a page could not be read, naming the file.
  virtual absl::Status Populate(const Tensor& t) const { return absl::OkStatus(); }
  // Copied or uploaded, never read again: drops its pages from this process's memory, so that
  // the rank holds the weight once. They stay in the page cache (another rank on the node, or a
  // later load, maps them without disk I/O).
  virtual void Release(const Tensor& t) const {}
  // Drops every page of the file mappings from this process except those under the views in
  // `kept` (the ones the rank uses in place): reading a view maps the pages around it too (whole
  // page-cache folios), which may hold other ranks' rows. Other views of this source that are
  // still in use lose their pages as well, and fault them back in when read.
  virtual void Trim(std::span<const Tensor> kept) const {}
};

// Opens a HF checkpoint directory: model.safetensors, or the shards listed in
// model.safetensors.index.json. `dir` may also name a single .safetensors file.
absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsCheckpoint(const std::string& dir);

}  // namespace shardlm
