#include "base/quote.h"

#include <string>

namespace shardlm {

std::string Quote(std::string_view value, size_t max_bytes) {
  if (value.size() <= max_bytes) return "'" + std::string(value) + "'";
  size_t cut = max_bytes;
  // Back off continuation bytes (10xxxxxx) so that the quote ends on a whole character.
  while (cut > 0 && (static_cast<unsigned char>(value[cut]) & 0xC0) == 0x80) --cut;
  return "'" + std::string(value.substr(0, cut)) + "'... (" + std::to_string(value.size()) +
         " bytes)";
}

}  // namespace shardlm
