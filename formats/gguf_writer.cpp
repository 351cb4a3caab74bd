#include "formats/gguf_writer.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/mmap_file.h"

namespace shardlm {
namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF writer assumes little-endian");

constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 16;  // what the reader accepts

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

template <typename T>
void Put(std::string* out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  out->append(bytes, sizeof(T));
}

void PutString(std::string* out, std::string_view s) {
  Put<uint64_t>(out, s.size());
  out->append(s.data(), s.size());
}

// Range of each integer type, for the check that a value fits the type it is written as.
bool IntFits(GgufType type, int64_t v) {
  switch (type) {
    case GgufType::kUint8:
      return v >= 0 && v <= 0xff;
    case GgufType::kInt8:
      return v >= -128 && v <= 127;
    case GgufType::kUint16:
      return v >= 0 && v <= 0xffff;
    case GgufType::kInt16:
      return v >= -32768 && v <= 32767;
    case GgufType::kUint32:
      return v >= 0 && v <= 0xffffffffLL;
    case GgufType::kInt32:
      return v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max();
    default:
      return true;  // kInt64
  }
}

// Appends the encoding of `v` (without its type tag, which the caller writes). Errors describe
// the value; the caller prefixes the file and key.
absl::Status PutValue(std::string* out, const GgufValue& v, int depth) {
  switch (v.type) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kUint16:
    case GgufType::kInt16:
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kInt64:
      if (!IntFits(v.type, v.i)) {
        return absl::InvalidArgumentError(
            absl::StrCat("value ", v.i, " does not fit in ", GgufTypeName(v.type)));
      }
      switch (v.type) {
        case GgufType::kUint8:
          Put<uint8_t>(out, static_cast<uint8_t>(v.i));
          break;
        case GgufType::kInt8:
          Put<int8_t>(out, static_cast<int8_t>(v.i));
          break;
        case GgufType::kUint16:
          Put<uint16_t>(out, static_cast<uint16_t>(v.i));
          break;
        case GgufType::kInt16:
          Put<int16_t>(out, static_cast<int16_t>(v.i));
          break;
        case GgufType::kUint32:
          Put<uint32_t>(out, static_cast<uint32_t>(v.i));
          break;
        case GgufType::kInt32:
          Put<int32_t>(out, static_cast<int32_t>(v.i));
          break;
        default:
          Put<int64_t>(out, v.i);
          break;
      }
      return absl::OkStatus();
    case GgufType::kUint64:
      // `u` is the value; `i` must agree where it can hold it, which catches a value built by
      // setting only `i` (it would otherwise be written as 0).
      if (v.u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) &&
          v.i != static_cast<int64_t>(v.u)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "uint64 value has u = ", v.u, " but i = ", v.i, ": set both (see GgufUint64)"));
      }
      Put<uint64_t>(out, v.u);
      return absl::OkStatus();
    case GgufType::kFloat32:
      Put<float>(out, static_cast<float>(v.f));
      return absl::OkStatus();
    case GgufType::kFloat64:
      Put<double>(out, v.f);
      return absl::OkStatus();
    case GgufType::kBool:
      Put<uint8_t>(out, v.b ? 1 : 0);
      return absl::OkStatus();
    case GgufType::kString:
      PutString(out, v.s);
      return absl::OkStatus();
    case GgufType::kArray:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown value type ", static_cast<uint32_t>(v.type)));
  }
  if (depth >= kMaxArrayDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("arrays nested more than ", kMaxArrayDepth, " deep"));
  }
  if (static_cast<uint32_t>(v.array_type) > static_cast<uint32_t>(GgufType::kFloat64)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown array element type ", static_cast<uint32_t>(v.array_type)));
  }
  Put<uint32_t>(out, static_cast<uint32_t>(v.array_type));
  Put<uint64_t>(out, v.array.size());
  for (size_t k = 0; k < v.array.size(); ++k) {
    const GgufValue& e = v.array[k];
    absl::Status s = e.type == v.array_type
                         ? PutValue(out, e, depth + 1)
                         : absl::InvalidArgumentError(absl::StrCat(
                               "is ", GgufTypeName(e.type), ", not the array's element type ",
                               GgufTypeName(v.array_type)));
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("element ", k, " of ", v.array.size(), ": ",
                                                 Sv(std::string(s.message()))));
    }
  }
  return absl::OkStatus();
}

uint64_t AlignUp(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

// Padding, in chunks: an alignment may be up to 2^31 bytes.
absl::Status WriteZeros(AtomicFileWriter& out, uint64_t n) {
  static constexpr char kZeros[4096] = {};
  while (n > 0) {
    const uint64_t chunk = std::min<uint64_t>(n, sizeof kZeros);
    if (absl::Status s = out.Write(kZeros, chunk); !s.ok()) return s;
    n -= chunk;
  }
  return absl::OkStatus();
}

}  // namespace

GgufValue GgufInt(GgufType type, int64_t v) {
  GgufValue out;
  out.type = type;
  out.i = v;
  out.u = v >= 0 ? static_cast<uint64_t>(v) : 0;
  return out;
}

GgufValue GgufUint64(uint64_t v) {
  GgufValue out;
  out.type = GgufType::kUint64;
  out.u = v;
  out.i =
      v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? static_cast<int64_t>(v) : 0;
  return out;
}

GgufValue GgufFloat(GgufType type, double v) {
  GgufValue out;
  out.type = type;
  // A float32 reads back rounded; storing it rounded keeps written and read values equal.
  out.f = type == GgufType::kFloat32 ? static_cast<double>(static_cast<float>(v)) : v;
  return out;
}

GgufValue GgufBool(bool v) {
  GgufValue out;
  out.type = GgufType::kBool;
  out.b = v;
  return out;
}

