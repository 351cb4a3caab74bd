#include "formats/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "formats/mmap_file.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using nlohmann::json;

constexpr size_t kLengthPrefix = 8;  // the little-endian u64 header length

// Debian's abseil is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A bad value as it appears in the header, shortened: enough to recognise it in a one-line message.
std::string Got(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (text.size() > kMax) text = text.substr(0, kMax - 3) + "...";
  return text;
}

std::string Range(uint64_t begin, uint64_t end) { return absl::StrCat("[", begin, ", ", end, ")"); }

// A non-negative JSON integer as uint64; nullopt for anything else (floats, negatives, strings).
std::optional<uint64_t> AsU64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  absl::StatusOr<MappedFile> mapped = MapFile(path);
  if (!mapped.ok()) return mapped.status();
  const size_t file_size = mapped->size;
  // Checked before any read: a shorter file cannot hold the length.
  if (file_size < kLengthPrefix) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", file_size,
                     " bytes, too short for the 8-byte header length: not a safetensors file"));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  // The mapping outlives this object as long as any tensor view holds it.
  file->mapping_ = std::move(mapped->mapping);
  file->base_ = mapped->data;
  file->file_size_ = file_size;

  uint64_t header_len = 0;
  for (size_t i = 0; i < kLengthPrefix; ++i) {
    header_len |= static_cast<uint64_t>(static_cast<unsigned char>(file->base_[i])) << (8 * i);
  }
  if (header_len > file_size - kLengthPrefix) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the file size ", file_size,
                     " minus the 8-byte length prefix (at most ", file_size - kLengthPrefix,
                     "): truncated or not a safetensors file"));
  }
  const char* header_begin = file->base_ + kLengthPrefix;
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_len);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header (", header_len, " bytes) is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header: expected a JSON object, got ", Got(header)));
  }

  const uint64_t data_start = kLengthPrefix + header_len;
  const uint64_t data_size = file_size - data_start;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  try {
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) {
          return absl::InvalidArgumentError(absl::StrCat(
              path, ": '__metadata__': expected an object of strings, got ", Got(entry)));
        }
        for (const auto& [key, value] : entry.items()) {
          if (!value.is_string()) {
            return absl::InvalidArgumentError(absl::StrCat(
                path, ": '__metadata__' entry '", key, "': expected a string, got ", Got(value)));
          }
          file->metadata_[key] = value.get<std::string>();
        }
        continue;
      }
      const std::string where = absl::StrCat(path, ": tensor '", name, "'");
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": expected an object with dtype, shape and data_offsets, got ", Got(entry)));
      }
      for (const char* field : {"dtype", "shape", "data_offsets"}) {
        if (!entry.contains(field)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": missing field '", field, "'"));
        }
      }

      TensorInfo info;
      info.name = name;
      info.file = path;

      const json& dtype = entry["dtype"];
      if (!dtype.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": field 'dtype': expected a string, got ", Got(dtype)));
      }
      // ParseDType's message lists what is supported, so it stays right as dtypes are added.
      absl::StatusOr<DType> parsed = ParseDType(dtype.get<std::string>());
      if (!parsed.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": ", parsed.status().message()));
      }
      info.dtype = *parsed;

      const json& shape = entry["shape"];
      if (!shape.is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": field 'shape': expected a list of non-negative integers, got ", Got(shape)));
      }
      // Element count times element size, overflow-checked: a hostile header must not wrap
      // around into a plausible byte count.
      uint64_t nbytes = DTypeSize(info.dtype);
      bool overflow = false;
      for (size_t i = 0; i < shape.size(); ++i) {
        std::optional<uint64_t> d = AsU64(shape[i]);
        if (!d || *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": field 'shape' ", Got(shape), ": dimension ", i,
                           ": expected a non-negative integer, got ", Got(shape[i])));
        }
        info.shape.push_back(static_cast<int64_t>(*d));
        overflow = overflow || __builtin_mul_overflow(nbytes, *d, &nbytes);
      }

      const json& offsets = entry["data_offsets"];
      std::optional<uint64_t> begin, end;
      if (offsets.is_array() && offsets.size() == 2) {
        begin = AsU64(offsets[0]);
        end = AsU64(offsets[1]);
      }
      if (!begin || !end) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": field 'data_offsets': expected [begin, end] of non-negative integers, got ",
            Got(offsets)));
      }
      if (*begin > *end) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": data_offsets [", *begin, ", ", *end, "]: begin is after end"));
      }
      if (overflow || nbytes != *end - *begin) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": shape ", ShapeString(info.shape), " of ", Sv(DTypeName(info.dtype)),
            " needs ", overflow ? "more than 2^64" : absl::StrCat(nbytes),
            " bytes, but data_offsets ", Range(*begin, *end), " hold ", *end - *begin, " bytes"));
      }
      if (*end > data_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " data range ", Range(*begin, *end),
            " extends past the end of the data section (", data_size, " bytes): file truncated?"));
      }
      info.offset = data_start + *begin;
      info.size = nbytes;
      auto [it, inserted] = file->tensors_.emplace(name, std::move(info));
      if (*end > *begin) spans.push_back(Span{*begin, *end, &it->first});
    }
  } catch (const std::exception& e) {
    // Only reachable through a bug above (nlohmann type errors) or std::bad_alloc.
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read header: ", e.what()));
  }

  // Two tensors sharing bytes would alias each other's weights. Empty tensors occupy nothing.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const Span* furthest = nullptr;  // among those before, the one reaching furthest
  for (const Span& s : spans) {
    if (furthest != nullptr && s.begin < furthest->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensors '", *furthest->name, "' ", Range(furthest->begin, furthest->end),
          " and '", *s.name, "' ", Range(s.begin, s.end), " overlap in the data section"));
    }
    if (furthest == nullptr || s.end > furthest->end) furthest = &s;
  }
  return file;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) names.push_back(name);
  return names;
}

