// Helpers shared by the tokenizer tests: where the external assets are, file reading, printable
// strings, and the llama.cpp test-vector format.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace shardlm::testing {

// $SHARDLM_ASSETS, else the CMake option SHARDLM_ASSETS (default: <source>/../shared/assets).
inline std::string AssetsDir() {
  if (const char* env = std::getenv("SHARDLM_ASSETS"); env != nullptr && *env != '\0') return env;
#ifdef SHARDLM_ASSETS_DIR
  return SHARDLM_ASSETS_DIR;
#else
  return std::string(SHARDLM_SOURCE_DIR) + "/../shared/assets";
#endif
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// C-style escaped, for messages: "a\n\xF0..." keeps failures readable on one line.
inline std::string Escape(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out += ch;  // UTF-8 passes through
    }
  }
  return out + "\"";
}

// "[id 'piece', ...]" using the vocabulary strings.
inline std::string DescribeIds(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ids[i]) + " " + Escape(tok.TokenText(ids[i]));
  }
  return out + "]";
}

// The .inp format: strings each followed by "\n__ggml_vocab_test__\n".
inline std::vector<std::string> SplitVectorInputs(const std::string& content) {
  static constexpr std::string_view kSep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t next = content.find(kSep, pos);
    if (next == std::string::npos) break;
    out.push_back(content.substr(pos, next - pos));
    pos = next + kSep.size();
  }
  return out;
}

// The .out format: one line of space-separated ids per input.
inline std::vector<std::vector<int32_t>> ParseVectorOutputs(const std::string& content) {
  std::vector<std::vector<int32_t>> out;
  std::istringstream lines(content);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream ids(line);
    std::vector<int32_t> row;
    long long id;
    while (ids >> id) row.push_back(static_cast<int32_t>(id));
    out.push_back(std::move(row));
  }
  return out;
}

inline bool IsValidUtf8(std::string_view s) {
  return unicode::FindInvalidUtf8(s) == unicode::kValid;
}

}  // namespace shardlm::testing
