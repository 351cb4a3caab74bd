// File helpers shared by the checkpoint readers and writers: a read-only mmap of a whole file,
// and a writer that builds a file under a temporary name and renames it into place.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/tensor.h"

namespace shardlm {

// A whole file mapped read-only. `mapping` unmaps on its last release, so tensor views that
// hold it keep the bytes alive after the reader is gone. An empty file has no mapping (mmap of
// 0 bytes fails): data is null and size 0.
struct MappedFile {
  std::shared_ptr<const void> mapping;
  const char* data = nullptr;
  size_t size = 0;
};

// Errors: NotFound (missing file), PermissionDenied, InvalidArgument (not a regular file, mmap
// failure); each message starts with `path`.
absl::StatusOr<MappedFile> MapFile(const std::string& path);

// Page residency of [data, data + bytes), a range inside a mapping made by MapFile (never other
// memory: dropping pages of anonymous memory would zero it).
// Maps every page of the range into this process now, so that no later read waits on a page
// fault. Error (InvalidArgument, naming `what`): a page could not be read (an I/O error, or the
// file was truncated under the mapping).
absl::Status PopulateMapped(const void* data, size_t bytes, std::string_view what);
// Drops the pages that lie wholly inside the range from this process's memory. The mapping is
// read-only, so nothing is lost: the pages stay in the page cache (another process, or a later
// read here, maps them again without disk I/O). For file bytes read only to copy them.
void ReleaseMapped(const void* data, size_t bytes);
// Whether `t` is a host view into the file mapped at [base, base + size) that `mapping` holds:
// the tensors that PopulateMapped / ReleaseMapped may be given.
bool IsViewOf(const Tensor& t, const std::shared_ptr<const void>& mapping, const char* base,
              size_t size);
// Drops every whole page of that mapping that holds no byte of a view in `keep` (other tensors
// are ignored). Reading a page maps more than that page: the kernel maps whole page-cache
// folios and the pages around a fault, which may belong to other ranks' rows.
void ReleaseMappedExcept(const std::shared_ptr<const void>& mapping, const char* base, size_t size,
                         std::span<const Tensor> keep);

// Writes `path` atomically: bytes go to "<path>.tmp.<pid>.<n>" (created with the umask's
// permissions), Commit() fsyncs, closes and renames it over `path`. A reader never sees a
// half-written file, and a failure (or destruction without Commit) removes the temporary file and
// leaves any previous `path` intact. Error messages read "<path>: <what> <tmp>: <cause>".
class AtomicFileWriter {
 public:
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> Create(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  absl::Status Write(const void* data, size_t size);
  absl::Status Write(std::string_view bytes) { return Write(bytes.data(), bytes.size()); }
  absl::Status Commit();

 private:
  AtomicFileWriter(std::string path, std::string tmp, int fd)
      : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  // Removes the temporary file and wraps `cause` as "<path>: <what> <tmp>: <cause>".
  absl::Status Fail(std::string_view what, const absl::Status& cause);

  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool done_ = false;  // committed, or failed and cleaned up
};

}  // namespace shardlm
