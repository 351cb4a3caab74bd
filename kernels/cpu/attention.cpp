// KV cache writes and causal GQA attention over the paged cache.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

// The build targets baseline x86-64 (SSE2); the attention loops are compute bound in prefill,
// so they get AVX2 / AVX-512 clones picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SHARDLM_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SHARDLM_SIMD_CLONES
#endif
// Helpers of a cloned function must be inlined into it to be compiled for its target.
#if defined(__GNUC__)
#define SHARDLM_INLINE [[gnu::always_inline]] inline
#else
#define SHARDLM_INLINE inline
#endif

namespace shardlm::cpu {
namespace {

// scores[j] = scale * dot(q, k row j) for j in [begin, end); rows `row_stride` floats apart.
// Four keys at a time: one dot product is a chain of dependent FMAs ending in a horizontal sum,
// four independent ones keep the FMA units busy.
SHARDLM_INLINE void Scores(const float* q, const float* k, int64_t row_stride, int64_t begin,
                           int64_t end, int64_t head_dim, float scale, float* scores) {
  int64_t j = begin;
  for (; j + 4 <= end; j += 4) {
    const float* k0 = k + j * row_stride;
    const float* k1 = k0 + row_stride;
    const float* k2 = k1 + row_stride;
    const float* k3 = k2 + row_stride;
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t d = 0; d < head_dim; ++d) {
      a0 += q[d] * k0[d];
      a1 += q[d] * k1[d];
      a2 += q[d] * k2[d];
      a3 += q[d] * k3[d];
    }
    scores[j] = a0 * scale;
    scores[j + 1] = a1 * scale;
    scores[j + 2] = a2 * scale;
    scores[j + 3] = a3 * scale;
  }
  for (; j < end; ++j) {
    const float* kj = k + j * row_stride;
    float a = 0.0f;
#pragma omp simd reduction(+ : a)
    for (int64_t d = 0; d < head_dim; ++d) a += q[d] * kj[d];
    scores[j] = a * scale;
  }
}

// In place: scores[0, span) -> softmax(scores), in f32 with the maximum subtracted first.
SHARDLM_INLINE void Softmax(float* scores, int64_t span) {
  float max_score = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_score)
  for (int64_t j = 0; j < span; ++j) max_score = scores[j] > max_score ? scores[j] : max_score;
  float sum = 0.0f;
  for (int64_t j = 0; j < span; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  const float inv_sum = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < span; ++j) scores[j] *= inv_sum;
}

// out += sum over j in [begin, end) of probs[j] * v row j, four rows per pass over `out`.
SHARDLM_INLINE void AccumulateValues(const float* probs, const float* v, int64_t row_stride,
                                     int64_t begin, int64_t end, int64_t head_dim, float* out) {
  int64_t j = begin;
  for (; j + 4 <= end; j += 4) {
    const float* v0 = v + j * row_stride;
    const float* v1 = v0 + row_stride;
    const float* v2 = v1 + row_stride;
    const float* v3 = v2 + row_stride;
    const float w0 = probs[j], w1 = probs[j + 1], w2 = probs[j + 2], w3 = probs[j + 3];
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) {
      out[d] += w0 * v0[d] + w1 * v1[d] + w2 * v2[d] + w3 * v3[d];
    }
  }
  for (; j < end; ++j) {
    const float* vj = v + j * row_stride;
    const float w = probs[j];
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) out[d] += w * vj[d];
  }
}

// A run of consecutive cache rows holding consecutive key positions: `len` rows from `row`.
struct KeyRun {
  int64_t row;
  int64_t len;
};

