// KV cache writes and causal GQA attention over the paged cache.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_ops.h"

// The build targets baseline x86-64 (SSE2); the decode and softmax loops get AVX2 / AVX-512
// clones picked at load time (prefill's matrix products go to OpenBLAS).
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

// Key positions per split of a single-token (decode) query: its keys are cut at multiples of
// this, each piece is a task of its own and the pieces are merged by their log-sum-exp. One
// sequence then spreads over every thread (3 KV heads of a 2,048-token context: 24 tasks rather
// than 3). The cut depends on positions alone, never on the thread count or the batch.
constexpr int64_t kSegment = 256;
// Consecutive tokens of one sequence (a prompt chunk) attended together: their query heads of one
// KV head group form the rows of a matrix product with each block of keys.
constexpr int64_t kTileTokens = 32;
constexpr int64_t kKeyBlock = 128;  // keys per block of the tiled (prefill) path

// exp(x) for x <= 0 in f32, vectorizable (std::exp is a scalar libm call): 2^n * e^r with
// r in [-ln2/2, ln2/2] and a degree-6 Taylor polynomial (relative error < 2e-7). Below -87
// (where 2^n would be denormal) it is 0, so that masked keys (-inf) weigh exactly nothing.
SHARDLM_INLINE float ExpNonPositive(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float n = (xc * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-6f;
  const float p =
      1.0f +
      r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

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

// A run of consecutive cache rows holding consecutive key positions: `len` rows from `row`.
struct KeyRun {
  int64_t row;
  int64_t len;
};

// One task: the query heads of KV head `kv_head` for tokens [token, token + tokens) (consecutive
// positions of one sequence) against its key positions [key_lo, key_hi]. `slot` >= 0: the task
// is one split of a decode query and leaves (max, sum, unnormalized output) in partials[slot].
struct Task {
  int64_t token, tokens, kv_head, key_lo, key_hi, slot;
};

// The rows of a task: row r = t * group + g is query head (kv_head * group + g) of token t.
// Shapes shared by the two paths below.
struct TaskShape {
  int64_t group, head_dim, width, kv_width;  // width / kv_width: floats per q row / cache row
  float scale;
  int window;
};

// Decode (one token): keys read in place, run by run; at most kSegment keys, so the scores of a
// task fit in a small buffer and the softmax needs no rescaling. `scores`: group * kSegment.
SHARDLM_SIMD_CLONES void AttendSplit(const float* q, const float* k, const float* v,
                                     std::span<const KeyRun> runs, const TaskShape& s,
                                     float* scores, float* out, float* max_out, float* sum_out) {
  const int64_t hd = s.head_dim, group = s.group, stride = s.kv_width;
  int64_t span = 0;
  for (const KeyRun& r : runs) span += r.len;
  // Every K row is loaded once for all heads of the group.
  int64_t at = 0;
  for (const KeyRun& r : runs) {
    for (int64_t j = 0; j < r.len; ++j) {
      const float* kj = k + (r.row + j) * stride;
      for (int64_t g = 0; g < group; ++g) {
        const float* qg = q + g * hd;
        float a = 0.0f;
#pragma omp simd reduction(+ : a)
        for (int64_t d = 0; d < hd; ++d) a += qg[d] * kj[d];
        scores[g * span + at + j] = a * s.scale;
      }
    }
    at += r.len;
  }
  for (int64_t g = 0; g < group; ++g) {
    float* sg = scores + g * span;
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < span; ++j) mx = sg[j] > mx ? sg[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < span; ++j) {
      sg[j] = ExpNonPositive(sg[j] - mx);
      sum += sg[j];
    }
    max_out[g] = mx;
    sum_out[g] = sum;
  }
  std::fill(out, out + group * hd, 0.0f);
  at = 0;
  for (const KeyRun& r : runs) {
    for (int64_t j = 0; j < r.len; ++j) {
      const float* vj = v + (r.row + j) * stride;
      for (int64_t g = 0; g < group; ++g) {
        const float w = scores[g * span + at + j];
        float* og = out + g * hd;
#pragma omp simd
        for (int64_t d = 0; d < hd; ++d) og[d] += w * vj[d];
      }
    }
    at += r.len;
  }
}

// Scratch of one thread for the tiled path.
struct TileBuffers {
  std::vector<float> q, k, v, scores, out, max, sum;
};

// The online softmax over one block of scores (`rows` rows of `len`, `ld` apart): each row's
// scores become exp(score - running max), its running sum grows by their sum, and when the max
// grows the row's earlier sum and output (`out`, hd floats per row) are rescaled.
SHARDLM_SIMD_CLONES void SoftmaxBlock(float* sc, int64_t rows, int64_t len, int64_t ld,
                                      float* row_max, float* row_sum, float* out, int64_t hd) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = sc + r * ld;
    float bmax = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : bmax)
    for (int64_t j = 0; j < len; ++j) bmax = sr[j] > bmax ? sr[j] : bmax;
    if (bmax == -std::numeric_limits<float>::infinity()) {  // every key of the block masked
      std::fill(sr, sr + len, 0.0f);
      continue;
    }
    const float m_new = std::max(row_max[r], bmax);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < len; ++j) {
      sr[j] = ExpNonPositive(sr[j] - m_new);
      sum += sr[j];
    }
    if (m_new != row_max[r]) {
      const float corr = row_max[r] == -std::numeric_limits<float>::infinity()
                             ? 0.0f
                             : std::exp(row_max[r] - m_new);
      row_sum[r] *= corr;
      float* o = out + r * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) o[d] *= corr;
      row_max[r] = m_new;
    }
    row_sum[r] += sum;
  }
}

