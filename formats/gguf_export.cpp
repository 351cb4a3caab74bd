#include "formats/gguf_export.h"

#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status_macros.h"
#include "formats/gguf_model.h"
#include "formats/gguf_writer.h"
#include "kernels/quant/codec.h"

namespace shardlm {

namespace {

Tensor ToF32(const Tensor& t) {
  Tensor out = Tensor::Empty(t.shape(), DType::kF32);
  ConvertToF32(t.dtype(), t.raw(), out.data<float>(), static_cast<size_t>(t.numel()));
  return out;
}

Tensor Convert(const Tensor& f32, DType dtype) {
  if (dtype == DType::kF32) return f32;
  Tensor out = Tensor::Empty(f32.shape(), dtype);
  const int64_t cols = f32.dim(-1), rows = f32.numel() / cols;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = f32.data<float>() + r * cols;
    char* dst = static_cast<char*>(out.raw()) + DTypeBytes(dtype, r * cols);
    if (IsQuantized(dtype)) {
      quant::QuantizeRow(dtype, src, dst, cols);
    } else {
      auto* h = reinterpret_cast<uint16_t*>(dst);
      for (int64_t c = 0; c < cols; ++c) {
        h[c] = dtype == DType::kBF16 ? F32ToBf16(src[c]) : F32ToF16(src[c]);
      }
    }
  }
  return out;
}

// `dtype`, or f32 for a quantized type whose blocks do not fit the rows of `f32`.
DType StoredType(const Tensor& f32, DType dtype) {
  return IsQuantized(dtype) && f32.dim(-1) % DTypeBlockElements(dtype) != 0 ? DType::kF32 : dtype;
}

}  // namespace

Tensor PermuteForInterleavedRope(const Tensor& f32, int64_t heads) {
  const int64_t rows = f32.dim(0), cols = f32.rank() == 2 ? f32.dim(1) : 1;
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  Tensor out = Tensor::Empty(f32.shape(), DType::kF32);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t from = h * head_dim + i * half + j, to = h * head_dim + 2 * j + i;
        std::memcpy(out.data<float>() + to * cols, f32.data<float>() + from * cols,
                    cols * sizeof(float));
      }
    }
  }
  return out;
}

