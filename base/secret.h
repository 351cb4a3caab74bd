// The shared secret that lets a worker job attach to the coordinator (--worker-secret-file on
// both sides): read from a file, checked, and compared in constant time.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shardlm {

// Shorter secrets are refused: 16 bytes of a random file are far beyond guessing over a network.
inline constexpr size_t kMinSecretBytes = 16;

// The secret in `path` (`flag` names the option in errors): the whole file less one trailing
// newline ("\n" or "\r\n"), at least kMinSecretBytes. An error names the flag and the file when
// it is missing, unreadable, empty or too short. *warning (when not null) gets a message when
// the file may be read by group or others, else "".
absl::StatusOr<std::string> ReadSecretFile(const std::string& flag, const std::string& path,
                                           std::string* warning = nullptr);

// a == b, in a time that depends only on the lengths (no early exit on the first difference).
bool SecretsEqual(std::string_view a, std::string_view b);

}  // namespace shardlm
