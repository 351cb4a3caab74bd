// A Llama-family model stored as GGUF (llama.cpp's format): its config from the metadata and its
// tensors under the HF names the decoder asks for.
//
// Facts about llama.cpp's converter that matter here:
// - `llama`-architecture checkpoints have the rows of Q and K permuted within each head so that
//   llama.cpp can rotate adjacent pairs (x[2i], x[2i+1]); the HF layout rotates (x[i], x[i+d/2]).
//   We keep the weights as stored and use interleaved RoPE for them.
// - `qwen2`, `qwen3`, `gemma3` and `phi3` checkpoints are not permuted and use NeoX ("rotate
//   half") RoPE, as in HF; `glm4` rotates adjacent pairs, as HF's GLM does.
// - `gemma3` norm weights are stored as 1 + w (HF keeps w and scales by 1 + w); llama.cpp fixes
//   the sliding pattern at 5 sliding layers of every 6 and the local rope theta at 10000.
// - `phi3` keeps its fused qkv_proj as attn_qkv and gate_up_proj as ffn_up ([gate; up]), and its
//   longrope factors as the tensors rope_factors_short / rope_factors_long; `glm4` fuses
//   gate_up_proj into ffn_up the same way, and `chatglm` (GLM-4-9B, GlmForCausalLM's math) holds
//   attn_qkv with its bias and ffn_up, both fused.
// - Mixtral is written as `llama` with llama.expert_count > 0 (Q/K permuted as for Llama);
//   Qwen3-MoE as `qwen3moe`. A mixture's block holds the router ffn_gate_inp ([n_expert, n_embd])
//   and its experts stacked in 3-D tensors, ne = {n_embd, n_ff, n_expert} (ffn_gate_exps,
//   ffn_up_exps) and {n_ff, n_embd, n_expert} (ffn_down_exps): expert E's matrix is one
//   contiguous byte range, served under its HF per-expert name (MoeTensorName) as a view.
//   llama.cpp routes both by softmax and top-k with the weights renormalised (it ignores
//   expert_weights_norm for these two; we read it, so a Qwen3-MoE with norm_topk_prob false
//   round-trips), and needs a router in every block (we read blocks without one as dense:
//   mlp_only_layers). n_ff of the experts: expert_feed_forward_length, else for `llama`
//   feed_forward_length and for `qwen3moe` feed_forward_length / expert_used_count, as llama.cpp.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "formats/config.h"
#include "formats/gguf.h"

namespace shardlm {

// Reads the hyperparameters of the `llama` (and Mixtral), `qwen2`, `qwen3`, `qwen3moe`, `gemma3`,
// `phi3`, `glm4` and `chatglm` architectures. Errors name the file and the metadata key, or the
// tensor for a mixture's layout we do not implement (shared experts, per-expert 2-D tensors of
// old Mixtral files, router or expert biases) or one that is inconsistent (a block with some of
// its expert tensors but not all, shapes that disagree with the metadata).
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);
// The family of a general.architecture value ("gemma3" -> kGemma3).
absl::StatusOr<Arch> ArchFromGguf(const GgufFile& gguf);
// general.architecture of `arch` as llama.cpp writes it (Mistral is written as llama).
std::string GgufArchName(Arch arch);

// The GGUF name of an HF tensor name of `arch` ("model.layers.3.mlp.up_proj.weight" ->
// "blk.3.ffn_up.weight"), or "" when there is none.
std::string GgufTensorName(std::string_view hf_name, Arch arch = Arch::kLlama);
// The inverse: the HF name of a GGUF tensor name ("blk.3.ffn_up.weight" ->
// "model.layers.3.mlp.up_proj.weight"), or "" when there is none (the 3-D expert tensors hold
// many HF tensors: see GgufExpertName).
std::string HfTensorName(std::string_view gguf_name, Arch arch = Arch::kLlama);

// Where an HF per-expert matrix of a mixture lives in GGUF: slice `expert` of the 3-D tensor
// `name` ("model.layers.1.block_sparse_moe.experts.3.w1.weight" of Mixtral ->
// {"blk.1.ffn_gate_exps.weight", 1, 3, kGate}).
struct GgufExpertSlice {
  std::string name;
  int64_t layer = 0;
  int64_t expert = 0;
  MoePart part = MoePart::kGate;
};
// nullopt for any other name (and for every name of an `arch` without experts).
std::optional<GgufExpertSlice> GgufExpertName(std::string_view hf_name, Arch arch);

// Presents a GGUF file's tensors under HF names (Names() too; each expert of a 3-D expert tensor
// under its own name, loaded as a view of its slice). Does not own the file.
class GgufHfView : public WeightSource {
 public:
  explicit GgufHfView(const GgufFile& gguf)
      : gguf_(gguf), arch_(ArchFromGguf(gguf).value_or(Arch::kLlama)) {}
  std::string Describe() const override { return gguf_.Describe(); }
  std::vector<std::string> Names() const override;
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override;
  absl::StatusOr<Tensor> Load(std::string_view name) const override;
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t begin,
                                  int64_t end) const override;
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t begin,
                                     int64_t end) const override;
  absl::Status Populate(const Tensor& t) const override { return gguf_.Populate(t); }
  void Release(const Tensor& t) const override { gguf_.Release(t); }
  void Trim(std::span<const Tensor> kept) const override { gguf_.Trim(kept); }

 private:
  // The GGUF tensor (or expert slice) behind an HF name.
  absl::StatusOr<TensorInfo> Resolve(std::string_view hf_name) const;
  const GgufFile& gguf_;
  Arch arch_;
};

}  // namespace shardlm
