// libFuzzer harness: arbitrary bytes as a HF config.json. Parses them (nlohmann, no exceptions),
// then ParseModelConfig; an accepted config must survive ModelConfigToJson and parse back to the
// same hyperparameters, and its sizes must be what the decoder can divide by (heads divide the
// hidden size and the KV heads divide the heads).
#include <cstdint>
#include <string>

#include "formats/config.h"
#include "nlohmann/json.hpp"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const nlohmann::json json = nlohmann::json::parse(data, data + size, /*cb=*/nullptr,
                                                    /*allow_exceptions=*/false);
  if (json.is_discarded()) return 0;
  absl::StatusOr<ModelConfig> config = ParseModelConfig(json, "config.json");
  if (!config.ok()) {
    SHARDLM_FUZZ_CHECK(config.status().message().find("config.json") != std::string_view::npos,
                       "error does not name the source: %s",
                       std::string(config.status().message()).c_str());
    return 0;
  }
  const ModelConfig& c = *config;
  SHARDLM_FUZZ_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 &&
                         c.num_kv_heads > 0 && c.head_dim > 0 && c.intermediate_size > 0,
                     "accepted a non-positive size: vocab %lld hidden %lld layers %lld heads %lld "
                     "kv %lld head_dim %lld ffn %lld",
                     (long long)c.vocab_size, (long long)c.hidden_size, (long long)c.num_layers,
                     (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
                     (long long)c.intermediate_size);
  SHARDLM_FUZZ_CHECK(c.num_heads % c.num_kv_heads == 0, "heads %lld, kv heads %lld",
                     (long long)c.num_heads, (long long)c.num_kv_heads);
  absl::StatusOr<ModelConfig> again = ParseModelConfig(ModelConfigToJson(c), "round trip");
  SHARDLM_FUZZ_CHECK(again.ok(), "ModelConfigToJson does not parse back: %s",
                     std::string(again.status().message()).c_str());
  SHARDLM_FUZZ_CHECK(
      again->arch == c.arch && again->vocab_size == c.vocab_size &&
          again->hidden_size == c.hidden_size && again->num_layers == c.num_layers &&
          again->num_heads == c.num_heads && again->num_kv_heads == c.num_kv_heads &&
          again->head_dim == c.head_dim && again->intermediate_size == c.intermediate_size &&
          again->tie_word_embeddings == c.tie_word_embeddings &&
          again->sliding_window == c.sliding_window && again->torch_dtype == c.torch_dtype &&
          again->eos_token_ids == c.eos_token_ids && again->bos_token_id == c.bos_token_id,
      "ModelConfigToJson does not round-trip");
  return 0;
}