// scores[r * kKeyBlock + j] = dot(q row r, k row j) and out row r += sum over j of
// scores[r * kKeyBlock + j] * v row j, for a gathered block (rows hd floats apart). OpenBLAS
// would run these as sgemm, but its kernel choice on this VM is PRESCOTT (SSE3).
SHARDLM_SIMD_CLONES void TileScores(const float* q, int64_t rows, const float* k, int64_t len,
                                    int64_t hd, float* scores) {
  for (int64_t r = 0; r < rows; ++r) {
    Scores(q + r * hd, k, hd, 0, len, hd, 1.0f, scores + r * kKeyBlock);
  }
}
SHARDLM_SIMD_CLONES void TileValues(const float* probs, int64_t rows, const float* v, int64_t len,
                                    int64_t hd, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    AccumulateValues(probs + r * kKeyBlock, v, hd, 0, len, hd, out + r * hd);
  }
}

// Prefill (several tokens): the task's rows (tokens x group heads) against blocks of kKeyBlock
// keys gathered from their runs into contiguous buffers, as two matrix products per block
// (scores = Q K^T, out += P V) around the online softmax. `positions`: of the task's tokens.
void AttendTile(const float* q, const float* k, const float* v, std::span<const KeyRun> runs,
                const Task& task, std::span<const int32_t> positions, const TaskShape& s,
                TileBuffers& b, float* out) {
  const int64_t hd = s.head_dim, group = s.group, rows = task.tokens * group;
  b.q.resize(static_cast<size_t>(rows * hd));
  b.k.resize(static_cast<size_t>(kKeyBlock * hd));
  b.v.resize(static_cast<size_t>(kKeyBlock * hd));
  b.scores.resize(static_cast<size_t>(rows * kKeyBlock));
  b.out.assign(static_cast<size_t>(rows * hd), 0.0f);
  b.max.assign(static_cast<size_t>(rows), -std::numeric_limits<float>::infinity());
  b.sum.assign(static_cast<size_t>(rows), 0.0f);
  // Q rows packed and scaled: the tokens' group heads are group * hd floats apart by token.
  for (int64_t t = 0; t < task.tokens; ++t) {
    const float* src = q + (task.token + t) * s.width + task.kv_head * group * hd;
    float* dst = b.q.data() + t * group * hd;
    for (int64_t e = 0; e < group * hd; ++e) dst[e] = src[e] * s.scale;
  }
  const int64_t span = task.key_hi - task.key_lo + 1;
  size_t run = 0;
  int64_t in_run = 0;  // next key within runs[run]
  for (int64_t begin = 0; begin < span; begin += kKeyBlock) {
    const int64_t len = std::min(kKeyBlock, span - begin);
    // Gather the block's K and V rows.
    for (int64_t j = 0; j < len;) {
      const int64_t take = std::min(len - j, runs[run].len - in_run);
      const int64_t row = runs[run].row + in_run;
      for (int64_t x = 0; x < take; ++x) {
        std::memcpy(b.k.data() + (j + x) * hd, k + (row + x) * s.kv_width, hd * sizeof(float));
        std::memcpy(b.v.data() + (j + x) * hd, v + (row + x) * s.kv_width, hd * sizeof(float));
      }
      j += take;
      in_run += take;
      if (in_run == runs[run].len) {
        ++run;
        in_run = 0;
      }
    }
    TileScores(b.q.data(), rows, b.k.data(), len, hd, b.scores.data());
    // Causal mask and window: token t sees key positions [FirstKey(p_t), p_t].
    const int64_t first_pos = task.key_lo + begin;
    for (int64_t t = 0; t < task.tokens; ++t) {
      const int64_t p = positions[t];
      const int64_t lo = s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0;
      const int64_t valid_begin = std::clamp<int64_t>(lo - first_pos, 0, len);
      const int64_t valid_end = std::clamp<int64_t>(p - first_pos + 1, 0, len);
      if (valid_begin == 0 && valid_end == len) continue;
      for (int64_t g = 0; g < group; ++g) {
        float* sr = b.scores.data() + (t * group + g) * kKeyBlock;
        for (int64_t j = 0; j < len; ++j) {
          if (j < valid_begin || j >= valid_end) sr[j] = -std::numeric_limits<float>::infinity();
        }
      }
    }
    SoftmaxBlock(b.scores.data(), rows, len, kKeyBlock, b.max.data(), b.sum.data(), b.out.data(),
                 hd);
    TileValues(b.scores.data(), rows, b.v.data(), len, hd, b.out.data());
  }
  for (int64_t t = 0; t < task.tokens; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = t * group + g;
      const float inv = 1.0f / b.sum[r];
      float* dst = out + (task.token + t) * s.width + (task.kv_head * group + g) * hd;
      const float* src = b.out.data() + r * hd;
      for (int64_t d = 0; d < hd; ++d) dst[d] = src[d] * inv;
    }
  }
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

