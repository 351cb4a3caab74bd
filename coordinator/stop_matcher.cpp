#include "coordinator/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace shardlm::coordinator {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  // An empty stop string would match everywhere; validation refuses them, and here they are
  // ignored.
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

StopMatcher::Result StopMatcher::Push(std::string_view text) {
  Result result;
  if (matched_) return result;
  std::string buffer = std::move(held_);
  held_.clear();
  buffer.append(text);
  if (stops_.empty()) {
    result.text = std::move(buffer);
    return result;
  }
  // The earliest occurrence of any stop string. The held text never contains a whole one, so a
  // match ends in the new text.
  size_t first = std::string::npos;
  for (const std::string& stop : stops_) first = std::min(first, buffer.find(stop));
  if (first != std::string::npos) {
    matched_ = true;
    result.matched = true;
    result.text = buffer.substr(0, first);
    return result;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, buffer.size()); k > hold; --k) {
      if (std::string_view(buffer).substr(buffer.size() - k) ==
          std::string_view(stop).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  held_ = buffer.substr(buffer.size() - hold);
  buffer.resize(buffer.size() - hold);
  result.text = std::move(buffer);
  return result;
}

std::string StopMatcher::Flush() {
  if (matched_) return "";
  return std::exchange(held_, std::string());
}

}  // namespace shardlm::coordinator
