#include "base/check.h"

#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shardlm {
namespace {

std::atomic<int> g_world_rank{-1};
thread_local int t_device = -1;

absl::string_view BaseName(absl::string_view file) {
  const size_t slash = file.rfind('/');
  return slash == absl::string_view::npos ? file : file.substr(slash + 1);
}

}  // namespace

void SetCheckWorldRank(int rank) { g_world_rank.store(rank, std::memory_order_relaxed); }
void SetCheckDevice(int device) { t_device = device; }
int CheckWorldRank() { return g_world_rank.load(std::memory_order_relaxed); }
int CheckDevice() { return t_device; }

std::string CheckFailureMessage(const char* library, const char* statement,
                                std::string_view context, const std::string& error,
                                const char* file, int line) {
  std::string where = library;
  if (const int rank = CheckWorldRank(); rank >= 0) absl::StrAppend(&where, ", rank ", rank);
  if (t_device >= 0) absl::StrAppend(&where, ", device ", t_device);
  // This absl's string_view is its own type, not std::string_view.
  const absl::string_view context_view(context.data(), context.size());
  return absl::StrCat(statement, context_view, ": ", error, " [", where, ", ", BaseName(file),
                      ":", line, "]");
}

void ThrowCheckFailure(const char* library, const char* statement, std::string_view context,
                       const std::string& error, const char* file, int line) {
  throw CheckFailure(CheckFailureMessage(library, statement, context, error, file, line));
}

absl::Status CheckFailureStatus(const char* library, const char* statement,
                                std::string_view context, const std::string& error,
                                const char* file, int line, absl::StatusCode code) {
  return absl::Status(code, CheckFailureMessage(library, statement, context, error, file, line));
}

}  // namespace shardlm
