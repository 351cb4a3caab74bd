#include "model/shard_loader.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace shardlm {

absl::StatusOr<TensorInfo> ShardLoader::Check(const std::string& name,
                                              const std::vector<int64_t>& shape) {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, weights_.Info(name));
  if (info.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' in ", info.file, ": shape mismatch with config.json: expected ",
        ShapeString(shape), ", got ", ShapeString(info.shape)));
  }
  if (shape.size() == 2 && !config_.mixed_dtypes && info.dtype != config_.torch_dtype) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' in ", info.file,
        ": dtype mismatch with config.json torch_dtype: expected ", DTypeName(config_.torch_dtype),
        ", got ", DTypeName(info.dtype)));
  }
  return info;
}

absl::StatusOr<Tensor> ShardLoader::Prepare(const Tensor& host) {
  Tensor prepared = backend_->PrepareWeight(host);
  bytes_ += prepared.nbytes();
  // One copy of each weight in this process: a view the backend kept is mapped in whole now
  // (its pages are the weight), and the file pages of one it copied or uploaded are dropped.
  if (prepared.raw() == host.raw() && prepared.device() == host.device()) {
    SHARDLM_RETURN_IF_ERROR(weights_.Populate(host));
    kept_.push_back(host);
  } else {
    weights_.Release(host);
  }
  return prepared;
}

void ShardLoader::ReleaseUnused() {
  if (backend_ != nullptr) weights_.Trim(kept_);
}

void ShardLoader::Count(const TensorInfo& info, int64_t numel, bool as_f32) {
  // The CPU backend keeps matrices in their file dtype and turns vectors into f32.
  const bool f32 = as_f32 || info.shape.size() < 2;
  bytes_ += f32 ? static_cast<uint64_t>(numel) * 4 : DTypeBytes(info.dtype, numel);
}

absl::StatusOr<Tensor> ShardLoader::Full(const std::string& name,
                                         const std::vector<int64_t>& shape, float offset) {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Check(name, shape));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (backend_ == nullptr) {
    Count(info, numel, offset != 0.0f);
    return Tensor();
  }
  SHARDLM_ASSIGN_OR_RETURN(Tensor host, weights_.Load(name));
  if (offset == 0.0f) return Prepare(host);
  if (IsQuantized(info.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", info.file,
                                                   ": a quantized norm weight (",
                                                   DTypeName(info.dtype), ") is not supported"));
  }
  Tensor shifted = Tensor::Empty(shape, DType::kF32);
  ConvertToF32(host.dtype(), host.raw(), shifted.data<float>(), static_cast<size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) shifted.data<float>()[i] += offset;
  weights_.Release(host);
  return Prepare(shifted);
}

absl::StatusOr<Tensor> ShardLoader::Rows(const std::string& name,
                                         const std::vector<int64_t>& shape, Range rows) {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Check(name, shape));
  if (backend_ == nullptr) {
    int64_t numel = rows.size();
    for (size_t d = 1; d < shape.size(); ++d) numel *= shape[d];
    Count(info, numel, false);
    return Tensor();
  }
  SHARDLM_ASSIGN_OR_RETURN(Tensor host, weights_.LoadRows(name, rows.begin, rows.end));
  return Prepare(host);
}

absl::StatusOr<std::optional<Tensor>> ShardLoader::StackedRows(const std::vector<RowSlice>& parts) {
  if (parts.empty()) return absl::InvalidArgumentError("StackedRows: no parts");
  std::vector<TensorInfo> infos;
  int64_t rows = 0;
  for (const RowSlice& part : parts) {
    SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Check(part.name, part.shape));
    const TensorInfo& first = infos.empty() ? info : infos.front();
    if (info.shape.size() != first.shape.size() || info.shape.size() > 2) {
      return absl::InvalidArgumentError(absl::StrCat("StackedRows: '", part.name, "' is ",
                                                     ShapeString(info.shape), ", '", first.name,
                                                     "' is ", ShapeString(first.shape)));
    }
    if (info.shape.size() == 2 && (info.dtype != first.dtype || info.shape[1] != first.shape[1])) {
      return std::optional<Tensor>();  // e.g. Q4_K_M files: attn_v in Q6_K beside Q4_K q and k
    }
    if (info.shape.size() == 1 && IsQuantized(info.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", part.name, "' in ", info.file,
                                                     ": a quantized vector (",
                                                     DTypeName(info.dtype), ") is not supported"));
    }
    rows += part.rows.size();
    infos.push_back(std::move(info));
  }
  const bool matrix = infos.front().shape.size() == 2;
  const int64_t cols = matrix ? infos.front().shape[1] : 1;
  if (backend_ == nullptr) {
    for (size_t i = 0; i < parts.size(); ++i) Count(infos[i], parts[i].rows.size() * cols, false);
    return std::optional<Tensor>(Tensor());
  }
  const DType dtype = matrix ? infos.front().dtype : DType::kF32;
  Tensor stacked =
      Tensor::Empty(matrix ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows}, dtype);
  char* at = static_cast<char*>(stacked.raw());
  for (size_t i = 0; i < parts.size(); ++i) {
    SHARDLM_ASSIGN_OR_RETURN(
        Tensor part, weights_.LoadRows(parts[i].name, parts[i].rows.begin, parts[i].rows.end));
    if (matrix) {
      std::memcpy(at, part.raw(), part.nbytes());
      at += part.nbytes();
    } else {
      ConvertToF32(part.dtype(), part.raw(), reinterpret_cast<float*>(at),
                   static_cast<size_t>(part.numel()));
      at += part.numel() * sizeof(float);
    }
    weights_.Release(part);  // its file pages: the stacked copy is the one this rank keeps
  }
  SHARDLM_ASSIGN_OR_RETURN(Tensor prepared, Prepare(stacked));
  return std::optional<Tensor>(std::move(prepared));
}

absl::StatusOr<Tensor> ShardLoader::Columns(const std::string& name,
                                            const std::vector<int64_t>& shape, Range cols) {
  SHARDLM_ASSIGN_OR_RETURN(TensorInfo info, Check(name, shape));
  const int64_t block = DTypeBlockElements(info.dtype);
  const bool straddles = cols.begin % block != 0 || cols.end % block != 0;
  if (straddles) dequantized_.push_back(name);
  if (backend_ == nullptr) {
    Count(info, shape[0] * cols.size(), straddles);
    return Tensor();
  }
  if (cols.begin == 0 && cols.end == shape[1]) {
    // Every column (one rank per stage): the whole tensor, which the backend may use in place.
    SHARDLM_ASSIGN_OR_RETURN(Tensor host, weights_.Load(name));
    return Prepare(host);
  }
  if (!straddles) {
    SHARDLM_ASSIGN_OR_RETURN(Tensor host, weights_.LoadColumns(name, cols.begin, cols.end));
    return Prepare(host);
  }
  // Read the whole blocks around the range; the backend keeps just the range (dequantized).
  spdlog::info("{}: columns [{}, {}) cut through {} blocks of {}: this slice is dequantized to f32",
               name, cols.begin, cols.end, std::string(DTypeName(info.dtype)), block);
  const int64_t first = cols.begin / block * block;
  const int64_t last = (cols.end + block - 1) / block * block;
  SHARDLM_ASSIGN_OR_RETURN(Tensor cover, weights_.LoadColumns(name, first, last));
  Tensor prepared =
      backend_->PrepareWeightColumns(cover, cols.begin - first, cols.end - first);
  bytes_ += prepared.nbytes();
  return prepared;
}

}  // namespace shardlm
