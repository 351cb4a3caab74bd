#include "formats/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "formats/mmap_file.h"

namespace shardlm {
namespace {

// Fields are read with memcpy in host order: GGUF is little-endian (big-endian files are refused
// by their version number), and so is every platform we build for.
static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");

constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
// Nested arrays recurse; the limit keeps a hostile file from overflowing the stack.
constexpr int kMaxArrayDepth = 16;
// Each value costs sizeof(GgufValue) (~100 bytes) in memory but as little as 1 byte in the file,
// so a large u8 array would blow up 100-fold. Real files hold about 4 x 256k values (vocabulary
// arrays); this bound leaves plenty of room while capping memory at a couple of GiB.
constexpr uint64_t kMaxMetadataValues = uint64_t{1} << 24;

// Debian's abseil is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ggml's names for its type numbers, for messages about the ones we do not support.
const char* GgmlTypeName(uint32_t type) {
  // clang-format off
  static constexpr const char* kNames[] = {
      "F32", "F16", "Q4_0", "Q4_1", "Q4_2 (removed)", "Q4_3 (removed)", "Q5_0", "Q5_1", "Q8_0",
      "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS",
      "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
      "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
      "IQ4_NL_8_8", "MXFP4"};
  // clang-format on
  return type < std::size(kNames) ? kNames[type] : "unknown";
}

// Indexed by GgufType. min_size is the encoded size of a scalar and, for strings (u64 length)
// and arrays (u32 element type + u64 count), of an empty one: it bounds how many elements the
// bytes left in the file can hold.
struct TypeTraits {
  const char* name;
  uint64_t min_size;
  bool integer;
};
constexpr TypeTraits kTypeTraits[] = {
    {"uint8", 1, true},   {"int8", 1, true},    {"uint16", 2, true},   {"int16", 2, true},
    {"uint32", 4, true},  {"int32", 4, true},   {"float32", 4, false}, {"bool", 1, false},
    {"string", 8, false}, {"array", 12, false}, {"uint64", 8, true},   {"int64", 8, true},
    {"float64", 8, false}};
constexpr uint32_t kNumTypes = std::size(kTypeTraits);

bool IsIntegerType(GgufType t) {
  return static_cast<uint32_t>(t) < kNumTypes && kTypeTraits[static_cast<uint32_t>(t)].integer;
}
bool IsFloatType(GgufType t) { return t == GgufType::kFloat32 || t == GgufType::kFloat64; }

std::string TypeString(const GgufValue& v) {
  if (v.type != GgufType::kArray) return GgufTypeName(v.type);
  return absl::StrCat("array of ", GgufTypeName(v.array_type));
}

// Bounds-checked reads over the mapped file. Errors describe only what went wrong at which
// offset; callers prefix the file and the key/tensor being read.
class Cursor {
 public:
  Cursor(const char* base, uint64_t size) : base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  bool truncated() const { return truncated_; }

