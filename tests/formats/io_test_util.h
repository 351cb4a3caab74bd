// Helpers shared by the model I/O tests: a fresh temp directory per test, raw file writing, and
// checks on error statuses.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "base/dtype.h"
#include "base/tensor.h"

namespace shardlm::testing {

// A directory of its own for one test, removed with everything in it afterwards.
class TempDir {
 public:
  TempDir() {
    std::string base = ::testing::TempDir();
    if (base.empty() || base.back() != '/') base += '/';
    std::string pattern = base + "shardlm_model_io_XXXXXX";
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  std::string File(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::string Le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}

// A safetensors image exactly as given: no padding, so tests control every byte.
inline std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  return Le64(header.size()) + header + data;
}

// A host tensor of `dtype` whose element i holds value(i) (rounded to the dtype).
inline Tensor MakeTensor(std::vector<int64_t> shape, DType dtype,
                         const std::function<float(int64_t)>& value) {
  Tensor t = Tensor::Empty(std::move(shape), dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dtype) {
      case DType::kF32:
        t.data<float>()[i] = value(i);
        break;
      case DType::kBF16:
        t.data<uint16_t>()[i] = F32ToBf16(value(i));
        break;
      case DType::kF16:
        t.data<uint16_t>()[i] = F32ToF16(value(i));
        break;
      default:  // quantized: there is no per-element value to set; fill the raw blocks instead
        ADD_FAILURE() << "MakeTensor: quantized dtype " << DTypeName(dtype);
        return t;
    }
  }
  return t;
}

// Element i of a host tensor, as f32.
inline float At(const Tensor& t, int64_t i) {
  float out = 0;
  ConvertToF32(t.dtype(), static_cast<const char*>(t.raw()) + i * DTypeSize(t.dtype()), &out, 1);
  return out;
}

// `status` is an error of `code` with a one-line message containing every piece.
inline ::testing::AssertionResult IsErrorWith(const absl::Status& status, absl::StatusCode code,
                                              std::initializer_list<std::string> pieces) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK, expected an error";
  std::string message(status.message());
  if (status.code() != code) {
    return ::testing::AssertionFailure()
           << "code " << absl::StatusCodeToString(status.code()) << ", expected "
           << absl::StatusCodeToString(code) << "; message: " << message;
  }
  if (message.find('\n') != std::string::npos) {
    return ::testing::AssertionFailure() << "message is not one line: " << message;
  }
  for (const std::string& piece : pieces) {
    if (!::testing::Value(message, ::testing::HasSubstr(piece))) {
      return ::testing::AssertionFailure() << "message lacks \"" << piece << "\": " << message;
    }
  }
  return ::testing::AssertionSuccess() << message;
}

}  // namespace shardlm::testing
