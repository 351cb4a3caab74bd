// Reads one rank's slices of a checkpoint (whole tensors, row ranges, column ranges), checks each
// tensor's shape (and, for matrices, dtype) against config.json first, and hands the slices to the
// backend. Without a backend it only adds up the bytes the rank would hold (`shardlm plan`).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "formats/config.h"
#include "formats/weight_source.h"
#include "parallel/shard_plan.h"

namespace shardlm {

class ShardLoader {
 public:
  // backend == nullptr: count bytes only; the tensors returned are empty.
  ShardLoader(const ModelConfig& config, const WeightSource& weights, Backend* backend)
      : config_(config), weights_(weights), backend_(backend) {}

  // `offset` != 0: the tensor plus `offset`, as f32 (Gemma's (1 + w) norms in HF checkpoints).
  absl::StatusOr<Tensor> Full(const std::string& name, const std::vector<int64_t>& shape,
                              float offset = 0.0f);
  // Rows [rows.begin, rows.end) of dimension 0: a view of the file, no copy (when the backend
  // takes the view as it is, as the CPU backend does for aligned data).
  absl::StatusOr<Tensor> Rows(const std::string& name, const std::vector<int64_t>& shape,
                              Range rows);
  // Columns of a matrix: only those bytes are copied (all of them: the whole tensor, as Full). A
  // quantized matrix whose range cuts through blocks is dequantized to f32 for just this slice
  // (and the log says so).
  absl::StatusOr<Tensor> Columns(const std::string& name, const std::vector<int64_t>& shape,
                                 Range cols);

  // Drops the checkpoint's pages that no weight loaded so far uses from this process (those read
  // along with a view: the kernel maps whole page-cache folios). Between tensors, and once at
  // the end, so that the rank holds its shard and little more at any time.
  void ReleaseUnused();
  // One part of a stacked tensor: rows `rows` of tensor `name` (whose shape must be `shape`).
  struct RowSlice {
    std::string name;
    std::vector<int64_t> shape;
    Range rows;
  };
  // The row slices `parts` stacked into one tensor in order (a fused projection: [q; k; v] or
  // [gate; up]), copied once: each part is read from the file into the stacked copy and let go.
  // Matrices stack when every part has one dtype and row width (ggml rows are whole blocks, so
  // their bytes concatenate); otherwise nullopt, and the caller loads the parts apart. Vectors
  // (biases) stack as f32.
  absl::StatusOr<std::optional<Tensor>> StackedRows(const std::vector<RowSlice>& parts);

  uint64_t bytes() const { return bytes_; }
  // Tensors whose slice had to be dequantized.
  const std::vector<std::string>& dequantized() const { return dequantized_; }

 private:
  absl::StatusOr<TensorInfo> Check(const std::string& name, const std::vector<int64_t>& shape);
  // The backend's form of `host`; then the source maps the pages of a view the backend uses in
  // place, or drops those of one it copied.
  absl::StatusOr<Tensor> Prepare(const Tensor& host);
  // The bytes a slice of `numel` elements of `info` takes once prepared (CPU backend forms).
  void Count(const TensorInfo& info, int64_t numel, bool as_f32);

  const ModelConfig& config_;
  const WeightSource& weights_;
  Backend* backend_;
  uint64_t bytes_ = 0;
  std::vector<std::string> dequantized_;
  std::vector<Tensor> kept_;  // the views of the checkpoint the backend uses in place
};

}  // namespace shardlm
