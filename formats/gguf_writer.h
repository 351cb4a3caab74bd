// Writes GGUF files (see model/gguf.h for the layout): for tests and for making tiny models.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "base/tensor.h"
#include "formats/gguf.h"

namespace shardlm {

// GgufValue builders that set every field a reader would (i and u for integers, array_type for
// arrays), so a written-then-read value compares equal field by field.
GgufValue GgufInt(GgufType type, int64_t v);  // kUint8 ... kInt64 except kUint64
GgufValue GgufUint64(uint64_t v);
GgufValue GgufFloat(GgufType type, double v);  // kFloat32 or kFloat64
GgufValue GgufBool(bool v);
GgufValue GgufString(std::string v);
GgufValue GgufArray(GgufType element_type, std::vector<GgufValue> elements);
GgufValue GgufStringArray(const std::vector<std::string>& v);

// Writes `path` as GGUF `version` (2 or 3) with the metadata in the order given and the tensors in
// the order given. Tensors are host tensors in HF (row-major) order and shape; they are written
// with ne reversed. Quantized dtypes are written as their raw block bytes. Each tensor's data
// starts on a multiple of `alignment` (a power of two that fits in a u32) from the data section,
// which itself starts aligned; padding bytes are zero. When `alignment` is not the default 32 and
// the metadata has no general.alignment, a u32 general.alignment is appended; when present it
// must be a u32 equal to `alignment`. The output is a pure function of the arguments, and it is
// written under a temporary name and renamed into place.
//
// InvalidArgument, naming the file and the key/tensor, for: duplicate keys or tensor names, a
// value whose type is unknown or whose integer does not fit its type, array elements not of the
// array's element type, a tensor of rank > 4, a dimension < 1, a quantized tensor whose last
// dimension is not a multiple of the block size, a tensor not in host memory.
absl::Status WriteGguf(const std::string& path,
                       const std::vector<std::pair<std::string, GgufValue>>& metadata,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       uint32_t version = 3, uint64_t alignment = 32);

// The ggml type number of a dtype (the inverse of DTypeFromGgml).
uint32_t GgmlTypeFromDType(DType dtype);

}  // namespace shardlm
