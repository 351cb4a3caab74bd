#include "base/secret.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace shardlm {

absl::StatusOr<std::string> ReadSecretFile(const std::string& flag, const std::string& path,
                                           std::string* warning) {
  if (warning != nullptr) warning->clear();
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, " is required: a file holding a shared secret of at least ", kMinSecretBytes,
        " bytes, given to both shardlm-coordinator and shardlm-worker (e.g. head -c 32 "
        "/dev/urandom | base64 > secret; chmod 600 secret)"));
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(
        absl::StrCat(flag, " ", path, ": cannot read it (", std::strerror(errno), ")"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::PermissionDeniedError(
        absl::StrCat(flag, " ", path, ": cannot open it (", std::strerror(errno), ")"));
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  std::string secret = bytes.str();
  // One trailing newline, as `echo` and editors leave it.
  if (!secret.empty() && secret.back() == '\n') {
    secret.pop_back();
    if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  }
  if (secret.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": the file is empty"));
  }
  if (secret.size() < kMinSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", path, ": the secret is ",
                                                   secret.size(), " bytes, expected at least ",
                                                   kMinSecretBytes));
  }
  if (warning != nullptr && (st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%03o", static_cast<unsigned>(st.st_mode & 0777));
    *warning = absl::StrCat(flag, " ", path, " may be read by ",
                            (st.st_mode & S_IROTH) != 0 ? "every user" : "its group", " (mode ",
                            mode, "): chmod 600 it");
  }
  return secret;
}

bool SecretsEqual(std::string_view a, std::string_view b) {
  // Every byte of the longer one is looked at, whatever differs first.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

}  // namespace shardlm