// `num_q` consecutive query heads of one token (q and out: head_dim floats apart) that share one
// KV head, against the keys in `runs` (in position order; one per run of consecutive blocks). `k` and `v` point at that KV head in cache row 0 and cache rows are
// `row_stride` floats apart. `scores` holds num_q * (sum of run lengths) floats.
// The keys go in chunks, all heads over one chunk before the next, so that a chunk of K or V
// is read from memory once per group rather than once per head.
SHARDLM_SIMD_CLONES void AttendHeads(const float* q, int64_t num_q, const float* k, const float* v,
                                     int64_t row_stride, std::span<const KeyRun> runs,
                                     int64_t head_dim, float scale, float* scores, float* out) {
  constexpr int64_t kChunk = 64;  // 64 rows of a 128-dim head: 32 KiB, L1/L2 resident
  int64_t span = 0;
  for (const KeyRun& r : runs) span += r.len;
  int64_t at = 0;  // index of the run's first key among all keys
  for (const KeyRun& r : runs) {
    const float* kr = k + r.row * row_stride;
    for (int64_t c = 0; c < r.len; c += kChunk) {
      const int64_t c_end = std::min(r.len, c + kChunk);
      for (int64_t g = 0; g < num_q; ++g) {
        Scores(q + g * head_dim, kr, row_stride, c, c_end, head_dim, scale, scores + g * span + at);
      }
    }
    at += r.len;
  }
  for (int64_t g = 0; g < num_q; ++g) Softmax(scores + g * span, span);
  std::fill(out, out + num_q * head_dim, 0.0f);
  at = 0;
  for (const KeyRun& r : runs) {
    const float* vr = v + r.row * row_stride;
    for (int64_t c = 0; c < r.len; c += kChunk) {
      const int64_t c_end = std::min(r.len, c + kChunk);
      for (int64_t g = 0; g < num_q; ++g) {
        AccumulateValues(scores + g * span + at, vr, row_stride, c, c_end, head_dim,
                         out + g * head_dim);
      }
    }
    at += r.len;
  }
}

// How many query heads one task takes: whole GQA groups read each K/V row once; when there are
// fewer (token, KV head) pairs than threads, groups are split (down to single heads).
int64_t HeadsPerTask(int64_t n, int64_t heads, int64_t group, bool parallel, int threads) {
  int64_t heads_per_task = group;
  if (parallel) {
    while (heads_per_task > 1 && n * heads / heads_per_task < threads) {
      int64_t smaller = heads_per_task - 1;
      while (group % smaller != 0) --smaller;
      heads_per_task = smaller;
    }
  }
  return heads_per_task;
}

int64_t FirstKey(int64_t window, int64_t p) {
  return window > 0 ? std::max<int64_t>(0, p - window + 1) : int64_t{0};
}

void CheckAttentionShapes(const char* op, const Tensor& q, const Tensor& k_cache,
                          const Tensor& v_cache, const Tensor& out, int64_t n,
                          const AttentionParams& params) {
  RequireHostF32(op, {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}});
  Require(AttentionShapesAgree(q, k_cache, v_cache, out, n, params), op, kAttentionShapes,
          {{"q", &q}, {"k_cache", &k_cache}, {"v_cache", &v_cache}, {"out", &out}});
}

// Runs every (token, head group) task; `runs_of(i, lo, hi, runs)` fills the key runs of token i
// for key positions [lo, hi].
template <typename RunsOf>
void AttendAll(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               std::span<const int32_t> positions, const AttentionParams& params, Tensor& out,
               int threads, const RunsOf& runs_of) {
  const int64_t heads = params.num_heads, kv_heads = params.num_kv_heads;
  const int64_t head_dim = params.head_dim;
  const int64_t n = static_cast<int64_t>(positions.size());
  const int64_t width = heads * head_dim, kv_width = kv_heads * head_dim;
  const int64_t group = heads / kv_heads;
  const int64_t window = params.sliding_window;
  int64_t max_span = 0, total_keys = 0;
  for (int32_t p : positions) {
    const int64_t span = p - FirstKey(window, p) + 1;
    max_span = std::max(max_span, span);
    total_keys += span;
  }
  const bool parallel = n * heads > 1 && total_keys * width >= kMinParallelWork;
  const int64_t heads_per_task = HeadsPerTask(n, heads, group, parallel, threads);
  const int64_t tasks_per_row = heads / heads_per_task;
  const int64_t tasks = n * tasks_per_row;
  const float* qp = q.data<float>();
  const float* kp = k_cache.data<float>();
  const float* vp = v_cache.data<float>();
  float* op = out.data<float>();
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> scores(static_cast<size_t>(heads_per_task * max_span));
    std::vector<KeyRun> runs;
    // Round-robin tasks: in a causal prefill later rows see more keys, and a cyclic split
    // balances that without the cost of dynamic scheduling.
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t i = t / tasks_per_row;
      const int64_t h = (t % tasks_per_row) * heads_per_task;  // first query head of the task
      const int64_t p = positions[i];
      runs.clear();
      runs_of(i, FirstKey(window, p), p, runs);
      const int64_t kv_offset = (h / group) * head_dim;
      const int64_t offset = i * width + h * head_dim;
      AttendHeads(qp + offset, heads_per_task, kp + kv_offset, vp + kv_offset, kv_width, runs,
                  head_dim, params.scale, scores.data(), op + offset);
    }
  }
}

}  // namespace