  // `suffix` decorates `what` only on the error path: vocabularies hold 100k+ strings.
  template <typename T>
  absl::Status Read(T* out, std::string_view what, std::string_view suffix = "") {
    if (sizeof(T) > remaining()) {
      truncated_ = true;
      return absl::InvalidArgumentError(absl::StrCat("file truncated: ", Sv(what), Sv(suffix),
                                                     " needs ", sizeof(T), " bytes at offset ",
                                                     pos_, " but the file ends at ", size_));
    }
    std::memcpy(out, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string* out, std::string_view what) {
    uint64_t len = 0;
    if (absl::Status s = Read(&len, what, " length"); !s.ok()) return s;
    if (len > remaining()) {
      truncated_ = true;
      return absl::InvalidArgumentError(absl::StrCat(Sv(what), " length ", len, " at offset ",
                                                     pos_ - 8, " exceeds the ", remaining(),
                                                     " bytes left in the file"));
    }
    out->assign(base_ + pos_, len);
    pos_ += len;
    return absl::OkStatus();
  }

 private:
  const char* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
  bool truncated_ = false;
};

absl::Status ReadType(Cursor& in, std::string_view what, GgufType* out) {
  uint32_t raw = 0;
  if (absl::Status s = in.Read(&raw, what); !s.ok()) return s;
  if (raw >= kNumTypes) {
    return absl::InvalidArgumentError(absl::StrCat(Sv(what), " ", raw, " at offset ", in.pos() - 4,
                                                   " is not a GGUF value type (0..12)"));
  }
  *out = static_cast<GgufType>(raw);
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadInt(Cursor& in, GgufValue* v) {
  T x{};
  if (absl::Status s = in.Read(&x, GgufTypeName(v->type)); !s.ok()) return s;
  if constexpr (std::is_signed_v<T>) {
    v->i = x;
    v->u = x >= 0 ? static_cast<uint64_t>(x) : 0;
  } else {
    v->u = x;
    v->i = x <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? static_cast<int64_t>(x)
                                                                           : 0;
  }
  return absl::OkStatus();
}

// Reads one value of `v->type`. `budget` is the number of values still allowed.
absl::Status ReadValue(Cursor& in, int depth, uint64_t* budget, GgufValue* v) {
  if (*budget == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the metadata holds more than ", kMaxMetadataValues, " values"));
  }
  --*budget;
  switch (v->type) {
    case GgufType::kUint8:
      return ReadInt<uint8_t>(in, v);
    case GgufType::kInt8:
      return ReadInt<int8_t>(in, v);
    case GgufType::kUint16:
      return ReadInt<uint16_t>(in, v);
    case GgufType::kInt16:
      return ReadInt<int16_t>(in, v);
    case GgufType::kUint32:
      return ReadInt<uint32_t>(in, v);
    case GgufType::kInt32:
      return ReadInt<int32_t>(in, v);
    case GgufType::kUint64:
      return ReadInt<uint64_t>(in, v);
    case GgufType::kInt64:
      return ReadInt<int64_t>(in, v);
    case GgufType::kFloat32: {
      float x = 0;
      if (absl::Status s = in.Read(&x, "float32"); !s.ok()) return s;
      v->f = x;
      return absl::OkStatus();
    }
    case GgufType::kFloat64:
      return in.Read(&v->f, "float64");
    case GgufType::kBool: {
      uint8_t x = 0;
      if (absl::Status s = in.Read(&x, "bool"); !s.ok()) return s;
      v->b = x != 0;
      return absl::OkStatus();
    }
    case GgufType::kString:
      return in.ReadString(&v->s, "string");
    case GgufType::kArray:
      break;
  }
  if (depth >= kMaxArrayDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("arrays nested more than ", kMaxArrayDepth, " deep"));
  }
  if (absl::Status s = ReadType(in, "array element type", &v->array_type); !s.ok()) return s;
  uint64_t count = 0;
  if (absl::Status s = in.Read(&count, "array count"); !s.ok()) return s;
  // Checked before reserving: a lying count must fail here, not in the allocator.
  const uint64_t min_size = kTypeTraits[static_cast<uint32_t>(v->array_type)].min_size;
  if (count > in.remaining() / min_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("array count ", count, " of ", GgufTypeName(v->array_type), " at offset ",
                     in.pos() - 8, " needs at least ", min_size, " bytes each, but only ",
                     in.remaining(), " bytes are left in the file"));
  }
  if (count > *budget) {
    return absl::InvalidArgumentError(absl::StrCat("array count ", count,
                                                   ": the metadata would hold more than ",
                                                   kMaxMetadataValues, " values"));
  }
  v->array.resize(count);
  for (uint64_t k = 0; k < count; ++k) {
    GgufValue& e = v->array[k];
    e.type = v->array_type;
    if (absl::Status s = ReadValue(in, depth + 1, budget, &e); !s.ok()) {
      return absl::Status(
          s.code(), absl::StrCat("element ", k, " of ", count, ": ", Sv(std::string(s.message()))));
    }
  }
  return absl::OkStatus();
}

// A view of `shape` at `data` when it is aligned for the dtype, else an owned copy. GGUF data is
// aligned to general.alignment (32 by default), but a file may set 1, and kernels may fault on
// (or mis-handle) misaligned element pointers. Quantized blocks need 2 (their ggml_half scales).
Tensor ViewOrCopy(const char* data, std::vector<int64_t> shape, DType dtype,
                  const std::shared_ptr<const void>& holder) {
  const size_t align = IsQuantized(dtype) ? 2 : DTypeSize(dtype);
  if (reinterpret_cast<uintptr_t>(data) % align == 0) {
    return Tensor::View(const_cast<char*>(data), std::move(shape), dtype, holder);
  }
  Tensor copy = Tensor::Empty(std::move(shape), dtype);
  std::memcpy(copy.raw(), data, copy.nbytes());
  ReleaseMapped(data, copy.nbytes());  // the copy is what the rank holds
  return copy;
}

// "<path>: <where>: <what went wrong>", and when the file ended early, which count lied.
absl::Status ReadError(const std::string& path, std::string_view where, const absl::Status& s,
                       bool truncated, const std::string& count_lie) {
  return absl::Status(s.code(), absl::StrCat(path, ": ", Sv(where), ": ",
                                             Sv(std::string(s.message())), truncated ? " (" : "",
                                             truncated ? count_lie : "", truncated ? ")" : ""));
}

std::string Range(uint64_t begin, uint64_t end) { return absl::StrCat("[", begin, ", ", end, ")"); }

}  // namespace

const char* GgufTypeName(GgufType type) {
  const auto t = static_cast<uint32_t>(type);
  return t < kNumTypes ? kTypeTraits[t].name : "unknown";
}

absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type) {
  static constexpr std::pair<uint32_t, DType> kSupported[] = {
      {0, DType::kF32},   {1, DType::kF16},   {2, DType::kQ4_0}, {3, DType::kQ4_1},
      {6, DType::kQ5_0},  {7, DType::kQ5_1},  {8, DType::kQ8_0}, {12, DType::kQ4_K},
      {13, DType::kQ5_K}, {14, DType::kQ6_K}, {30, DType::kBF16}};
  for (const auto& [number, dtype] : kSupported) {
    if (number == ggml_type) return dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "ggml type ", ggml_type, " (", GgmlTypeName(ggml_type),
      ") is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, "
      "Q6_K)"));
}

GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  return OpenImpl(path, /*read_tensors=*/true);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::OpenMetadata(const std::string& path) {
  return OpenImpl(path, /*read_tensors=*/false);
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::OpenImpl(const std::string& path,
                                                             bool read_tensors) {
  absl::StatusOr<MappedFile> mapped = MapFile(path);
  if (!mapped.ok()) return mapped.status();
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->mapping_ = std::move(mapped->mapping);
  file->base_ = mapped->data;
  file->file_size_ = mapped->size;
  auto error = [&path](std::string_view where, const absl::Status& s) {
    return absl::Status(s.code(),
                        absl::StrCat(path, ": ", Sv(where), ": ", Sv(std::string(s.message()))));
  };
  auto invalid = [&path](auto&&... pieces) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", pieces...));
  };

  Cursor in(file->base_, file->file_size_);
  // Magic first, so that any other file gets "not a GGUF file" rather than "truncated".
  if (file->file_size_ < 4 || std::memcmp(file->base_, "GGUF", 4) != 0) {
    std::string got(file->base_, std::min<size_t>(4, file->file_size_));
    for (char& c : got) {
      if (c < 0x20 || c > 0x7e) c = '?';
    }
    return invalid("bad magic '", got, "' (", file->file_size_,
                   "-byte file): expected 'GGUF': not a GGUF file");
  }
  uint32_t magic = 0;
  (void)in.Read(&magic, "magic");
  if (absl::Status s = in.Read(&file->version_, "version"); !s.ok()) return error("header", s);
  const uint32_t version = file->version_;
  if (version == 1) {
    return invalid(
        "GGUF version 1 is not supported (it uses 32-bit counts): only versions 2 and "
        "3; convert the file with a current llama.cpp");
  }
  if (version != 2 && version != 3) {
    const uint32_t swapped = __builtin_bswap32(version);
    if (swapped >= 1 && swapped <= 3) {
      return invalid("GGUF version ", version, " reads as version ", swapped,
                     " byte-swapped: big-endian GGUF files are not supported");
    }
    return invalid("unknown GGUF version ", version, ": only versions 2 and 3 are supported");
  }
  uint64_t tensor_count = 0, kv_count = 0;
  if (absl::Status s = in.Read(&tensor_count, "tensor_count"); !s.ok()) return error("header", s);
  if (absl::Status s = in.Read(&kv_count, "kv_count"); !s.ok()) return error("header", s);

  // ---- Metadata. Every loop iteration consumes bytes, so a lying count ends at the file's end.
  uint64_t budget = kMaxMetadataValues;
  std::string last_key;
  for (uint64_t k = 0; k < kv_count; ++k) {
    auto fail = [&](std::string_view where, const absl::Status& s) {
      return ReadError(
          path, where, s, in.truncated(),
          absl::StrCat("kv_count ", kv_count, " but the file ends after ", k, " metadata entries"));
    };
    std::string key;
    if (absl::Status s = in.ReadString(&key, "key"); !s.ok()) {
      std::string entry = absl::StrCat("metadata entry ", k, " of ", kv_count);
      if (k > 0) absl::StrAppend(&entry, " (after key '", last_key, "')");
      return fail(entry, s);
    }
    const std::string where = absl::StrCat("metadata key '", key, "'");
    GgufValue value;
    if (absl::Status s = ReadType(in, "value type", &value.type); !s.ok()) return fail(where, s);
    if (absl::Status s = ReadValue(in, 0, &budget, &value); !s.ok()) return fail(where, s);
    if (!file->metadata_.emplace(key, std::move(value)).second) {
      return invalid(where, " appears twice");
    }
    last_key = std::move(key);
  }

  if (const GgufValue* a = file->Find("general.alignment"); a != nullptr) {
    if (a->type != GgufType::kUint32) {
      return invalid("metadata key 'general.alignment': expected uint32, got ", TypeString(*a));
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      return invalid("metadata key 'general.alignment': ", a->u, " is not a power of two");
    }
    file->alignment_ = a->u;
  } else {
    file->alignment_ = kDefaultAlignment;
  }
  if (!read_tensors) {
    file->metadata_only_ = true;
    return file;
  }

  // ---- Tensor infos: parsed and checked for shape and type; offsets once the data start is known.
  struct Raw {
    TensorInfo* info;
    uint64_t offset;  // relative to the data section
  };
  std::vector<Raw> raws;
  std::string last_name;
  for (uint64_t t = 0; t < tensor_count; ++t) {
    auto fail = [&](std::string_view where, const absl::Status& s) {
      return ReadError(path, where, s, in.truncated(),
                       absl::StrCat("tensor_count ", tensor_count, " but the file ends after ", t,
                                    " tensor infos"));
    };
    std::string name;
    if (absl::Status s = in.ReadString(&name, "name"); !s.ok()) {
      std::string entry = absl::StrCat("tensor info ", t, " of ", tensor_count);
      if (t > 0) absl::StrAppend(&entry, " (after tensor '", last_name, "')");
      return fail(entry, s);
    }
    const std::string where = absl::StrCat("tensor '", name, "'");
    if (file->tensors_.count(name) != 0) return invalid(where, " appears twice");
    uint32_t n_dims = 0;
    if (absl::Status s = in.Read(&n_dims, "n_dims"); !s.ok()) return fail(where, s);
    if (n_dims > kMaxDims) {
      return invalid(where, ": n_dims ", n_dims, " is more than ", kMaxDims);
    }
    uint64_t ne[kMaxDims] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; ++d) {
      if (absl::Status s = in.Read(&ne[d], "ne"); !s.ok()) return fail(where, s);
    }
    uint32_t ggml_type = 0;
    if (absl::Status s = in.Read(&ggml_type, "type"); !s.ok()) return fail(where, s);
    uint64_t offset = 0;
    if (absl::Status s = in.Read(&offset, "offset"); !s.ok()) return fail(where, s);

    TensorInfo info;
    info.name = name;
    info.file = path;
    absl::StatusOr<DType> dtype = DTypeFromGgml(ggml_type);
    if (!dtype.ok()) return error(where, dtype.status());
    info.dtype = *dtype;
    std::string ne_text = "[";
    for (uint32_t d = 0; d < n_dims; ++d) absl::StrAppend(&ne_text, d ? ", " : "", ne[d]);
    ne_text += "]";
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      // ggml's ne are int64: 0 and values past INT64_MAX have no tensor behind them.
      if (ne[d] == 0 || ne[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return invalid(where, ": ne ", ne_text, ": dimension ", d, " is ",
                       ne[d] == 0 ? "0" : "negative as int64", ", expected at least 1");
      }
      if (__builtin_mul_overflow(numel, ne[d], &numel) ||
          numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return invalid(where, ": ne ", ne_text, ": the element count overflows int64");
      }
    }
    const uint64_t block = static_cast<uint64_t>(DTypeBlockElements(info.dtype));
    if (ne[0] % block != 0) {
      return invalid(where, ": ne ", ne_text, ": ne[0] = ", ne[0], " is not a multiple of the ",
                     DTypeName(info.dtype), " block size ", block);
    }
    if (__builtin_mul_overflow(numel / block, DTypeBlockBytes(info.dtype), &info.size)) {
      return invalid(where, ": ne ", ne_text, ": the byte size overflows 64 bits");
    }
    // HF order: slowest-varying dimension first.
    for (uint32_t d = n_dims; d-- > 0;) info.shape.push_back(static_cast<int64_t>(ne[d]));
    auto it = file->tensors_.emplace(name, std::move(info)).first;
    raws.push_back(Raw{&it->second, offset});
    last_name = std::move(name);
  }

  // ---- Data section: starts at the next multiple of the alignment (no padding is needed, and
  // files without tensors often end right here).
  const uint64_t align = file->alignment_;
  const uint64_t data_start = (in.pos() + align - 1) / align * align;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const Raw& r : raws) {
    TensorInfo& info = *r.info;
    const std::string where = absl::StrCat("tensor '", info.name, "'");
    if (r.offset % align != 0) {
      return invalid(where, ": offset ", r.offset, " is not a multiple of general.alignment ",
                     align);
    }
    uint64_t begin = 0, end = 0;
    if (__builtin_add_overflow(data_start, r.offset, &begin) ||
        __builtin_add_overflow(begin, info.size, &end) || end > file->file_size_) {
      return invalid(where, ": data at offset ", r.offset, " + ", info.size,
                     " bytes from the data section start ", data_start,
                     " extends past the end of the file (", file->file_size_,
                     " bytes): file truncated?");
    }
    info.offset = begin;
    spans.push_back(Span{r.offset, r.offset + info.size, &info.name});
  }
  // Two tensors sharing bytes would alias each other's weights.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const Span* furthest = nullptr;  // among those before, the one reaching furthest
  for (const Span& s : spans) {
    if (furthest != nullptr && s.begin < furthest->end) {
      return invalid("tensors '", *furthest->name, "' ", Range(furthest->begin, furthest->end),
                     " and '", *s.name, "' ", Range(s.begin, s.end),
                     " overlap in the data section");
    }
    if (furthest == nullptr || s.end > furthest->end) furthest = &s;
  }
  return file;
}