absl::Status ExportGguf(const ModelConfig& c, const WeightSource& hf, const std::string& path,
                        DType matrix_dtype) {
  const std::string arch = GgufArchName(c.arch);
  if (c.arch == Arch::kMistral || (c.arch == Arch::kMixtral && c.sliding_window > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExportGguf: ", std::string(ArchName(c.arch)),
                     " is written as llama by llama.cpp; its sliding window has no GGUF key here"));
  }
  if (arch.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExportGguf: ", std::string(ArchName(c.arch)), " has no GGUF layout here"));
  }
  const std::string a = arch + ".";
  std::vector<std::pair<std::string, GgufValue>> meta = {
      {"general.architecture", GgufString(arch)},
      {"general.name", GgufString("shardlm tiny model")},
      {a + "context_length", GgufInt(GgufType::kUint32, c.max_position_embeddings)},
      {a + "embedding_length", GgufInt(GgufType::kUint32, c.hidden_size)},
      {a + "block_count", GgufInt(GgufType::kUint32, c.num_layers)},
      {a + "feed_forward_length", GgufInt(GgufType::kUint32, c.intermediate_size)},
      {a + "attention.head_count", GgufInt(GgufType::kUint32, c.num_heads)},
      {a + "attention.head_count_kv", GgufInt(GgufType::kUint32, c.num_kv_heads)},
      {a + "attention.layer_norm_rms_epsilon", GgufFloat(GgufType::kFloat32, c.rms_norm_eps)},
      {a + "rope.freq_base", GgufFloat(GgufType::kFloat32, c.rope.theta)},
      {a + "rope.dimension_count", GgufInt(GgufType::kUint32, c.rope.rotary_dim)},
      {a + "attention.key_length", GgufInt(GgufType::kUint32, c.head_dim)},
      {a + "attention.value_length", GgufInt(GgufType::kUint32, c.head_dim)},
  };
  if (c.num_experts > 0) {
    meta.emplace_back(a + "expert_count", GgufInt(GgufType::kUint32, c.num_experts));
    meta.emplace_back(a + "expert_used_count", GgufInt(GgufType::kUint32, c.experts_per_token));
    // llama.cpp's converter writes the experts' n_ff for qwen3moe; for Mixtral it is
    // feed_forward_length.
    if (c.arch != Arch::kMixtral || c.moe_intermediate_size != c.intermediate_size) {
      meta.emplace_back(a + "expert_feed_forward_length",
                        GgufInt(GgufType::kUint32, c.moe_intermediate_size));
    }
    // llama.cpp renormalises the top-k weights of both families and reads no key for it; a tiny
    // model that does not says so in the key other families use (ModelConfigFromGguf reads it).
    if (!c.norm_topk_prob) meta.emplace_back(a + "expert_weights_norm", GgufBool(false));
  }
  std::vector<std::pair<std::string, Tensor>> tensors;
  if (c.sliding_window > 0 && (c.arch == Arch::kGemma3 || c.arch == Arch::kPhi3)) {
    meta.emplace_back(a + "attention.sliding_window",
                      GgufInt(GgufType::kUint32, c.sliding_window));
  }
  if (c.arch == Arch::kGemma3) {
    // llama.cpp assumes a pattern of 6 and derives the scale from head_dim; a tiny model that
    // differs says so in keys llama.cpp does not read (ModelConfigFromGguf does).
    int64_t pattern = 0;
    for (int64_t p = 1; p <= c.num_layers + 1 && pattern == 0; ++p) {
      bool fits = true;
      for (int64_t l = 0; l < c.num_layers; ++l) fits &= LayerSlides(c, l) == ((l + 1) % p != 0);
      if (fits) pattern = p;
    }
    if (pattern == 0) {
      return absl::InvalidArgumentError(
          "ExportGguf: gemma3 layers whose sliding layers follow no every-p-th pattern");
    }
    if (pattern != 6) {
      meta.emplace_back(a + "attention.sliding_window_pattern", GgufInt(GgufType::kUint32, pattern));
    }
    if (c.attention_scale > 0) {
      meta.emplace_back(a + "attention.scale", GgufFloat(GgufType::kFloat32, c.attention_scale));
    }
  }
  if (c.rope.scaling == RopeConfig::Scaling::kLongRope) {
    meta.emplace_back(a + "rope.scaling.original_context_length",
                      GgufInt(GgufType::kUint32, c.rope.original_max_position));
    meta.emplace_back(a + "rope.scaling.attn_factor",
                      GgufFloat(GgufType::kFloat32, c.rope.attention_factor));
    for (const auto& [name, factors] : {std::pair{"rope_factors_long.weight", &c.longrope_long},
                                        std::pair{"rope_factors_short.weight", &c.longrope_short}}) {
      Tensor t = Tensor::Empty({static_cast<int64_t>(factors->size())}, DType::kF32);
      std::memcpy(t.raw(), factors->data(), factors->size() * sizeof(float));
      tensors.emplace_back(name, std::move(t));
    }
  }
  // `chatglm` (GLM-4-9B) files hold Q, K and V as one attn_qkv [q; k; v] (weight and bias).
  const bool fuse_qkv = c.arch == Arch::kGlm;
  auto load = [&](const std::string& name) -> absl::StatusOr<Tensor> {
    const size_t at = name.find("self_attn.q_proj.");
    if (!fuse_qkv || at == std::string::npos) {
      SHARDLM_ASSIGN_OR_RETURN(Tensor t, hf.Load(name));
      return ToF32(t);
    }
    std::vector<Tensor> parts;
    int64_t rows = 0;
    for (const char* proj : {"q_proj.", "k_proj.", "v_proj."}) {
      std::string part = name;
      part.replace(at + 10, 7, proj);  // "self_attn." is 10 characters, "q_proj." 7
      SHARDLM_ASSIGN_OR_RETURN(Tensor t, hf.Load(part));
      parts.push_back(ToF32(t));
      rows += parts.back().dim(0);
    }
    std::vector<int64_t> shape = parts[0].shape();
    shape[0] = rows;
    Tensor fused = Tensor::Empty(shape, DType::kF32);
    char* to = static_cast<char*>(fused.raw());
    for (const Tensor& part : parts) {
      std::memcpy(to, part.raw(), part.nbytes());
      to += part.nbytes();
    }
    return fused;
  };
  // Every expert's matrix of `slice`'s layer and part, stacked into the 3-D tensor [n_expert,
  // rows, cols] (ggml ne = {cols, rows, n_expert}); written when expert 0's name comes by.
  auto stack_experts = [&](const GgufExpertSlice& slice) -> absl::StatusOr<Tensor> {
    Tensor stacked;
    for (int64_t e = 0; e < c.num_experts; ++e) {
      SHARDLM_ASSIGN_OR_RETURN(Tensor t,
                               hf.Load(MoeTensorName(c.arch, slice.layer, e, slice.part)));
      if (t.rank() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ExportGguf: expert tensor '", MoeTensorName(c.arch, slice.layer, e, slice.part),
            "' is ", t.ShapeString(), ", expected a matrix"));
      }
      if (e == 0) stacked = Tensor::Empty({c.num_experts, t.dim(0), t.dim(1)}, DType::kF32);
      if (t.dim(0) != stacked.dim(1) || t.dim(1) != stacked.dim(2)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ExportGguf: expert tensor '", MoeTensorName(c.arch, slice.layer, e, slice.part),
            "' is ", t.ShapeString(), ", expert 0's is [", stacked.dim(1), ", ", stacked.dim(2),
            "]"));
      }
      const Tensor f32 = ToF32(t);
      std::memcpy(stacked.data<float>() + e * f32.numel(), f32.raw(), f32.nbytes());
    }
    return stacked;
  };
  for (const std::string& hf_name : hf.Names()) {
    std::string name = hf_name;
    if (std::optional<GgufExpertSlice> slice = GgufExpertName(name, c.arch)) {
      if (slice->expert != 0) continue;  // stacked with expert 0
      SHARDLM_ASSIGN_OR_RETURN(Tensor f32, stack_experts(*slice));
      tensors.emplace_back(slice->name, Convert(f32, StoredType(f32, matrix_dtype)));
      continue;
    }
    if (fuse_qkv && (absl::StrContains(name, "self_attn.k_proj.") ||
                     absl::StrContains(name, "self_attn.v_proj."))) {
      continue;  // written with q_proj's, fused
    }
    const std::string gguf_name =
        GgufTensorName(fuse_qkv ? absl::StrReplaceAll(name, {{"self_attn.q_proj.", "self_attn.qkv_proj."}})
                                : name,
                       c.arch);
    if (gguf_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("ExportGguf: tensor '", name,
                                                     "' has no GGUF name"));
    }
    SHARDLM_ASSIGN_OR_RETURN(Tensor f32, load(name));
    if (c.arch == Arch::kLlama || c.arch == Arch::kMixtral) {
      if (absl::StrContains(name, "q_proj")) f32 = PermuteForInterleavedRope(f32, c.num_heads);
      if (absl::StrContains(name, "k_proj")) f32 = PermuteForInterleavedRope(f32, c.num_kv_heads);
    }
    // llama.cpp's converter stores Gemma's norms as the 1 + w they scale by.
    if (c.norm_plus_one && absl::EndsWith(name, "norm.weight")) {
      for (int64_t i = 0; i < f32.numel(); ++i) f32.data<float>()[i] += 1.0f;
    }
    // llama.cpp keeps routers (ffn_gate_inp) in f32, as its converter writes them.
    const bool matrix = f32.rank() == 2 && !absl::EndsWith(gguf_name, ".ffn_gate_inp.weight");
    tensors.emplace_back(gguf_name,
                         Convert(f32, matrix ? StoredType(f32, matrix_dtype) : DType::kF32));
  }
  return WriteGguf(path, meta, tensors);
}

}  // namespace shardlm
