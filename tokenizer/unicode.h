// UTF-8 helpers for the tokenizers: validation, lossy sanitizing (maximal-subpart U+FFFD
// replacement, streamable), code point encoding and the GPT-2 byte <-> unicode map used by
// byte-level BPE vocabularies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shardlm::unicode {

inline constexpr char kReplacementUtf8[] = "\xEF\xBF\xBD";  // U+FFFD
inline constexpr size_t kValid = static_cast<size_t>(-1);

// Byte length of the UTF-8 sequence a byte starts, judged by its high bits only (1 for ASCII,
// continuation and invalid bytes): how llama.cpp splits text into symbols.
int Utf8SeqLen(uint8_t lead);

// Offset of the first byte of the first ill-formed (or truncated) sequence, or kValid.
size_t FindInvalidUtf8(std::string_view s);

// Appends `in` to *out with each ill-formed subsequence replaced by U+FFFD (one per maximal
// subpart, as the Unicode standard and WHATWG recommend). When `final` is false a truncated
// sequence at the very end is left unconsumed so that more bytes can complete it. Returns the
// number of bytes of `in` consumed. Feeding a byte string in pieces (final only on the last)
// gives the same output as feeding it whole.
size_t AppendSanitizedUtf8(std::string_view in, bool final, std::string* out);

// Decodes the code point at *pos (advancing it); ill-formed bytes decode as U+FFFD, one byte at
// a time.
uint32_t DecodeUtf8(std::string_view s, size_t* pos);

void AppendUtf8(uint32_t cp, std::string* out);

// GPT-2 byte-level map: printable Latin-1 bytes map to themselves, the other 68 to U+0100...
// in byte order. ByteToUnicode returns the UTF-8 of the mapped character.
const std::string& ByteToUnicode(uint8_t byte);
// The byte a mapped code point stands for, or -1 when it is not in the map.
int UnicodeToByte(uint32_t cp);

}  // namespace shardlm::unicode
