// Stop strings over streamed text: text that could be the start of a stop string is held back
// until it is known not to be one; on a match the text before it is released and the rest is
// dropped. Fed whole UTF-8 characters, it returns whole characters (a stop string starts with a
// lead byte, so every cut falls on a character boundary).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace shardlm::coordinator {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  struct Result {
    std::string text;      // safe to emit now
    bool matched = false;  // a stop string was found: `text` ends before it; stop streaming
  };
  // Appends `text` to what is held and returns what can be emitted. After a match, it returns
  // nothing more.
  Result Push(std::string_view text);
  // The text still held back (the stream ended without a match).
  std::string Flush();

  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool matched_ = false;
};

}  // namespace shardlm::coordinator
