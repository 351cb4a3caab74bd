// libFuzzer harness: arbitrary bytes as a .safetensors file (8-byte header length, JSON header,
// data). Opens it, reads the metadata, and does with every tensor what the loaders do (Info,
// Load, LoadRows, LoadColumns; fuzz_util.h ReadWeights), touching each range returned.
#include <cstdint>
#include <string_view>

#include "formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  static fuzz::MemFile file;
  file.Set(std::string_view(reinterpret_cast<const char*>(data), size));
  if (auto st = SafetensorsFile::Open(file.path()); st.ok()) {
    size_t metadata_bytes = 0;
    for (const auto& [key, value] : (*st)->metadata()) metadata_bytes += key.size() + value.size();
    SHARDLM_FUZZ_CHECK(metadata_bytes <= size, "%zu metadata bytes from a %zu-byte file",
                       metadata_bytes, size);
    fuzz::ReadWeights(**st, size);
  }
  return 0;
}