// Runs every task; `runs_of(i, lo, hi, runs)` fills the key runs of token i for key positions
// [lo, hi]. Tokens of one sequence at consecutive positions form tiles (prefill); a lone token
// (decode) is split at multiples of kSegment and its pieces merged. What each output depends on
// is fixed by the layout alone: the result is the same with any thread count.
template <typename RunsOf>
void AttendAll(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
               const PagedKvLayout& layout, const AttentionParams& params, Tensor& out,
               int threads, const RunsOf& runs_of) {
  const std::span<const int32_t> positions = layout.positions;
  const int64_t heads = params.num_heads, kv_heads = params.num_kv_heads;
  const int64_t n = static_cast<int64_t>(positions.size());
  const TaskShape shape{heads / kv_heads, params.head_dim, heads * params.head_dim,
                        kv_heads * params.head_dim, params.scale, params.sliding_window};
  const int64_t window = params.sliding_window;
  std::vector<Task> tasks;
  // Decode queries split in several pieces: (first task, pieces), merged after.
  struct Merge {
    int64_t token, kv_head, first_slot, pieces;
  };
  std::vector<Merge> merges;
  int64_t slots = 0, total_keys = 0;
  for (int64_t i = 0; i < n;) {
    int64_t end = i + 1;
    while (end < n && end - i < kTileTokens && layout.seq_index[end] == layout.seq_index[i] &&
           positions[end] == positions[end - 1] + 1) {
      ++end;
    }
    const int64_t lo = FirstKey(window, positions[i]), hi = positions[end - 1];
    total_keys += (end - i) * (hi - lo + 1);
    if (end - i > 1) {
      for (int64_t h = 0; h < kv_heads; ++h) tasks.push_back({i, end - i, h, lo, hi, -1});
    } else {
      const int64_t pieces = hi / kSegment - lo / kSegment + 1;
      for (int64_t h = 0; h < kv_heads; ++h) {
        if (pieces > 1) merges.push_back({i, h, slots, pieces});
        for (int64_t c = 0; c < pieces; ++c) {
          const int64_t seg = lo / kSegment + c;
          tasks.push_back({i, 1, h, std::max(lo, seg * kSegment),
                           std::min(hi, (seg + 1) * kSegment - 1), pieces > 1 ? slots++ : -1});
        }
      }
    }
    i = end;
  }
  const int64_t hd = shape.head_dim, group = shape.group;
  const int64_t slot_floats = group * (hd + 2);  // per slot: out rows, then maxes and sums
  std::vector<float> partials(static_cast<size_t>(slots * slot_floats));
  const bool parallel = tasks.size() > 1 && total_keys * shape.width >= kMinParallelWork;
  const float* qp = q.data<float>();
  const float* kp = k_cache.data<float>();
  const float* vp = v_cache.data<float>();
  float* op = out.data<float>();
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> scores(static_cast<size_t>(group * kSegment));
    std::vector<float> stats(static_cast<size_t>(2 * group));  // maxes, then sums
    std::vector<KeyRun> runs;
    TileBuffers buffers;
    // Dynamic: tiles late in a causal prefill see more keys than early ones.
#pragma omp for schedule(dynamic, 1)
    for (size_t t = 0; t < tasks.size(); ++t) {
      const Task& task = tasks[t];
      runs.clear();
      runs_of(task.token + task.tokens - 1, task.key_lo, task.key_hi, runs);
      const int64_t kv_offset = task.kv_head * hd;
      if (task.tokens > 1) {
        AttendTile(qp, kp + kv_offset, vp + kv_offset, runs, task,
                   positions.subspan(task.token, task.tokens), shape, buffers, op);
        continue;
      }
      const int64_t offset = task.token * shape.width + task.kv_head * group * hd;
      if (task.slot < 0) {
        AttendSplit(qp + offset, kp + kv_offset, vp + kv_offset, runs, shape, scores.data(),
                    op + offset, stats.data(), stats.data() + group);
        for (int64_t g = 0; g < group; ++g) {
          const float inv = 1.0f / stats[group + g];
          for (int64_t d = 0; d < hd; ++d) op[offset + g * hd + d] *= inv;
        }
      } else {
        float* slot = partials.data() + task.slot * slot_floats;
        AttendSplit(qp + offset, kp + kv_offset, vp + kv_offset, runs, shape, scores.data(),
                    slot, slot + group * hd, slot + group * hd + group);
      }
    }
    // Log-sum-exp merge of the pieces, in their order.
#pragma omp for schedule(static)
    for (size_t m = 0; m < merges.size(); ++m) {
      const Merge& mg = merges[m];
      for (int64_t g = 0; g < group; ++g) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < mg.pieces; ++c) {
          mx = std::max(mx, partials[(mg.first_slot + c) * slot_floats + group * hd + g]);
        }
        float* dst = op + mg.token * shape.width + (mg.kv_head * group + g) * hd;
        std::fill(dst, dst + hd, 0.0f);
        float sum = 0.0f;
        for (int64_t c = 0; c < mg.pieces; ++c) {
          const float* slot = partials.data() + (mg.first_slot + c) * slot_floats;
          const float w = std::exp(slot[group * hd + g] - mx);
          sum += w * slot[group * hd + group + g];
          for (int64_t d = 0; d < hd; ++d) dst[d] += w * slot[g * hd + d];
        }
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < hd; ++d) dst[d] *= inv;
      }
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
  AttendAll(q, k_cache, v_cache, layout, params, out, threads,
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
