// libFuzzer harness: arbitrary bytes as a .gguf file. Opens it as GgufFile::Open (tensor infos)
// and OpenMetadata would, reads every metadata key through each typed getter, reads the model
// config and the tokenizer from it as the loaders do, and for every tensor reads its info, loads
// it whole, by rows and by columns, and touches the first and last byte of each range. Any
// crash, sanitizer report or broken invariant (a loaded range outside the file) fails.
#include <cstdint>
#include <string>
#include <string_view>

#include "formats/gguf.h"
#include "formats/gguf_model.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace shardlm::fuzz {
namespace {

void ReadMetadata(const GgufFile& gguf) {
  for (const auto& [key, value] : gguf.metadata()) {
    SHARDLM_FUZZ_CHECK(gguf.Find(key) == &value, "Find(%s)", key.c_str());
    (void)gguf.GetString(key);
    (void)gguf.GetInt(key);
    (void)gguf.GetFloat(key);
    (void)gguf.GetBool(key);
    (void)gguf.GetStringArray(key);
    (void)gguf.GetFloatArray(key);
    (void)gguf.GetIntArray(key);
  }
  (void)gguf.GetString("no.such.key");
  (void)ModelConfigFromGguf(gguf);
  // What LoadTokenizerFromPath does with a .gguf: vocabulary, then a tokenizer to encode with.
  if (auto tokenizer = Tokenizer::FromGguf(gguf); tokenizer.ok()) {
    const std::vector<int32_t> ids = (*tokenizer)->Encode("Hello world <s>\n", true, true);
    for (int32_t id : ids) {
      SHARDLM_FUZZ_CHECK(id >= 0 && id < (*tokenizer)->vocab_size(), "id %d of %d", id,
                         (*tokenizer)->vocab_size());
    }
    (void)(*tokenizer)->Decode(ids, false);
  }
}

}  // namespace
}  // namespace shardlm::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  static fuzz::MemFile file;
  file.Set(std::string_view(reinterpret_cast<const char*>(data), size));
  if (auto gguf = GgufFile::Open(file.path()); gguf.ok()) {
    fuzz::ReadMetadata(**gguf);
    fuzz::ReadWeights(**gguf, size);
    fuzz::ReadWeights(GgufHfView(**gguf), size);  // the HF names the decoder asks for
  }
  if (auto gguf = GgufFile::OpenMetadata(file.path()); gguf.ok()) {
    SHARDLM_FUZZ_CHECK((*gguf)->Names().empty(), "OpenMetadata lists tensors");
    fuzz::ReadMetadata(**gguf);
  }
  return 0;
}
