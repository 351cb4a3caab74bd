// The host-span conveniences of Backend: check on the host, upload, call the index-tensor op.
#include <stdexcept>
#include <string>

#include "kernels/backend.h"

namespace shardlm {
namespace {

// Every value of `values` in [lo, hi); else std::out_of_range naming the op, what and where.
void CheckRange(const char* op, const char* what, std::span<const int32_t> values, int64_t lo,
                int64_t hi) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] < lo || values[i] >= hi) {
      throw std::out_of_range(std::string(op) + ": " + what + " " + std::to_string(values[i]) +
                              " at index " + std::to_string(i) + " outside [" +
                              std::to_string(lo) + ", " + std::to_string(hi) + ")");
    }
  }
}

}  // namespace

bool KvWriteShapesAgree(const Tensor& k, const Tensor& v, int64_t n, const Tensor& k_cache,
                        const Tensor& v_cache) {
  if (k.rank() < 1 || k_cache.rank() < 1) return false;
  const int64_t max_seq = k_cache.dim(0);
  const int64_t row = max_seq > 0 ? k_cache.numel() / max_seq : 0;
  return k.dim(0) == n && k.shape() == v.shape() && k_cache.shape() == v_cache.shape() &&
         k.numel() == n * row;
}

bool RopeWriteKvShapesAgree(const Tensor& qkv, int64_t n, const Tensor& k_cache,
                            const Tensor& v_cache, const Tensor& q) {
  if (q.rank() != 3 || k_cache.rank() < 1 || qkv.rank() < 1) return false;
  const int64_t heads = q.dim(1), head_dim = q.dim(2);
  const int64_t rows = k_cache.dim(0);
  const int64_t kv_width = rows > 0 ? k_cache.numel() / rows : 0;
  return q.dim(0) == n && qkv.dim(0) == n && heads > 0 && head_dim > 0 && kv_width > 0 &&
         kv_width % head_dim == 0 && k_cache.shape() == v_cache.shape() &&
         qkv.numel() == n * (heads * head_dim + 2 * kv_width);
}

bool AttentionShapesAgree(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& out, int64_t n, const AttentionParams& params) {
  const int64_t heads = params.num_heads, kv_heads = params.num_kv_heads;
  const int64_t head_dim = params.head_dim;
  const int64_t width = heads * head_dim, kv_width = kv_heads * head_dim;
  return heads > 0 && kv_heads > 0 && head_dim > 0 && heads % kv_heads == 0 &&
         params.sliding_window >= 0 && q.rank() >= 1 && q.dim(0) == n &&
         q.numel() == n * width && out.rank() >= 1 && out.dim(0) == n &&
         out.numel() == n * width && k_cache.rank() >= 1 && k_cache.shape() == v_cache.shape() &&
         k_cache.numel() == k_cache.dim(0) * kv_width;
}

void CheckScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                         std::span<const float> weights, const Tensor& dst) {
  if (src.rank() != 2 || dst.rank() != 2 || src.dim(1) != dst.dim(1) ||
      src.dim(0) != static_cast<int64_t>(rows.size()) || weights.size() != rows.size()) {
    throw std::invalid_argument(
        "ScatterAddRows: expects src [m, d], m rows and m weights, dst [n, d]; got src " +
        src.ShapeString() + ", " + std::to_string(rows.size()) + " rows, " +
        std::to_string(weights.size()) + " weights, dst " + dst.ShapeString());
  }
  CheckRange("ScatterAddRows", "row", rows, 0, dst.dim(0));
}

void ScatterAddRowsOnHost(const Tensor& src, std::span<const int32_t> rows,
                          std::span<const float> weights, Tensor& dst) {
  CheckScatterAddRows(src, rows, weights, dst);
  const int64_t m = src.dim(0);
  const int64_t cols = src.dim(1);
  for (int64_t i = 0; i < m; ++i) {
    float* out = dst.data<float>() + static_cast<int64_t>(rows[i]) * cols;
    const float* in = src.data<float>() + i * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] += weights[i] * in[c];
  }
}

void Backend::ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                             std::span<const float> weights, Tensor& dst) {
  CheckScatterAddRows(src, rows, weights, dst);  // before any copy, naming the op
  Tensor d = ToHost(dst);
  ScatterAddRowsOnHost(ToHost(src), rows, weights, d);
  Copy(ToDevice(d), dst);
}

void Backend::Rope(Tensor& x, std::span<const int32_t> positions, const RopeConfig& rope) {
  CheckRange("Rope", "position", positions, 0, INT32_MAX);
  Rope(x, UploadIndices(positions), rope);
}

void Backend::Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y) {
  if (table.rank() == 2) CheckRange("Embedding", "token id", ids, -1, table.dim(0));
  Embedding(table, UploadIndices(ids), y);
}

void Backend::WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> rows,
                      Tensor& k_cache, Tensor& v_cache) {
  if (k_cache.rank() >= 1) CheckRange("WriteKv", "cache row", rows, 0, k_cache.dim(0));
  WriteKv(k, v, UploadIndices(rows), k_cache, v_cache);
}

void Backend::RopeWriteKv(const Tensor& qkv, std::span<const int32_t> positions,
                          const RopeConfig& rope, std::span<const int32_t> rows, Tensor& k_cache,
                          Tensor& v_cache, Tensor& q) {
  CheckRange("RopeWriteKv", "position", positions, 0, INT32_MAX);
  if (k_cache.rank() >= 1) CheckRange("RopeWriteKv", "cache row", rows, 0, k_cache.dim(0));
  RopeWriteKv(qkv, UploadIndices(positions), rope, UploadIndices(rows), k_cache, v_cache, q);
}

void Backend::PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                             const PagedKvLayout& layout, const AttentionParams& params,
                             Tensor& out) {
  if (k_cache.rank() >= 1 && layout.block_size > 0) {
    if (const std::string error = PagedKvLayoutError(layout, k_cache.dim(0) / layout.block_size);
        !error.empty()) {
      throw std::out_of_range("PagedAttention: " + error);
    }
  }
  PagedAttention(q, k_cache, v_cache, UploadLayout(layout), params, out);
}

void Backend::Sample(const Tensor& logits, std::span<const SampleRowParams> rows,
                     std::span<int32_t> out) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (logits.rank() != 2 || logits.dim(0) != n || out.size() != rows.size()) {
    throw std::invalid_argument("Sample: expects logits [n, vocab] with n == rows.size() == "
                                "out.size(), got logits " + logits.ShapeString() + ", " +
                                std::to_string(n) + " rows, " + std::to_string(out.size()) +
                                " outputs");
  }
  if (n == 0) return;
  const Tensor host = logits.device() == Device::kCpu && logits.dtype() == DType::kF32
                          ? logits
                          : ToHost(logits);
  const size_t vocab = static_cast<size_t>(logits.dim(1));
  for (int64_t i = 0; i < n; ++i) {
    out[i] = SampleRow({host.data<float>() + i * vocab, vocab}, rows[i]);
  }
}

PagedKvIndices Backend::UploadLayout(const PagedKvLayout& layout) {
  PagedKvIndices out;
  out.block_size = layout.block_size;
  out.positions = UploadIndices(layout.positions);
  out.seq_index = UploadIndices(layout.seq_index);
  out.table_begin = UploadIndices(layout.table_begin);
  out.block_tables = UploadIndices(layout.block_tables);
  return out;
}

}  // namespace shardlm
