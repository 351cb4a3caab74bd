#include "tests/fuzz/fuzz_util.h"

#include <sys/mman.h>
#include <unistd.h>

#include <filesystem>
#include <utility>

namespace shardlm::fuzz {

MemFile::MemFile() {
  fd_ = memfd_create("shardlm-fuzz", MFD_CLOEXEC);
  if (fd_ < 0) {
    std::perror("memfd_create");
    std::abort();
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemFile::~MemFile() { close(fd_); }

void MemFile::Set(std::string_view bytes) {
  if (ftruncate(fd_, 0) != 0 || ftruncate(fd_, static_cast<off_t>(bytes.size())) != 0) {
    std::perror("ftruncate");
    std::abort();
  }
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = pwrite(fd_, bytes.data() + done, bytes.size() - done, done);
    if (n <= 0) {
      std::perror("pwrite");
      std::abort();
    }
    done += static_cast<size_t>(n);
  }
}

std::vector<std::string_view> Split(std::string_view data, std::string_view sep) {
  std::vector<std::string_view> out;
  while (true) {
    const size_t at = data.find(sep);
    if (at == std::string_view::npos) break;
    out.push_back(data.substr(0, at));
    data.remove_prefix(at + sep.size());
  }
  out.push_back(data);
  return out;
}

std::string ModelPathOrSkip() {
  std::string path;
  if (const char* env = std::getenv("SHARDLM_FUZZ_MODEL"); env != nullptr && *env != '\0') {
    path = env;
  } else {
    path = std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  }
  if (!std::filesystem::exists(path)) {
    std::fprintf(stderr,
                 "skipped: %s does not exist (run scripts/get-model.sh, or set "
                 "SHARDLM_FUZZ_MODEL)\n",
                 path.c_str());
    std::exit(77);
  }
  return path;
}

namespace {

volatile uint8_t sink;

void Touch(const Tensor& t) {
  const size_t bytes = t.nbytes();
  if (bytes == 0 || t.raw() == nullptr) return;
  const auto* p = static_cast<const uint8_t*>(t.raw());
  sink = p[0] ^ p[bytes - 1];
}

}  // namespace

void ReadWeights(const WeightSource& source, size_t file_size) {
  for (const std::string& name : source.Names()) {
    absl::StatusOr<TensorInfo> info = source.Info(name);
    SHARDLM_FUZZ_CHECK(info.ok(), "Info(%s) of a listed tensor: %s", name.c_str(),
                       std::string(info.status().message()).c_str());
    SHARDLM_FUZZ_CHECK(info->offset <= file_size && info->size <= file_size - info->offset,
                       "tensor %s at [%llu, +%llu) outside the file of %zu bytes", name.c_str(),
                       static_cast<unsigned long long>(info->offset),
                       static_cast<unsigned long long>(info->size), file_size);
    if (absl::StatusOr<Tensor> t = source.Load(name); t.ok()) {
      SHARDLM_FUZZ_CHECK(t->nbytes() == info->size, "Load(%s): %zu bytes, info says %llu",
                         name.c_str(), t->nbytes(), static_cast<unsigned long long>(info->size));
      Touch(*t);
      (void)source.Populate(*t);
    }
    const int64_t rows = info->shape.empty() ? 1 : info->shape[0];
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 1},
                              {rows - 1, rows},
                              {0, rows},
                              {rows, rows + 1},
                              {-1, 0}}) {
      if (absl::StatusOr<Tensor> t = source.LoadRows(name, begin, end); t.ok()) Touch(*t);
    }
    const int64_t cols = info->shape.empty() ? 1 : info->shape.back();
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, cols},
                              {0, 32},
                              {cols - 32, cols},
                              {0, 1},
                              {cols, cols + 32}}) {
      if (absl::StatusOr<Tensor> t = source.LoadColumns(name, begin, end); t.ok()) {
        Touch(*t);
        source.Release(*t);
      }
    }
  }
  SHARDLM_FUZZ_CHECK(!source.Info("no.such.tensor").ok(), "Info of a missing tensor is OK");
}

}  // namespace shardlm::fuzz
