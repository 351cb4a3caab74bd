// GGUF (v2 and v3) files, mmapped: metadata key/values (all value types, nested arrays), tensor
// infos and tensor data. Everything is validated against the file size before use: a lying count,
// offset or size is an error naming the file and the key/tensor, never a read past the end.
//
// Layout: magic "GGUF", u32 version, u64 tensor_count, u64 kv_count (v1 used u32 counts: refused),
// kv_count x {string key, u32 type, value}, tensor_count x {string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml_type, u64 offset}, padding to general.alignment (default 32), data.
// Strings are u64 length + bytes. ne[0] is the fastest-varying (column) dimension, so a GGUF
// tensor with ne = [in, out] is the row-major matrix [out, in] of HF: shapes here are reported
// in HF (row-major, slowest first) order.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/weight_source.h"

namespace shardlm {

enum class GgufType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6,
  kBool = 7, kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* GgufTypeName(GgufType type);

// One metadata value. Integers of every width are kept in `i` (signed) or `u` (unsigned, for
// kUint64 beyond int64's range: both are set when representable), floats in `f`.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  GgufType array_type = GgufType::kUint8;  // element type when type == kArray
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<GgufValue> array;
};

class GgufFile : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // The header and the metadata only (what a tokenizer needs): tensor infos are not read, so a
  // file whose tensors this reader cannot load (unsupported ggml types) still opens. Names() is
  // empty and every tensor look-up is FailedPrecondition naming the file.
  static absl::StatusOr<std::unique_ptr<GgufFile>> OpenMetadata(const std::string& path);
  ~GgufFile() override;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }

  // Typed metadata look-ups. Errors (NotFound / InvalidArgument) name the file and the key, and
  // for a wrong type the expected and actual GGUF types. Any integer type converts to int64 when
  // it fits; any float or integer type converts to double.
  const GgufValue* Find(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;

  // WeightSource, with GGUF tensor names ("blk.0.attn_q.weight") and HF-order shapes. Tensors of
  // quantized types come back with their quantized dtype (see kernels/dtype.h). LoadRows of a
  // quantized tensor is a view (rows are whole blocks); LoadColumns needs begin and end on block
  // boundaries (InvalidArgument otherwise, naming the block size).
  std::string Describe() const override { return path_; }
  std::vector<std::string> Names() const override;
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override;
  absl::StatusOr<Tensor> Load(std::string_view name) const override;
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                  int64_t end) const override;
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                     int64_t end) const override;
  absl::Status Populate(const Tensor& t) const override;
  void Release(const Tensor& t) const override;
  void Trim(std::span<const Tensor> kept) const override;

  // Slice `index` of tensor `name` along its slowest dimension, as a tensor of its own (shape
  // without that dimension, its own offset and size; named "name[index]"): expert `index` of a
  // 3-D expert tensor ffn_*_exps, whose experts are contiguous byte ranges (quantized rows
  // included, since ne[0] is whole blocks). InvalidArgument for a tensor of rank < 2, NotFound
  // for an index outside [0, shape[0]), naming the tensor and its shape.
  absl::StatusOr<TensorInfo> SliceInfo(std::string_view name, int64_t index) const;
  // Load, LoadRows and LoadColumns of the tensor `info` describes (from Info or SliceInfo of this
  // file; InvalidArgument when its bytes are not within the file): views and copies as above.
  absl::StatusOr<Tensor> LoadInfo(const TensorInfo& info) const;
  absl::StatusOr<Tensor> LoadRowsOf(const TensorInfo& info, int64_t begin, int64_t end) const;
  absl::StatusOr<Tensor> LoadColumnsOf(const TensorInfo& info, int64_t begin, int64_t end) const;

 private:
  absl::Status CheckWithin(const TensorInfo& info) const;
  GgufFile() = default;
  static absl::StatusOr<std::unique_ptr<GgufFile>> OpenImpl(const std::string& path,
                                                            bool read_tensors);
  std::string path_;
  bool metadata_only_ = false;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::shared_ptr<const void> mapping_;
  const char* base_ = nullptr;
  size_t file_size_ = 0;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
};

// Maps a ggml tensor type number to our dtype: F32=0, F16=1, Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7,
// Q8_0=8, Q4_K=12, Q5_K=13, Q6_K=14, BF16=30. Other types: InvalidArgument naming the type number
// and its ggml name.
absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type);

}  // namespace shardlm