void CheckCacheRows(std::string_view op, std::span<const int32_t> rows, int64_t max_seq) {
  for (int32_t p : rows) {
    if (p < 0 || p >= max_seq) {
      throw std::out_of_range(std::string(op) + ": position " + std::to_string(p) +
                              " outside the cache [0, " + std::to_string(max_seq) + ")");
    }
  }
}

void WriteKv(const Tensor& k, const Tensor& v, std::span<const int32_t> positions, Tensor& k_cache,
             Tensor& v_cache) {
  RequireHostF32("WriteKv", {{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
  const int64_t n = static_cast<int64_t>(positions.size());
  Require(KvWriteShapesAgree(k, v, n, k_cache, v_cache), "WriteKv", kKvWriteShapes,
          {{"k", &k}, {"v", &v}, {"k_cache", &k_cache}, {"v_cache", &v_cache}});
  const int64_t max_seq = k_cache.dim(0);
  const int64_t row = max_seq > 0 ? k_cache.numel() / max_seq : 0;
  CheckCacheRows("WriteKv", positions, max_seq);
  const size_t row_bytes = static_cast<size_t>(row) * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = positions[i];
    std::memcpy(k_cache.data<float>() + p * row, k.data<float>() + i * row, row_bytes);
    std::memcpy(v_cache.data<float>() + p * row, v.data<float>() + i * row, row_bytes);
  }
}

void PagedAttention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                    const PagedKvLayout& layout, const AttentionParams& params, Tensor& out,
                    int threads) {
  const int64_t n = static_cast<int64_t>(layout.positions.size());
  CheckAttentionShapes("PagedAttention", q, k_cache, v_cache, out, n, params);
  const int64_t bs = layout.block_size;
  const int64_t rows = k_cache.dim(0);
  Require(bs > 0 && rows % bs == 0, "PagedAttention",
          "expects block_size > 0 dividing the cache rows", {{"k_cache", &k_cache}});
  // Every key a query reads must lie in a block of its sequence's table, inside the cache.
  if (const std::string error = PagedKvLayoutError(layout, rows / bs); !error.empty()) {
    throw std::out_of_range("PagedAttention: " + error);
  }
  AttendAll(q, k_cache, v_cache, layout.positions, params, out, threads,
            [&](int64_t i, int64_t lo, int64_t hi, std::vector<KeyRun>& runs) {
              const int32_t* table = layout.block_tables.data() + layout.table_begin[layout.seq_index[i]];
              for (int64_t j = lo; j <= hi;) {
                const int64_t in_block = j % bs;
                const int64_t len = std::min(bs - in_block, hi - j + 1);
                const int64_t row = static_cast<int64_t>(table[j / bs]) * bs + in_block;
                // Blocks that follow each other in the cache make one run: a sequence whose
                // blocks were handed out in order (offline generation, a fresh server) is read
                // in long chunks, as a contiguous cache would be.
                if (!runs.empty() && runs.back().row + runs.back().len == row) {
                  runs.back().len += len;
                } else {
                  runs.push_back({row, len});
                }
                j += len;
              }
            });
}

}  // namespace shardlm::cpu