absl::StatusOr<TensorInfo> SafetensorsFile::Info(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor named '", Sv(name), "'"));
  }
  return it->second;
}

namespace {

// A view of `shape` at `data` when it is aligned for the dtype; otherwise an owned copy. Files
// from HF's writer are always aligned, but a hand-made header can put a float at an odd offset,
// and vectorised kernels may fault on (or mis-handle) misaligned element pointers.
Tensor ViewOrCopy(const char* data, std::vector<int64_t> shape, DType dtype,
                  const std::shared_ptr<const void>& holder) {
  if (reinterpret_cast<uintptr_t>(data) % DTypeSize(dtype) == 0) {
    return Tensor::View(const_cast<char*>(data), std::move(shape), dtype, holder);
  }
  Tensor copy = Tensor::Empty(std::move(shape), dtype);
  std::memcpy(copy.raw(), data, copy.nbytes());
  ReleaseMapped(data, copy.nbytes());  // the copy is what the rank holds
  return copy;
}

}  // namespace

absl::Status SafetensorsFile::Populate(const Tensor& t) const {
  if (!IsViewOf(t, mapping_, base_, file_size_)) return absl::OkStatus();
  return PopulateMapped(t.raw(), t.nbytes(), path_);
}

void SafetensorsFile::Release(const Tensor& t) const {
  if (IsViewOf(t, mapping_, base_, file_size_)) ReleaseMapped(t.raw(), t.nbytes());
}

void SafetensorsFile::Trim(std::span<const Tensor> kept) const {
  ReleaseMappedExcept(mapping_, base_, file_size_, kept);
}

absl::StatusOr<Tensor> SafetensorsFile::Load(std::string_view name) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  return ViewOrCopy(base_ + info->offset, info->shape, info->dtype, mapping_);
}

absl::StatusOr<Tensor> SafetensorsFile::LoadRows(std::string_view name, int64_t begin,
                                                 int64_t end) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  if (info->shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", Sv(name), "' is a scalar: it has no rows [", begin, ", ", end, ")"));
  }
  const int64_t rows = info->shape[0];
  if (begin < 0 || begin > end || end > rows) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", Sv(name), "' of shape ",
                                                   ShapeString(info->shape), ": rows [", begin,
                                                   ", ", end, ") are not within [0, ", rows, ")"));
  }
  int64_t row_elements = 1;
  for (size_t i = 1; i < info->shape.size(); ++i) row_elements *= info->shape[i];
  const uint64_t row_bytes = static_cast<uint64_t>(row_elements) * DTypeSize(info->dtype);
  std::vector<int64_t> shape = info->shape;
  shape[0] = end - begin;
  return ViewOrCopy(base_ + info->offset + static_cast<uint64_t>(begin) * row_bytes,
                    std::move(shape), info->dtype, mapping_);
}