// ---- Metadata look-ups.

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

// An integer value as int64; false when it is a uint64 past INT64_MAX.
bool IntOf(const GgufValue& v, int64_t* out) {
  if (v.type == GgufType::kUint64 &&
      v.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return false;
  }
  *out = v.type == GgufType::kUint64 ? static_cast<int64_t>(v.u) : v.i;
  return true;
}

double FloatOf(const GgufValue& v) {
  if (IsFloatType(v.type)) return v.f;
  return v.type == GgufType::kUint64 ? static_cast<double>(v.u) : static_cast<double>(v.i);
}

bool IsNumberType(GgufType t) { return IsIntegerType(t) || IsFloatType(t); }

// The value of `key` when `accept(type, array_type)`; else NotFound, or InvalidArgument naming
// the `expected` and actual types.
absl::StatusOr<const GgufValue*> Typed(const GgufFile& file, std::string_view key,
                                       std::string_view expected,
                                       bool (*accept)(GgufType type, GgufType array_type)) {
  const GgufValue* v = file.Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(absl::StrCat(file.path(), ": no metadata key '", Sv(key), "'"));
  }
  if (!accept(v->type, v->array_type)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": metadata key '", Sv(key),
                                                   "': expected ", Sv(expected), ", got ",
                                                   TypeString(*v)));
  }
  return v;
}

