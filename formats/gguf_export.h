// (Here in cli/ rather than model/ because it quantizes with the kernels/cpu/quant codec.)
// Writes a HF-layout Llama-family model as GGUF the way llama.cpp's converter does: GGUF tensor
// names, llama.* / qwen2.* hyperparameters, and for the `llama` architecture the rows of Q and K
// permuted within each head for interleaved RoPE; a mixture's experts stacked into the 3-D
// ffn_*_exps tensors and its router as ffn_gate_inp (f32). Optionally quantizes the matrices
// (the expert tensors too). Used by
// `shardlm make-tiny-model --format gguf` and by tests that check GGUF and safetensors give the
// same logits.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "formats/config.h"
#include "formats/weight_source.h"

namespace shardlm {

// `matrix_dtype`: the type of the 2-D weights in the file (F32, F16, BF16 or a quantized type);
// 1-D tensors (norms, biases) are written as F32.
absl::Status ExportGguf(const ModelConfig& config, const WeightSource& hf_weights,
                        const std::string& path, DType matrix_dtype = DType::kF32);

// llama.cpp's permutation of the rows of a Q or K weight ([heads * head_dim, in]) or bias
// ([heads * head_dim]): within each head, row i * head_dim / 2 + j moves to row 2 * j + i.
Tensor PermuteForInterleavedRope(const Tensor& f32, int64_t heads);

}  // namespace shardlm
