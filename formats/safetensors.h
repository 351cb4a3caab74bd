// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each tensor
// name to {dtype, shape, data_offsets: [begin, end)} relative to the data section (plus an
// optional "__metadata__" map of strings), then the data.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/weight_source.h"

namespace shardlm {

// One mmapped .safetensors file, validated on open: the header is JSON of the expected form;
// every dtype is known; shape x dtype size equals the byte range; every range lies inside the
// file; no two ranges overlap. Errors name the file and the tensor/field, with expected vs got.
class SafetensorsFile : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile() override;

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

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

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<const void> mapping_;  // munmap on last release; tensors hold it too
  const char* base_ = nullptr;
  size_t file_size_ = 0;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (host memory, any dtype) to `path` in safetensors format. The output is a pure
// function of the inputs: keys sorted, header padded with spaces to a multiple of 8 bytes, data in
// the order given.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace shardlm