absl::Status DoesNotFit(const GgufFile& file, std::string_view key, std::string_view element,
                        uint64_t u) {
  return absl::InvalidArgumentError(absl::StrCat(file.path(), ": metadata key '", Sv(key),
                                                 "': ", Sv(element), "uint64 ", u,
                                                 " does not fit in int64"));
}

}  // namespace

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(
      const GgufValue* v,
      Typed(*this, key, "string", [](GgufType t, GgufType) { return t == GgufType::kString; }));
  return v->s;
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(
      const GgufValue* v,
      Typed(*this, key, "an integer", [](GgufType t, GgufType) { return IsIntegerType(t); }));
  int64_t out = 0;
  if (!IntOf(*v, &out)) return DoesNotFit(*this, key, "", v->u);
  return out;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(const GgufValue* v,
                           Typed(*this, key, "a float or integer",
                                 [](GgufType t, GgufType) { return IsNumberType(t); }));
  return FloatOf(*v);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(const GgufValue* v, Typed(*this, key, "bool", [](GgufType t, GgufType) {
                             return t == GgufType::kBool;
                           }));
  return v->b;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(const GgufValue* v,
                           Typed(*this, key, "array of string", [](GgufType t, GgufType e) {
                             return t == GgufType::kArray && e == GgufType::kString;
                           }));
  std::vector<std::string> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(e.s);
  return out;
}

