// The one op interface that the model and the parallel layers are written against. They never
// know which backend runs: the CPU backend (kernels/cpu) and, with issue [5 of 5], CUDA.
//
// Conventions:
// - Activations are f32, row-major, in the backend's memory (host for CPU, device for CUDA).
// - Weights come in as host tensors of any dtype (often views into an mmap) and are turned into
//   the backend's form by PrepareWeight; ops take prepared weights only.
// - Per-step index arrays (token ids, positions, KV rows, block tables) are int32 (kI32) tensors
//   in backend memory, made by UploadIndices, so that a whole step can run on the device without
//   the host (and be recorded as a CUDA graph). Every op that takes them also has a convenience
//   overload with host spans, which checks the values on the host, uploads and calls it. With
//   index tensors, the caller has checked the values (the model does, on the host, before it
//   uploads); a device backend cannot look at them without a synchronization.
// - Shapes are checked by the backends (std::invalid_argument naming the op and the tensors).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/rope.h"
#include "kernels/sampling.h"
#include "base/tensor.h"

namespace shardlm {

// The activation of a gated MLP, act(gate) * up.
enum class Activation : uint8_t {
  kSilu,      // SwiGLU (Llama, Qwen, Phi-3, GLM): silu(g) = g / (1 + exp(-g))
  kGeluTanh,  // GeGLU (Gemma): 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3)))
};

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

// The shape rules of WriteKv and of the attention ops, shared by every backend (each adds its own
// dtype and memory checks and throws std::invalid_argument with the message below). n: the
// tokens (rows / positions) of the call.
bool KvWriteShapesAgree(const Tensor& k, const Tensor& v, int64_t n, const Tensor& k_cache,
                        const Tensor& v_cache);
inline constexpr const char* kKvWriteShapes =
    "expects k, v [n, kv_heads, head_dim] with n == the number of cache rows given, and caches "
    "[max_seq, kv_heads, head_dim]";
bool AttentionShapesAgree(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& out, int64_t n, const AttentionParams& params);
// The shape rule of RopeWriteKv: qkv [n, (heads + 2 * kv_heads) * head_dim], q [n, heads,
// head_dim] and caches [rows, kv_heads, head_dim] of one head_dim.
bool RopeWriteKvShapesAgree(const Tensor& qkv, int64_t n, const Tensor& k_cache,
                            const Tensor& v_cache, const Tensor& q);
inline constexpr const char* kRopeWriteKvShapes =
    "expects qkv [n, (heads + 2 * kv_heads) * head_dim] with n == the number of positions and "
    "of cache rows given, q [n, heads, head_dim] and caches [rows, kv_heads, head_dim]";
inline constexpr const char* kAttentionShapes =
    "expects q [n, num_heads, head_dim] with n == positions.size(), caches "
    "[rows, num_kv_heads, head_dim], out [n, num_heads * head_dim] and num_heads a "
    "multiple of num_kv_heads";

// The argument rules of Backend::ScatterAddRows, shared by every backend (each adds its own
// dtype and memory checks): src [m, d] and dst [n, d] matrices, m rows and m weights
// (std::invalid_argument naming the op, the shapes and the counts), every row in [0, n)
// (std::out_of_range naming the row, its index and the bound). m = 0 is allowed (a no-op).
void CheckScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                         std::span<const float> weights, const Tensor& dst);
// Backend::ScatterAddRows on host f32 tensors (the default's work, and the CPU backend's).
void ScatterAddRowsOnHost(const Tensor& src, std::span<const int32_t> rows,
                          std::span<const float> weights, Tensor& dst);

// The same layout as kI32 tensors in backend memory (see UploadIndices), checked by the caller.
struct PagedKvIndices {
  int block_size = 16;
  Tensor positions, seq_index, table_begin, block_tables;
};

// A recorded sequence of backend ops (a CUDA graph) that replays with the same tensors; the
// inputs change by writing new values into the same index tensors and activations.
class BackendGraph {
 public:
  virtual ~BackendGraph() = default;
  virtual void Replay() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // Memory. Allocate returns zeroed backend memory.
  virtual Tensor Allocate(std::vector<int64_t> shape, DType dtype = DType::kF32) = 0;
  // The same without the zeroing, for tensors an op overwrites whole (activations).
  virtual Tensor AllocateUninitialized(std::vector<int64_t> shape, DType dtype = DType::kF32) {
    return Allocate(std::move(shape), dtype);
  }
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
  // Index arrays: `host` copied into a new kI32 tensor [host.size()] in backend memory; and host
  // ints written into an existing one (dst.numel() >= host.size(), from element 0).
  virtual Tensor UploadIndices(std::span<const int32_t> host) = 0;
  virtual void WriteIndices(std::span<const int32_t> host, Tensor& dst) = 0;
  // dst = src (same dtype and element count), in backend memory.
  virtual void Copy(const Tensor& src, Tensor& dst) = 0;