GgufValue GgufString(std::string v) {
  GgufValue out;
  out.type = GgufType::kString;
  out.s = std::move(v);
  return out;
}

GgufValue GgufArray(GgufType element_type, std::vector<GgufValue> elements) {
  GgufValue out;
  out.type = GgufType::kArray;
  out.array_type = element_type;
  out.array = std::move(elements);
  return out;
}

GgufValue GgufStringArray(const std::vector<std::string>& v) {
  std::vector<GgufValue> elements;
  elements.reserve(v.size());
  for (const std::string& s : v) elements.push_back(GgufString(s));
  return GgufArray(GgufType::kString, std::move(elements));
}

uint32_t GgmlTypeFromDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return 1;
    case DType::kQ4_0:
      return 2;
    case DType::kQ4_1:
      return 3;
    case DType::kQ5_0:
      return 6;
    case DType::kQ5_1:
      return 7;
    case DType::kQ8_0:
      return 8;
    case DType::kQ4_K:
      return 12;
    case DType::kQ5_K:
      return 13;
    case DType::kQ6_K:
      return 14;
    case DType::kBF16:
      return 30;
    case DType::kI32:
      return 26;
  }
  return 0;
}

absl::Status WriteGguf(const std::string& path,
                       const std::vector<std::pair<std::string, GgufValue>>& metadata,
                       const std::vector<std::pair<std::string, Tensor>>& tensors, uint32_t version,
                       uint64_t alignment) {
  auto invalid = [&path](auto&&... pieces) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", pieces...));
  };
  if (version != 2 && version != 3) {
    return invalid("cannot write GGUF version ", version, ": only 2 and 3");
  }
  if (alignment == 0 || (alignment & (alignment - 1)) != 0 ||
      alignment > std::numeric_limits<uint32_t>::max()) {
    return invalid("alignment ", alignment, " is not a power of two that fits in uint32");
  }

  // The header (everything before the data section) is built in memory: it is small next to the
  // tensor data, which is written straight from the tensors.
  std::string header = "GGUF";
  Put<uint32_t>(&header, version);
  Put<uint64_t>(&header, tensors.size());
  std::string kvs;
  uint64_t kv_count = 0;
  bool has_alignment = false;
  std::set<std::string_view> seen;
  for (const auto& [key, value] : metadata) {
    const std::string where = absl::StrCat("metadata key '", key, "'");
    if (!seen.insert(key).second) return invalid(where, " given twice");
    if (key == "general.alignment") {
      if (value.type != GgufType::kUint32 || value.i != static_cast<int64_t>(alignment)) {
        return invalid(where, ": must be a uint32 equal to the alignment ", alignment,
                       " the file is written with");
      }
      has_alignment = true;
    }
    PutString(&kvs, key);
    Put<uint32_t>(&kvs, static_cast<uint32_t>(value.type));
    if (absl::Status s = PutValue(&kvs, value, 0); !s.ok()) {
      return invalid(where, ": ", Sv(std::string(s.message())));
    }
    ++kv_count;
  }
  if (!has_alignment && alignment != kDefaultAlignment) {
    PutString(&kvs, "general.alignment");
    Put<uint32_t>(&kvs, static_cast<uint32_t>(GgufType::kUint32));
    Put<uint32_t>(&kvs, static_cast<uint32_t>(alignment));
    ++kv_count;
  }
  Put<uint64_t>(&header, kv_count);
  header += kvs;

  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const std::string where = absl::StrCat("tensor '", name, "'");
    if (!names.insert(name).second) return invalid(where, " given twice");
    if (t.device() != Device::kCpu) return invalid(where, ": not in host memory");
    if (t.rank() > 4) return invalid(where, ": shape ", t.ShapeString(), " has more than 4 dims");
    for (int64_t d : t.shape()) {
      if (d < 1) return invalid(where, ": shape ", t.ShapeString(), " has a dimension < 1");
    }
    if (t.raw() == nullptr) return invalid(where, ": has no data");
    const int64_t block = DTypeBlockElements(t.dtype());
    if (t.rank() == 0 ? block != 1 : t.dim(-1) % block != 0) {
      return invalid(where, ": shape ", t.ShapeString(),
                     ": the last dimension is not a multiple "
                     "of the ",
                     DTypeName(t.dtype()), " block size ", block);
    }
    PutString(&header, name);
    Put<uint32_t>(&header, static_cast<uint32_t>(t.rank()));
    for (int d = t.rank() - 1; d >= 0; --d) Put<uint64_t>(&header, static_cast<uint64_t>(t.dim(d)));
    Put<uint32_t>(&header, GgmlTypeFromDType(t.dtype()));
    Put<uint64_t>(&header, offset);
    offset = AlignUp(offset + t.nbytes(), alignment);
  }
  // The data section starts aligned; a file without tensors ends with its header, as
  // llama.cpp's vocabulary files do.
  const uint64_t header_pad =
      tensors.empty() ? 0 : AlignUp(header.size(), alignment) - header.size();

  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(path);
  if (!out.ok()) return out.status();
  if (absl::Status s = (*out)->Write(header); !s.ok()) return s;
  if (absl::Status s = WriteZeros(**out, header_pad); !s.ok()) return s;
  for (const auto& [name, t] : tensors) {
    if (absl::Status s = (*out)->Write(t.raw(), t.nbytes()); !s.ok()) return s;
    const uint64_t pad = AlignUp(t.nbytes(), alignment) - t.nbytes();
    if (absl::Status s = WriteZeros(**out, pad); !s.ok()) return s;
  }
  return (*out)->Commit();
}

}  // namespace shardlm