absl::StatusOr<std::vector<double>> GgufFile::GetFloatArray(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(
      const GgufValue* v,
      Typed(*this, key, "array of float or integer",
            [](GgufType t, GgufType e) { return t == GgufType::kArray && IsNumberType(e); }));
  std::vector<double> out;
  out.reserve(v->array.size());
  for (const GgufValue& e : v->array) out.push_back(FloatOf(e));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  SHARDLM_ASSIGN_OR_RETURN(const GgufValue* v,
                           Typed(*this, key, "array of integer", [](GgufType t, GgufType e) {
                             return t == GgufType::kArray && IsIntegerType(e);
                           }));
  std::vector<int64_t> out(v->array.size());
  for (size_t k = 0; k < v->array.size(); ++k) {
    if (!IntOf(v->array[k], &out[k])) {
      return DoesNotFit(*this, key, absl::StrCat("element ", k, ": "), v->array[k].u);
    }
  }
  return out;
}

// ---- Tensors.

std::vector<std::string> GgufFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<TensorInfo> GgufFile::Info(std::string_view name) const {
  if (metadata_only_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": opened for its metadata only (GgufFile::OpenMetadata): no tensor '",
                     Sv(name), "' can be read"));
  }
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor named '", Sv(name), "'"));
  }
  return it->second;
}

absl::StatusOr<TensorInfo> GgufFile::SliceInfo(std::string_view name, int64_t index) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  const std::string where =
      absl::StrCat(path_, ": tensor '", Sv(name), "' of shape ", ShapeString(info->shape));
  if (info->shape.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " has no slices (", index, " asked for): it needs 2 or more dims"));
  }
  if (index < 0 || index >= info->shape[0]) {
    return absl::NotFoundError(
        absl::StrCat(where, " has no slice ", index, " (it has ", info->shape[0], ")"));
  }
  // ne[0] is a multiple of the block size (checked at Open), so every slice is whole blocks.
  const uint64_t slice_bytes = info->size / static_cast<uint64_t>(info->shape[0]);
  info->name = absl::StrCat(info->name, "[", index, "]");
  info->shape.erase(info->shape.begin());
  info->offset += static_cast<uint64_t>(index) * slice_bytes;
  info->size = slice_bytes;
  return info;
}

absl::Status GgufFile::CheckWithin(const TensorInfo& info) const {
  if (info.offset > file_size_ || info.size > file_size_ - info.offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", info.name, "': bytes ", Range(info.offset, info.offset + info.size),
        " are not within the file's ", file_size_, " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> GgufFile::Load(std::string_view name) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  return LoadInfo(*info);
}

absl::StatusOr<Tensor> GgufFile::LoadRows(std::string_view name, int64_t begin, int64_t end) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  return LoadRowsOf(*info, begin, end);
}

absl::StatusOr<Tensor> GgufFile::LoadColumns(std::string_view name, int64_t begin,
                                             int64_t end) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  return LoadColumnsOf(*info, begin, end);
}

