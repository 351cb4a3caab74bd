// A user-supplied value quoted inside an error message: at most kMaxQuotedBytes of it (cut at a
// UTF-8 character boundary), then how long the whole value was. A 1 MB chat role must not come
// back whole in a gRPC status (its metadata limit would replace the real error) or in the log.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace shardlm {

inline constexpr size_t kMaxQuotedBytes = 100;

// 'value' in single quotes, or 'first 100 bytes'... (N bytes) when longer.
std::string Quote(std::string_view value, size_t max_bytes = kMaxQuotedBytes);

}  // namespace shardlm
