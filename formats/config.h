// The hyperparameters of a Llama-family decoder, read from a HF config.json.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "base/rope.h"
#include "base/dtype.h"
#include "nlohmann/json.hpp"

namespace shardlm {

enum class Arch : uint8_t {
  kLlama, kMistral, kQwen2, kQwen3, kGemma3, kPhi3, kGlm, kGlm4, kMixtral, kQwen3Moe
};
// HF's model_type: "llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "glm", "glm4".
std::string_view ArchName(Arch arch);
// The arch of a model_type or of an architectures[0] class name ("Gemma3ForCausalLM").
std::optional<Arch> ArchFromName(std::string_view name);

// The activation of the gated MLP.
enum class HiddenAct : uint8_t { kSilu, kGeluTanh };

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;         // num_hidden_layers
  int64_t num_heads = 0;          // num_attention_heads
  int64_t num_kv_heads = 0;       // num_key_value_heads (defaults to num_heads)
  int64_t head_dim = 0;           // head_dim (defaults to hidden_size / num_heads)
  int64_t max_position_embeddings = 0;  // 0 when absent: no limit known
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;                // rope_theta, rope_scaling; rotary_dim = head_dim
  bool tie_word_embeddings = false;
  bool qkv_bias = false;          // qwen2: always; llama/mistral: attention_bias
  bool o_bias = false;            // llama: attention_bias
  bool mlp_bias = false;          // llama: mlp_bias
  int64_t sliding_window = 0;     // mistral, gemma3, phi3 (qwen2/3 with use_sliding_window)
  // Per layer: whether it attends through sliding_window (Gemma 3: 5 of every 6 layers; Qwen2
  // with max_window_layers). Empty: every layer does (when sliding_window > 0).
  std::vector<bool> sliding_layers;
  // The rope of the sliding-window layers where it differs from `rope` (Gemma 3's
  // rope_local_base_freq).
  std::optional<RopeConfig> sliding_rope;
  // Attention logits scale; 0: 1 / sqrt(head_dim) (Gemma 3: query_pre_attn_scalar^-0.5).
  float attention_scale = 0.0f;
  HiddenAct hidden_act = HiddenAct::kSilu;
  bool qk_norm = false;           // qwen3, gemma3: RMSNorm over each q and k head
  bool norm_plus_one = false;     // gemma3 in HF form: every RMSNorm scales by (1 + w)
  bool post_norms = false;        // gemma3, glm4: RMSNorm on the attention and MLP outputs too
  bool scale_embeddings = false;  // gemma3: embeddings times sqrt(hidden_size)
  bool fused_qkv_proj = false;    // phi3: one qkv_proj tensor [q; k; v] in the checkpoint
  bool fused_gate_up_proj = false;  // phi3, glm, glm4: one gate_up_proj tensor [gate; up]
  // longrope (phi3): the checkpoint's two factor lists; rope.freq_factors holds the one in use
  // (long when max_position_embeddings exceeds rope.original_max_position, as llama.cpp does at
  // its default context; HF switches per forward call by the sequence's length).
  std::vector<float> longrope_short, longrope_long;
  // Mixture of experts (Mixtral, Qwen3-MoE); num_experts 0: every MLP is dense. A token's MLP is
  // the sum over its experts_per_token best experts (softmax of the router's logits, top-k,
  // renormalised when norm_topk_prob) of weight x expert(x), each expert a SwiGLU MLP of
  // moe_intermediate_size.
  int64_t num_experts = 0;
  int64_t experts_per_token = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = true;
  // Per layer: whether its MLP is the mixture (Qwen3-MoE's decoder_sparse_step and
  // mlp_only_layers). Empty: every layer's is, when num_experts > 0.
  std::vector<bool> moe_layers;
  DType torch_dtype = DType::kF32;
  // GGUF checkpoints mix types (quantized matrices, f32 norms, a Q6_K output): their tensors'
  // own dtypes are used and not checked against torch_dtype.
  bool mixed_dtypes = false;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
};

// The HF names of a layer's norm weights (after "model.layers.N.", before ".weight"): before
// attention and before the MLP, and where post_norms, on the attention and MLP outputs (null
// otherwise). "post_attention_layernorm" is the pre-MLP norm of Llama and GLM-4 but the norm of
// the attention output in Gemma 3.
struct LayerNormNames {
  const char* attn;
  const char* mlp;
  const char* post_attn;
  const char* post_mlp;
};
LayerNormNames NormNamesOf(Arch arch);

// The HF names of a mixture's tensors in layer `layer`: the router ([num_experts, hidden]) and
// expert `expert`'s gate, up ([moe_intermediate, hidden]) and down ([hidden, moe_intermediate])
// weights. Mixtral: block_sparse_moe.gate, block_sparse_moe.experts.E.w1 / w3 / w2; Qwen3-MoE:
// mlp.gate, mlp.experts.E.gate_proj / up_proj / down_proj.
enum class MoePart : uint8_t { kRouter, kGate, kUp, kDown };
std::string MoeTensorName(Arch arch, int64_t layer, int64_t expert, MoePart part);

// Whether layer `layer`'s MLP is a mixture of experts.
bool LayerIsMoe(const ModelConfig& config, int64_t layer);

// Whether layer `layer` attends through the sliding window.
bool LayerSlides(const ModelConfig& config, int64_t layer);

// Parses and validates a config.json document. `source` (usually the file path) is named in every
// error, together with the field and what was expected and found.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& json, const std::string& source);
// Reads `path` (a config.json file) and parses it.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// The config.json document for `config`, in HF's field names; ParseModelConfig reads it back.
nlohmann::json ModelConfigToJson(const ModelConfig& config);

}  // namespace shardlm
