// The one op interface that the model and the parallel layers are written against. They never
// know which backend runs: the CPU backend (kernels/cpu) and, with issue [5 of 5], CUDA.
//
// Conventions:
// - Activations are f32, row-major, in the backend's memory (host for CPU, device for CUDA).
// - Weights come in as host tensors of any dtype (often views into an mmap) and are turned into
//   the backend's form by PrepareWeight; ops take prepared weights only.
// - Small per-step index arrays (token ids, positions) are passed as host spans.
// - Shapes are checked by the callers (the model); a backend may assume they agree and only
//   asserts in debug builds.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/tensor.h"

namespace shardlm {

// Rotary position embedding parameters, from the model config.
struct RopeConfig {
  enum class Scaling : uint8_t { kNone, kLinear, kLlama3 };
  float theta = 10000.0f;
  int rotary_dim = 0;        // usually head_dim
  bool interleaved = false;  // false: HF "rotate half" (NeoX); true: pairs (2i, 2i+1) (GPT-J)
  Scaling scaling = Scaling::kNone;
  float factor = 1.0f;               // linear and llama3
  float low_freq_factor = 1.0f;      // llama3
  float high_freq_factor = 4.0f;     // llama3
  int original_max_position = 8192;  // llama3
};

// Inverse frequency of each rotary pair (rotary_dim / 2 values), scaling applied. Computed on the
// host in double precision, identically for every backend.
std::vector<float> RopeInverseFrequencies(const RopeConfig& rope);

struct AttentionParams {
  int num_heads = 0;       // query heads in q
  int num_kv_heads = 0;    // KV heads in the cache; num_heads % num_kv_heads == 0 (GQA groups)
  int head_dim = 0;
  float scale = 1.0f;      // usually 1/sqrt(head_dim)
  int sliding_window = 0;  // 0: none; else key j is visible to query at p only if p - j < window
};

// Where each query token of a batch finds its keys in a paged KV cache: caches are
// [num_blocks * block_size, kv_heads, head_dim], and key position j of sequence s sits at cache
// row block_tables[table_begin[s] + j / block_size] * block_size + j % block_size. Host spans.
struct PagedKvLayout {
  int block_size = 16;
  std::span<const int32_t> positions;     // n: position of each query token in its sequence
  std::span<const int32_t> seq_index;     // n: its sequence
  std::span<const int32_t> table_begin;   // sequences + 1 offsets into block_tables
  std::span<const int32_t> block_tables;  // every sequence's blocks, in order
};

// "" when every token's keys [0, position] lie in blocks of its sequence's table and those blocks
// are inside a cache of `cache_blocks` blocks; else what is wrong, naming the token, sequence,
// position or block. The one check behind PagedAttention (every backend) and the model's batch.
std::string PagedKvLayoutError(const PagedKvLayout& layout, int64_t cache_blocks);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Memory. Allocate returns zeroed backend memory.
  virtual Tensor Allocate(std::vector<int64_t> shape, DType dtype = DType::kF32) = 0;
  virtual Tensor ToDevice(const Tensor& host) = 0;  // host f32 -> backend memory
  virtual Tensor ToHost(const Tensor& t) = 0;       // backend memory -> host f32
  // A host weight of any dtype -> the form this backend's ops take (CPU: f32, bf16/f16 matrices).
  virtual Tensor PrepareWeight(const Tensor& host) = 0;
  // Columns [begin, end) of a host matrix whose quantization blocks that range cuts through (a
  // tensor-parallel slice of a quantized matrix, given as the whole blocks around it): the
  // backend's form of just those columns (CPU: dequantized to f32).
  virtual Tensor PrepareWeightColumns(const Tensor& host, int64_t begin, int64_t end) = 0;

  // y[n, out] = x[n, in] * w[out, in]^T (+ bias[out] when bias is non-null).
  virtual void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // y[n, d] = x / sqrt(mean(x^2) + eps) * w[d], row by row. y may alias x.
  virtual void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y) = 0;
  // In place on x[n, heads, head_dim]; row i sits at positions[i]. Rotates the first
  // rope.rotary_dim features of each head.
  virtual void Rope(Tensor& x, std::span<const int32_t> positions, const RopeConfig& rope) = 0;
  // y[n, d] = table[ids[i], :]; an id of -1 gives a row of zeros (a vocabulary-parallel
  // embedding passes -1 for the ids other ranks own).
  virtual void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y) = 0;
  // y = silu(gate) * up, elementwise; y may alias gate.
  virtual void SiluMul(const Tensor& gate, const Tensor& up, Tensor& y) = 0;
  // x += y, elementwise.
  virtual void Add(Tensor& x, const Tensor& y) = 0;
  // out[i] = argmax_j logits[i, j] (first index on ties), for each of the n rows; when `values`
  // is not empty it receives logits[i, out[i]] (for a distributed argmax across vocab shards).
  virtual void Argmax(const Tensor& logits, std::span<int32_t> out,
                      std::span<float> values = {}) = 0;

  // Writes k, v [n, kv_heads, head_dim] into the caches [max_seq, kv_heads, head_dim] at the
  // rows given by positions.
  virtual void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> positions,
                       Tensor& k_cache, Tensor& v_cache) = 0;
  // Causal GQA attention of q [n, num_heads, head_dim] (query i at positions[i]) over cache rows
  // [0, positions[i]]; out [n, num_heads * head_dim]. Query head h reads KV head
  // h / (num_heads / num_kv_heads).
  virtual void Attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         std::span<const int32_t> positions, const AttentionParams& params,
                         Tensor& out) = 0;
  // The same attention over a paged cache, for a batch of tokens from several sequences: query i
  // (q row i, at layout.positions[i] of sequence layout.seq_index[i]) attends its sequence's keys
  // [0, position] (or the sliding window). K/V of this step must already be written (WriteKv with
  // the tokens' cache rows as positions).
  virtual void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              const PagedKvLayout& layout, const AttentionParams& params,
                              Tensor& out) = 0;
};

}  // namespace shardlm
