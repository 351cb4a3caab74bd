#include "formats/mmap_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace shardlm {
namespace {

// Debian's abseil is built with its own string_view type, which StrCat needs.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ErrnoMessage(int err) {
  return std::error_code(err, std::generic_category()).message();
}

absl::Status ErrnoStatus(int err, std::string message) {
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InvalidArgumentError(message);
}

// Closes on scope exit, so every early return releases the descriptor.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<MappedFile> MapFile(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    return ErrnoStatus(err, absl::StrCat(path, ": cannot open: ", ErrnoMessage(err)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    int err = errno;
    return ErrnoStatus(err, absl::StrCat(path, ": cannot stat: ", ErrnoMessage(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  MappedFile file;
  file.size = static_cast<size_t>(st.st_size);
  if (file.size == 0) return file;  // mmap of 0 bytes fails; callers report "too short"
  void* addr = ::mmap(nullptr, file.size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (addr == MAP_FAILED) {
    int err = errno;
    return ErrnoStatus(
        err, absl::StrCat(path, ": cannot mmap ", file.size, " bytes: ", ErrnoMessage(err)));
  }
  // PROT_READ: a write through a tensor view faults instead of silently diverging from the file.
  // No huge-page (PMD) mappings of the page cache's 2 MiB folios: dropping part of one (the other
  // ranks' rows next to this rank's, ReleaseMapped) unmaps all of it, this rank's bytes included.
  // Pages stay 4 KiB, as the anonymous copies the weights used to be were.
  static_cast<void>(::madvise(addr, file.size, MADV_NOHUGEPAGE));
  const size_t size = file.size;
  file.mapping = std::shared_ptr<const void>(
      addr, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  file.data = static_cast<const char*>(addr);
  return file;
}

namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

absl::Status PopulateMapped(const void* data, size_t bytes, std::string_view what) {
  if (bytes == 0) return absl::OkStatus();
  const size_t page = PageSize();
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes + page - 1) / page * page;
#ifdef MADV_POPULATE_READ
  // One call maps the whole range (Linux 5.14+), and reports a failed read instead of SIGBUS.
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0) {
    return absl::OkStatus();
  }
  const int err = errno;
  if (err != EINVAL) {
    return absl::InvalidArgumentError(
        absl::StrCat(Sv(what), ": cannot read ", bytes, " mapped bytes: ", ErrnoMessage(err)));
  }
#endif
  // Older kernels: one read per page faults it in.
  unsigned char sink = 0;
  for (uintptr_t p = reinterpret_cast<uintptr_t>(data); p < end; p += page) {
    sink ^= *reinterpret_cast<const volatile unsigned char*>(
        std::min<uintptr_t>(p, reinterpret_cast<uintptr_t>(data) + bytes - 1));
  }
  static_cast<void>(sink);
  return absl::OkStatus();
}

void ReleaseMapped(const void* data, size_t bytes) {
  const size_t page = PageSize();
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  // Best effort: a failure only leaves the pages resident.
  if (end > begin)
    static_cast<void>(::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED));
}

bool IsViewOf(const Tensor& t, const std::shared_ptr<const void>& mapping, const char* base,
              size_t size) {
  if (mapping == nullptr || t.holder() != mapping || t.device() != Device::kCpu) return false;
  const auto* p = static_cast<const char*>(t.raw());
  return p != nullptr && p >= base && t.nbytes() <= static_cast<size_t>(base + size - p);
}

void ReleaseMappedExcept(const std::shared_ptr<const void>& mapping, const char* base, size_t size,
                         std::span<const Tensor> keep) {
  std::vector<std::pair<const char*, const char*>> ranges;
  for (const Tensor& t : keep) {
    if (!IsViewOf(t, mapping, base, size)) continue;
    const auto* p = static_cast<const char*>(t.raw());
    ranges.emplace_back(p, p + t.nbytes());
  }
  std::sort(ranges.begin(), ranges.end());
  const char* cursor = base;
  for (const auto& [begin, end] : ranges) {
    if (begin > cursor) ReleaseMapped(cursor, static_cast<size_t>(begin - cursor));
    cursor = std::max(cursor, end);
  }
  if (base + size > cursor) ReleaseMapped(cursor, static_cast<size_t>(base + size - cursor));
}

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::Create(
    const std::string& path) {
  // O_EXCL with a per-process counter gives a unique name while keeping the umask's permissions
  // (mkstemp would force 0600).
  static std::atomic<uint64_t> counter{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) {
    int err = errno;
    return ErrnoStatus(
        err, absl::StrCat(path, ": cannot create temporary file ", tmp, ": ", ErrnoMessage(err)));
  }
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(tmp), fd));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_) ::unlink(tmp_.c_str());
}

absl::Status AtomicFileWriter::Fail(std::string_view what, const absl::Status& cause) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  done_ = true;
  return absl::Status(cause.code(), absl::StrCat(path_, ": ", Sv(what), " ", tmp_, ": ",
                                                 Sv(std::string(cause.message()))));
}

absl::Status AtomicFileWriter::Write(const void* data, size_t size) {
  if (done_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": write to ", tmp_, " after it was committed or failed"));
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux writes at most ~2 GiB per call; loop for partial writes.
    ssize_t n = ::write(fd_, p, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Fail("writing", absl::InvalidArgumentError(ErrnoMessage(errno)));
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (done_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(path_, ": commit of ", tmp_, " after it was committed or failed"));
  }
  // Flush before the rename, so a crash cannot leave the new name pointing at missing data.
  if (::fsync(fd_) != 0) {
    return Fail("fsync of", absl::InvalidArgumentError(ErrnoMessage(errno)));
  }
  // Close can be where a write fails (e.g. on NFS), so its result counts.
  int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) return Fail("closing", absl::InvalidArgumentError(ErrnoMessage(errno)));
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    return Fail("renaming into place from", ErrnoStatus(err, ErrnoMessage(err)));
  }
  done_ = true;
  return absl::OkStatus();
}

}  // namespace shardlm
