// Hand-built GGUF bytes for the reader tests: every field spelled out, so a test controls each
// byte independently of our writer.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace shardlm::testing {

inline std::string U32(uint32_t v) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}
inline std::string U64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}
inline std::string F32Bytes(float f) {
  std::string out(4, '\0');
  std::memcpy(out.data(), &f, 4);
  return out;
}
// A GGUF string: u64 length + bytes.
inline std::string Str(const std::string& s) { return U64(s.size()) + s; }

// magic, version, tensor_count, kv_count.
inline std::string GgufHeader(uint64_t tensor_count, uint64_t kv_count, uint32_t version = 3) {
  return "GGUF" + U32(version) + U64(tensor_count) + U64(kv_count);
}
// One metadata entry: key, value type, encoded value.
inline std::string Kv(const std::string& key, uint32_t type, const std::string& value) {
  return Str(key) + U32(type) + value;
}
inline std::string KvU32(const std::string& key, uint32_t v) { return Kv(key, 4, U32(v)); }
inline std::string KvString(const std::string& key, const std::string& v) {
  return Kv(key, 8, Str(v));
}
// One tensor info: name, n_dims, ne (ggml order: fastest first), ggml type, offset.
inline std::string TensorInfoBytes(const std::string& name, const std::vector<uint64_t>& ne,
                                   uint32_t ggml_type, uint64_t offset) {
  std::string out = Str(name) + U32(static_cast<uint32_t>(ne.size()));
  for (uint64_t d : ne) out += U64(d);
  return out + U32(ggml_type) + U64(offset);
}
// `bytes` followed by zeros up to a multiple of `align`.
inline std::string PadTo(std::string bytes, size_t align) {
  bytes.append((align - bytes.size() % align) % align, '\0');
  return bytes;
}

}  // namespace shardlm::testing
