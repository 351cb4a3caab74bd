#include "tokenizer/unicode.h"

#include <array>

namespace shardlm::unicode {
namespace {

// Classifies a lead byte: number of continuation bytes expected and the allowed range of the
// first continuation byte. Returns false for bytes that cannot start a sequence.
bool LeadInfo(uint8_t c, int* need, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    *need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    *need = 2;
    if (c == 0xE0) *lo = 0xA0;  // no overlong forms
    if (c == 0xED) *hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    *need = 3;
    if (c == 0xF0) *lo = 0x90;  // no overlong forms
    if (c == 0xF4) *hi = 0x8F;  // nothing past U+10FFFF
  } else {
    return false;
  }
  return true;
}

// Length of the valid sequence at `i`, or -(length of the maximal ill-formed subpart), or 0 when
// the sequence is a valid but truncated prefix running to the end of `s`.
int ScanSequence(std::string_view s, size_t i) {
  const uint8_t c = static_cast<uint8_t>(s[i]);
  if (c < 0x80) return 1;
  int need;
  uint8_t lo, hi;
  if (!LeadInfo(c, &need, &lo, &hi)) return -1;
  size_t j = i + 1;
  int got = 0;
  while (got < need && j < s.size()) {
    const uint8_t d = static_cast<uint8_t>(s[j]);
    if (d < lo || d > hi) break;
    lo = 0x80;
    hi = 0xBF;
    ++j;
    ++got;
  }
  if (got == need) return static_cast<int>(j - i);
  if (j == s.size()) return 0;
  return -static_cast<int>(j - i);
}

struct ByteMap {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 512> from_unicode;  // every mapped code point is below U+0200
  ByteMap() {
    from_unicode.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + extra++;
      AppendUtf8(cp, &to_unicode[b]);
      from_unicode[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteMap& GetByteMap() {
  static const ByteMap* map = new ByteMap();
  return *map;
}

}  // namespace

int Utf8SeqLen(uint8_t lead) {
  static constexpr int kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLen[lead >> 4];
}

size_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const int n = ScanSequence(s, i);
    if (n <= 0) return i;
    i += static_cast<size_t>(n);
  }
  return kValid;
}

size_t AppendSanitizedUtf8(std::string_view in, bool final, std::string* out) {
  size_t i = 0;
  while (i < in.size()) {
    size_t run = i;  // copy runs of ASCII at once
    while (run < in.size() && static_cast<uint8_t>(in[run]) < 0x80) ++run;
    if (run > i) {
      out->append(in.data() + i, run - i);
      i = run;
      continue;
    }
    const int n = ScanSequence(in, i);
    if (n > 0) {
      out->append(in.data() + i, static_cast<size_t>(n));
      i += static_cast<size_t>(n);
    } else if (n == 0) {
      if (!final) return i;
      out->append(kReplacementUtf8);
      i = in.size();
    } else {
      out->append(kReplacementUtf8);
      i += static_cast<size_t>(-n);
    }
  }
  return in.size();
}

uint32_t DecodeUtf8(std::string_view s, size_t* pos) {
  const size_t i = *pos;
  const int n = ScanSequence(s, i);
  if (n <= 0) {
    *pos = i + 1;
    return 0xFFFD;
  }
  *pos = i + static_cast<size_t>(n);
  const auto b = [&](int k) { return static_cast<uint32_t>(static_cast<uint8_t>(s[i + k])); };
  switch (n) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    if (cp >= 0xD800 && cp <= 0xDFFF) {
      out->append(kReplacementUtf8);
      return;
    }
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp <= 0x10FFFF) {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->append(kReplacementUtf8);
  }
}

const std::string& ByteToUnicode(uint8_t byte) { return GetByteMap().to_unicode[byte]; }

int UnicodeToByte(uint32_t cp) {
  return cp < 512 ? GetByteMap().from_unicode[cp] : -1;
}

}  // namespace shardlm::unicode