  // x += delta, then y = RmsNorm(x): the residual add fused with the next layer norm.
  virtual void AddRmsNorm(Tensor& x, const Tensor& delta, const Tensor& w, float eps,
                          Tensor& y) = 0;
  // In place on x[n, heads, head_dim]; row i sits at positions[i]. Rotates the first
  // rope.rotary_dim features of each head.
  virtual void Rope(Tensor& x, const Tensor& positions, const RopeConfig& rope) = 0;
  // y[n, d] = table[ids[i], :]; an id of -1 gives a row of zeros (a vocabulary-parallel
  // embedding passes -1 for the ids other ranks own).
  virtual void Embedding(const Tensor& table, const Tensor& ids, Tensor& y) = 0;
  // y = act(gate) * up, elementwise; y may alias gate.
  virtual void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y) = 0;
  // y[n, inter] = act(gate_up[:, :inter]) * gate_up[:, inter:], from gate_up [n, 2 * inter]
  // (the output of a fused gate/up projection). y must not alias gate_up.
  virtual void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y) = 0;
  // x += y, elementwise.
  virtual void Add(Tensor& x, const Tensor& y) = 0;
  // dst[rows[i], :] += weights[i] * src[i, :] for each row i of src [m, d] (a mixture of
  // experts adds each expert's outputs into its tokens' rows; rows may repeat). The default reads
  // both back to the host; backends may do it in place.
  virtual void ScatterAddRows(const Tensor& src, std::span<const int32_t> rows,
                              std::span<const float> weights, Tensor& dst);
  // x *= s, elementwise (Gemma's embedding scale).
  virtual void Scale(Tensor& x, float s) = 0;
  // Per-head RMSNorm of Q and K (Qwen3, Gemma 3) in the output of a fused QKV projection, in
  // place: qkv [n, (heads + 2 * kv_heads) * head_dim] holds each token's Q heads, K heads, V
  // heads; every Q head is normed over its head_dim features with q_w [head_dim], every K head
  // with k_w [head_dim] (as RmsNorm); V is left alone.
  virtual void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w,
                           const Tensor& k_w, float eps) = 0;
  // out[i] = argmax_j logits[i, j] (first index on ties), for each of the n rows; when `values`
  // is not empty it receives logits[i, out[i]] (for a distributed argmax across vocab shards).
  virtual void Argmax(const Tensor& logits, std::span<int32_t> out,
                      std::span<float> values = {}) = 0;

  // out[i] = SampleRow(row i of logits [n, vocab], rows[i]) (kernels/sampling.h): the rows hold
  // the whole vocabulary. The default reads the logits back and samples on the host; the CUDA
  // backend samples on the device and reads back the ids alone.
  virtual void Sample(const Tensor& logits, std::span<const SampleRowParams> rows,
                      std::span<int32_t> out);

  // The dtype KV caches have on this backend (CPU: f32; CUDA: bf16). WriteKv and PagedAttention
  // take caches of f32 on every backend, and of this dtype.
  virtual DType kv_cache_dtype() const { return DType::kF32; }
  // Writes k, v [n, kv_heads, head_dim] (f32) into the caches [rows, kv_heads, head_dim] at
  // the rows given by `rows`.
  virtual void WriteKv(const Tensor& k, const Tensor& v, const Tensor& rows, Tensor& k_cache,
                       Tensor& v_cache) = 0;
  // The attention input of a layer in one pass, from the output of a fused QKV projection:
  // qkv [n, (heads + 2 * kv_heads) * head_dim] holds each token's Q heads, then its K heads, then
  // its V heads. q [n, heads, head_dim] receives Q rotated by Rope (row i at positions[i]); K
  // rotated the same way and V as it is go into the caches [rows, kv_heads, head_dim] at the rows
  // given by `rows`. The same as Rope on Q and K, then WriteKv.
  virtual void RopeWriteKv(const Tensor& qkv, const Tensor& positions, const RopeConfig& rope,
                           const Tensor& rows, Tensor& k_cache, Tensor& v_cache, Tensor& q) = 0;
  // Causal GQA attention over a paged cache, for a batch of tokens from several sequences: query
  // i (q [n, num_heads, head_dim] row i, at layout.positions[i] of sequence layout.seq_index[i])
  // attends its sequence's keys [0, position] (or the sliding window); out
  // [n, num_heads * head_dim]. Query head h reads KV head h / (num_heads / num_kv_heads). K/V of
  // this step must already be written (WriteKv with the tokens' cache rows).
  virtual void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                              const PagedKvIndices& layout, const AttentionParams& params,
                              Tensor& out) = 0;

  // Recording (CUDA graphs): between BeginCapture and EndCapture the ops are recorded, not run;
  // EndCapture returns the graph. Backends without graphs return false / nullptr, and ops run
  // as usual. Nothing may read device results on the host while capturing.
  virtual bool supports_graphs() const { return false; }
  virtual bool BeginCapture() { return false; }
  virtual std::unique_ptr<BackendGraph> EndCapture() { return nullptr; }
  // Ends a recording that BeginCapture started, whatever state an op or a failed step left it
  // in, and drops what was recorded: afterwards ops run eagerly again and a new capture may
  // begin. For the failure path (an op threw while recording); also ends a capture that an
  // EndCapture which threw may have left open. A no-op when nothing is being recorded.
  virtual void AbortCapture() noexcept {}
  // Waits for the queued work (a no-op on the CPU).
  virtual void Synchronize() {}

  // Host-span conveniences: check the values on the host (std::out_of_range naming the op, the
  // index and the bound), upload them, and call the op above.
  void Rope(Tensor& x, std::span<const int32_t> positions, const RopeConfig& rope);
  void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y);
  void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> rows, Tensor& k_cache,
               Tensor& v_cache);
  void RopeWriteKv(const Tensor& qkv, std::span<const int32_t> positions, const RopeConfig& rope,
                   std::span<const int32_t> rows, Tensor& k_cache, Tensor& v_cache, Tensor& q);
  void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const PagedKvLayout& layout, const AttentionParams& params, Tensor& out);
  PagedKvIndices UploadLayout(const PagedKvLayout& layout);
};

}  // namespace shardlm