absl::StatusOr<Tensor> GgufFile::LoadInfo(const TensorInfo& info) const {
  SHARDLM_RETURN_IF_ERROR(CheckWithin(info));
  return ViewOrCopy(base_ + info.offset, info.shape, info.dtype, mapping_);
}

absl::StatusOr<Tensor> GgufFile::LoadRowsOf(const TensorInfo& info, int64_t begin,
                                            int64_t end) const {
  SHARDLM_RETURN_IF_ERROR(CheckWithin(info));
  const std::string where =
      absl::StrCat(path_, ": tensor '", info.name, "' of shape ", ShapeString(info.shape));
  if (info.shape.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " is a scalar: it has no rows [", begin, ", ", end, ")"));
  }
  const int64_t rows = info.shape[0];
  if (begin < 0 || begin > end || end > rows) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": rows [", begin, ", ", end, ") are not within [0, ", rows, ")"));
  }
  int64_t row_elements = 1;
  for (size_t d = 1; d < info.shape.size(); ++d) row_elements *= info.shape[d];
  // Rows of 2-D and larger tensors are whole blocks; only a 1-D quantized tensor can be cut
  // inside a block.
  const int64_t block = DTypeBlockElements(info.dtype);
  if ((begin * row_elements) % block != 0 || (end * row_elements) % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": rows [", begin, ", ", end, ") do not start and end on ",
                     DTypeName(info.dtype), " block boundaries (", block, " elements)"));
  }
  std::vector<int64_t> shape = info.shape;
  shape[0] = end - begin;
  return ViewOrCopy(base_ + info.offset + DTypeBytes(info.dtype, begin * row_elements),
                    std::move(shape), info.dtype, mapping_);
}

absl::StatusOr<Tensor> GgufFile::LoadColumnsOf(const TensorInfo& info, int64_t begin,
                                               int64_t end) const {
  SHARDLM_RETURN_IF_ERROR(CheckWithin(info));
  const std::string where =
      absl::StrCat(path_, ": tensor '", info.name, "' of shape ", ShapeString(info.shape));
  if (info.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": columns [", begin, ", ", end, ") need a 2-D tensor"));
  }
  const int64_t rows = info.shape[0];
  const int64_t cols = info.shape[1];
  if (begin < 0 || begin > end || end > cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": columns [", begin, ", ", end, ") are not within [0, ", cols, ")"));
  }
  const int64_t block = DTypeBlockElements(info.dtype);
  if (begin % block != 0 || end % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": columns [", begin, ", ", end, ") do not start and end on ",
                     DTypeName(info.dtype), " block boundaries (block size ", block, ")"));
  }
  const size_t row_bytes = DTypeBytes(info.dtype, cols);
  const size_t skip = DTypeBytes(info.dtype, begin);
  const size_t out_row_bytes = DTypeBytes(info.dtype, end - begin);
  Tensor out = Tensor::Empty({rows, end - begin}, info.dtype);
  const char* src = base_ + info.offset + skip;
  char* dst = static_cast<char*>(out.raw());
  // One call maps the tensor's pages rather than a page fault for each (the rows' other columns
  // share their pages; all is dropped again below). A failed read shows in the copy instead.
  static_cast<void>(PopulateMapped(base_ + info.offset, info.size, path_));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + static_cast<size_t>(r) * out_row_bytes,
                src + static_cast<size_t>(r) * row_bytes, out_row_bytes);
  }
  // The rows' other columns share those pages (other ranks' slices): none is needed here again.
  ReleaseMapped(base_ + info.offset, info.size);
  return out;
}

absl::Status GgufFile::Populate(const Tensor& t) const {
  if (!IsViewOf(t, mapping_, base_, file_size_)) return absl::OkStatus();
  return PopulateMapped(t.raw(), t.nbytes(), path_);
}

void GgufFile::Release(const Tensor& t) const {
  if (IsViewOf(t, mapping_, base_, file_size_)) ReleaseMapped(t.raw(), t.nbytes());
}

void GgufFile::Trim(std::span<const Tensor> kept) const {
  ReleaseMappedExcept(mapping_, base_, file_size_, kept);
}

}  // namespace shardlm
