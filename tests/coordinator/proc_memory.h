// This process's memory, for tests that check something does not allocate in proportion to a
// number it was told.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace shardlm::coordinator::testing {

// This process's resident memory in KiB (/proc/self/status VmRSS); 0 when unknown.
inline int64_t RssKib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

}  // namespace shardlm::coordinator::testing
