// OpenSafetensorsCheckpoint: a single .safetensors file, or the shards of a HF index.
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "formats/safetensors.h"
#include "formats/weight_source.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

// Debian's abseil is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string Got(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (text.size() > kMax) text = text.substr(0, kMax - 3) + "...";
  return text;
}

// The shards of one index, presented as one source. Every tensor of the index was checked to
// exist in its shard on open, so lookups only fail for names the index does not list.
class ShardedCheckpoint : public WeightSource {
 public:
  ShardedCheckpoint(std::string description, std::string index_path,
                    std::vector<std::unique_ptr<SafetensorsFile>> shards,
                    std::map<std::string, const SafetensorsFile*, std::less<>> route)
      : description_(std::move(description)),
        index_path_(std::move(index_path)),
        shards_(std::move(shards)),
        route_(std::move(route)) {}

  std::string Describe() const override { return description_; }

  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    names.reserve(route_.size());
    for (const auto& [name, shard] : route_) names.push_back(name);
    return names;
  }

  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    absl::StatusOr<const SafetensorsFile*> shard = Shard(name);
    if (!shard.ok()) return shard.status();
    return (*shard)->Info(name);
  }
  absl::StatusOr<Tensor> Load(std::string_view name) const override {
    absl::StatusOr<const SafetensorsFile*> shard = Shard(name);
    if (!shard.ok()) return shard.status();
    return (*shard)->Load(name);
  }
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                  int64_t end) const override {
    absl::StatusOr<const SafetensorsFile*> shard = Shard(name);
    if (!shard.ok()) return shard.status();
    return (*shard)->LoadRows(name, begin, end);
  }
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                     int64_t end) const override {
    absl::StatusOr<const SafetensorsFile*> shard = Shard(name);
    if (!shard.ok()) return shard.status();
    return (*shard)->LoadColumns(name, begin, end);
  }
  // Each shard acts only on a view of its own mapping.
  absl::Status Populate(const Tensor& t) const override {
    for (const auto& shard : shards_) {
      if (absl::Status s = shard->Populate(t); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  void Release(const Tensor& t) const override {
    for (const auto& shard : shards_) shard->Release(t);
  }
  void Trim(std::span<const Tensor> kept) const override {
    for (const auto& shard : shards_) shard->Trim(kept);
  }

 private:
  absl::StatusOr<const SafetensorsFile*> Shard(std::string_view name) const {
    auto it = route_.find(name);
    if (it == route_.end()) {
      return absl::NotFoundError(absl::StrCat(description_, ": no tensor named '", Sv(name),
                                              "' (not in ", index_path_, ")"));
    }
    return it->second;
  }

  std::string description_;
  std::string index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;  // owns what route_ points to
  std::map<std::string, const SafetensorsFile*, std::less<>> route_;
};

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": not found"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open"));
  }
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read failed"));
  try {
    return json::parse(text.str());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSharded(const std::string& description,
                                                          const fs::path& dir,
                                                          const std::string& index_path) {
  absl::StatusOr<json> index = ReadJsonFile(index_path);
  if (!index.ok()) return index.status();
  if (!index->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": expected a JSON object, got ", Got(*index)));
  }
  auto map_it = index->find("weight_map");
  if (map_it == index->end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": missing required field 'weight_map'"));
  }
  const json& weight_map = *map_it;
  if (!weight_map.is_object() || weight_map.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path,
                     ": field 'weight_map': expected a non-empty object of tensor name -> shard "
                     "file, got ",
                     Got(weight_map)));
  }

  // Open each distinct shard once, in name order so the first error reported is deterministic.
  std::map<std::string, std::string> first_tensor_of_shard;  // shard -> a tensor naming it
  for (const auto& [tensor, shard] : weight_map.items()) {
    if (!shard.is_string() || shard.get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry '", tensor,
                                                     "': expected a shard file name, got ",
                                                     Got(shard)));
    }
    const std::string& file = shard.get_ref<const std::string&>();
    // Shards live beside the index; an absolute path would let the index point anywhere.
    if (fs::path(file).is_absolute()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": weight_map entry '", tensor, "': shard '", file,
                       "' must be a file name relative to the index's directory"));
    }
    first_tensor_of_shard.emplace(file, tensor);
  }

  std::vector<std::unique_ptr<SafetensorsFile>> shards;
  std::map<std::string, const SafetensorsFile*> by_file;
  for (const auto& [file, tensor] : first_tensor_of_shard) {
    const std::string shard_path = (dir / file).string();
    std::error_code ec;
    if (!fs::is_regular_file(shard_path, ec)) {
      return absl::NotFoundError(absl::StrCat(index_path, ": shard '", file, "' (holding '", tensor,
                                              "' and maybe more) is missing: ", shard_path,
                                              " is not a file"));
    }
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> opened = SafetensorsFile::Open(shard_path);
    if (!opened.ok()) {
      // The shard's own message names the shard path and the problem; say which index led here.
      return absl::Status(
          opened.status().code(),
          absl::StrCat(opened.status().message(), " (shard '", file, "' of ", index_path, ")"));
    }
    by_file[file] = opened->get();
    shards.push_back(*std::move(opened));
  }

  std::map<std::string, const SafetensorsFile*, std::less<>> route;
  for (const auto& [tensor, shard] : weight_map.items()) {
    const std::string& file = shard.get_ref<const std::string&>();
    const SafetensorsFile* f = by_file.at(file);
    if (!f->Info(tensor).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", tensor,
                                                     "' is listed in shard '", file, "', but ",
                                                     f->path(), " has no such tensor"));
    }
    route.emplace(tensor, f);
  }
  return std::make_unique<ShardedCheckpoint>(description, index_path, std::move(shards),
                                             std::move(route));
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSingle(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  if (!file.ok()) return file.status();
  return std::unique_ptr<WeightSource>(*std::move(file));
}

absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& dir) {
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (!fs::exists(status)) {
    return absl::NotFoundError(absl::StrCat(
        dir,
        ": no such file or directory (expected a checkpoint directory or a .safetensors "
        "file)"));
  }
  if (fs::is_regular_file(status)) {
    if (absl::EndsWith(dir, ".safetensors")) return OpenSingle(dir);
    // Pointing straight at the index is as clear as pointing at its directory.
    if (absl::EndsWith(dir, ".index.json")) {
      return OpenSharded(dir, fs::path(dir).parent_path(), dir);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(dir,
                     ": expected a checkpoint directory, a .safetensors file or a "
                     ".safetensors.index.json file"));
  }
  if (!fs::is_directory(status)) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": expected a checkpoint directory or a .safetensors file"));
  }
  const std::string index_path = (fs::path(dir) / kIndexName).string();
  if (fs::exists(index_path, ec)) return OpenSharded(dir, dir, index_path);
  const std::string single_path = (fs::path(dir) / kSingleName).string();
  if (fs::exists(single_path, ec)) return OpenSingle(single_path);
  return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " has neither ", kIndexName,
                                          " nor ", kSingleName));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> OpenSafetensorsCheckpoint(const std::string& dir) {
  // std::filesystem and nlohmann may throw (bad_alloc, odd paths); callers get a Status.
  try {
    return Open(dir);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": cannot open checkpoint: ", e.what()));
  }
}

}  // namespace shardlm
