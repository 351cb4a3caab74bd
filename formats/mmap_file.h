// File helpers shared by the checkpoint readers and writers: a read-only mmap of a whole file,
// and a writer that builds a file under a temporary name and renames it into place.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

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