absl::StatusOr<Tensor> SafetensorsFile::LoadColumns(std::string_view name, int64_t begin,
                                                    int64_t end) const {
  absl::StatusOr<TensorInfo> info = Info(name);
  if (!info.ok()) return info.status();
  if (info->shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", Sv(name), "' of shape ",
                                                   ShapeString(info->shape), ": columns [", begin,
                                                   ", ", end, ") need a 2-D tensor"));
  }
  const int64_t rows = info->shape[0];
  const int64_t cols = info->shape[1];
  if (begin < 0 || begin > end || end > cols) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", Sv(name), "' of shape ",
                                                   ShapeString(info->shape), ": columns [", begin,
                                                   ", ", end, ") are not within [0, ", cols, ")"));
  }
  const size_t elem = DTypeSize(info->dtype);
  const size_t row_bytes = static_cast<size_t>(cols) * elem;
  const size_t out_row_bytes = static_cast<size_t>(end - begin) * elem;
  Tensor out = Tensor::Empty({rows, end - begin}, info->dtype);
  const char* src = base_ + info->offset + static_cast<size_t>(begin) * elem;
  char* dst = static_cast<char*>(out.raw());
  // One call maps the tensor's pages rather than a page fault for each (the rows' other columns
  // share their pages; all is dropped again below). A failed read shows in the copy instead.
  static_cast<void>(PopulateMapped(base_ + info->offset, info->size, path_));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + static_cast<size_t>(r) * out_row_bytes,
                src + static_cast<size_t>(r) * row_bytes, out_row_bytes);
  }
  // The rows' other columns share those pages (other ranks' slices): none is needed here again.
  ReleaseMapped(base_ + info->offset, info->size);
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::string header_text;
  try {
    // nlohmann::json objects are std::maps: keys come out sorted, so the header is a pure
    // function of the inputs.
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::set<std::string_view> seen;
    uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
      const std::string where = absl::StrCat(path, ": tensor '", name, "'");
      if (name.empty() || name == "__metadata__") {
        return absl::InvalidArgumentError(absl::StrCat(where, ": reserved or empty name"));
      }
      if (!seen.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": given twice"));
      }
      if (t.device() != Device::kCpu) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": not in host memory"));
      }
      if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(where, ": has no data"));
      for (int64_t d : t.shape()) {
        if (d < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": negative dimension in shape ", t.ShapeString()));
        }
      }
      const uint64_t nbytes = t.nbytes();
      header[name] = {{"dtype", std::string(DTypeName(t.dtype()))},
                      {"shape", t.shape()},
                      {"data_offsets", json::array({offset, offset + nbytes})}};
      offset += nbytes;
    }
    // Strict: a name that is not UTF-8 cannot be written as JSON and must not be mangled.
    header_text = header.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot encode header: ", e.what()));
  }
  // Pad so the data section starts 8-byte aligned, as HF's writer does: element pointers into
  // the mmap are then aligned for every dtype.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  unsigned char prefix[kLengthPrefix];
  for (size_t i = 0; i < kLengthPrefix; ++i) {
    prefix[i] = static_cast<unsigned char>(static_cast<uint64_t>(header_text.size()) >> (8 * i));
  }

  // Written under a temporary name and renamed into place: a reader never sees a half-written
  // checkpoint, and a failed write leaves any previous file intact.
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> out = AtomicFileWriter::Create(path);
  if (!out.ok()) return out.status();
  if (auto s = (*out)->Write(prefix, sizeof prefix); !s.ok()) return s;
  if (auto s = (*out)->Write(header_text); !s.ok()) return s;
  for (const auto& [name, t] : tensors) {
    if (t.nbytes() == 0) continue;
    if (auto s = (*out)->Write(t.raw(), t.nbytes()); !s.ok()) return s;
  }
  if (auto s = (*out)->Commit(); !s.ok()) return s;
  return absl::OkStatus();
}

}  // namespace shardlm
