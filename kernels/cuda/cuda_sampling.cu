// The device sampler (cuda_sampling.h): one block per row, no sort. Every candidate has a
// 64-bit key, (the logit's bits in descending order) << id_bits | id, so that ascending keys are
// the CPU sampler's order (descending logit, ties by lower id), and every set the CPU keeps is
// the keys up to some limit. Each cut is a radix select on that key, 8 bits a pass from the top,
// over a histogram in shared memory:
//   top-k: the k-th key, by counts;
//   top-p: the first key whose cumulative probability reaches top_p of the total;
//   draw:  the first key whose cumulative probability exceeds uniform * the kept total;
// min-p is a filter (probabilities fall with the key, so it cuts a prefix as the CPU's loop does).
// Probabilities are the CPU's, exp(l / T - l_top / T) in double with the same roundings (no FMA
// contraction), and are summed in 64-bit fixed point: integer sums do not depend on the order of
// the atomic adds, so the result is deterministic. Probability 1 (the top token's) is
// 2^(63 - bw) units, bw the bit width of the vocabulary size (2^52 at most), so no sum overflows.
// Rounding to units moves a cumulative sum by at most vocab * 2^-(64 - bw) of the total (2e-9
// for 151936 tokens; 1e-14 to 6e-14 measured on random rows, as the roundings cancel): that is
// how near a boundary of the cumulative sums a draw (or the top-p cut) has to fall for the
// choice to differ from the CPU's.
//
// The row logic is written once against a small block interface (thread index, barrier,
// atomics) so that it can also run on the host with threads standing in for the block, which is
// how it was checked against shardlm::Sample without a device.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "base/check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_sampling.h"

namespace shardlm::cuda {
namespace {

constexpr int kSampleThreads = 1024;
constexpr int kDigitBits = 8;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kGroupSize = 16;  // buckets are scanned a group at a time
constexpr int kGroups = kBuckets / kGroupSize;
constexpr uint64_t kNoLimit = ~uint64_t{0};
constexpr double kLn2 = 0.69314718055994530942;

// The shared memory of one row.
struct RowShared {
  uint64_t hist_w[kBuckets];  // weight (count or fixed-point probability) per digit
  uint32_t hist_c[kBuckets];  // candidates per digit
  uint64_t group_w[kGroups];
  uint64_t min_key;
  uint64_t found;
  uint64_t thr;        // the select's threshold on the cumulative weight
  uint64_t sel_below;  // weight of the keys below the selected prefix
  uint32_t sel_digit;
  uint32_t sel_count;
};

// The row being sampled.
struct Row {
  const float* logits;
  int64_t vocab;
  int id_bits;
};

// The probabilities of the row, as the CPU computes them.
struct Dist {
  double inv_t;   // 1 / temperature
  double top;     // l_top * inv_t
  double scale;   // fixed-point units of probability 1
  double cutoff;  // exponents below it round to 0 units
};

// Which keys a select sees and what each weighs.
struct Filter {
  uint64_t limit;    // keys above it are out
  bool by_prob;      // weight: fixed-point probability; otherwise 1
  bool min_p;        // drop keys other than top_key whose probability is under `floor`
  double floor;
  uint64_t top_key;
};

// How a select's threshold follows from the total weight it sees.
enum class Rule : int {
  kCount,      // thr = count
  kAtLeast,    // thr = ceil(frac * total): the first key whose cumulative weight reaches it
  kAbove,      // thr = floor(frac * total) + 1: the first key whose cumulative weight exceeds it
};

__host__ __device__ inline double MulRn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
__host__ __device__ inline double SubRn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
__host__ __device__ inline double AddRn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

__host__ __device__ inline uint32_t FloatBits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

__host__ __device__ inline bool IsNan(float f) { return f != f; }
__host__ __device__ inline bool IsFinite(float f) { return f - f == 0.0f; }

// Bits needed to write v (0 for 0).
__host__ __device__ inline int BitWidth(uint64_t v) {
  int n = 0;
  while (v != 0) {
    ++n;
    v >>= 1;
  }
  return n;
}

// The logit as a key that ascends as the logit descends: -0 ties +0, NaN comes after -inf.
__host__ __device__ inline uint32_t DescendingBits(float l) {
  if (IsNan(l)) return 0xffffffffu;
  const uint32_t u = l == 0.0f ? 0u : FloatBits(l);
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

__host__ __device__ inline uint64_t MakeKey(float l, int64_t id, int id_bits) {
  return (static_cast<uint64_t>(DescendingBits(l)) << id_bits) | static_cast<uint64_t>(id);
}

__host__ __device__ inline int32_t KeyId(uint64_t key, int id_bits) {
  return static_cast<int32_t>(key & ((uint64_t{1} << id_bits) - 1));
}

// exp(l / T - l_top / T) as the CPU rounds it; 0 where it would round to 0 units (and for NaN).
__host__ __device__ inline double Prob(const Dist& d, float l) {
  const double x = SubRn(MulRn(static_cast<double>(l), d.inv_t), d.top);
  if (!(x >= d.cutoff)) return 0.0;
  return exp(x);
}

__host__ __device__ inline uint64_t Units(const Dist& d, double p) {
  return static_cast<uint64_t>(AddRn(MulRn(p, d.scale), 0.5));
}

// Whether `key` (of logit l) is a candidate, and its weight.
__host__ __device__ inline bool Weigh(const Filter& f, const Dist& d, float l, uint64_t key,
                                      uint64_t* w) {
  if (key > f.limit) return false;
  if (!f.by_prob) {
    *w = 1;
    return true;
  }
  const double p = Prob(d, l);
  if (f.min_p && key != f.top_key && !(p >= f.floor)) return false;
  *w = Units(d, p);
  return true;
}

__host__ __device__ inline uint64_t Threshold(Rule rule, double frac, uint64_t count,
                                              uint64_t total) {
  if (rule == Rule::kCount) return count;
  const double t = MulRn(frac, static_cast<double>(total));
  if (rule == Rule::kAtLeast) {
    const double c = ceil(t);
    if (!(c > 1.0)) return 1;
    return c >= static_cast<double>(total) ? total : static_cast<uint64_t>(c);
  }
  uint64_t below = t > 0.0 ? static_cast<uint64_t>(t) : 0;
  if (below >= total) below = total - 1;
  return below + 1;
}

// A thread's pending histogram adds for its last kSlots digits (in registers: the loops unroll,
// so every index is a constant).
struct PendingDigits {
  static constexpr int kSlots = 4;
  int digit[kSlots] = {-1, -1, -1, -1};
  uint64_t w[kSlots] = {};
  uint32_t c[kSlots] = {};

  template <class Block>
  __host__ __device__ __forceinline__ void Add(Block& b, RowShared& sh, int dg, uint64_t weight) {
    bool held = false;  // slots hold distinct digits (or -1)
    for (int k = 0; k < kSlots; ++k) {
      if (digit[k] == dg) {
        w[k] += weight;
        ++c[k];
        held = true;
      }
    }
    if (held) return;
    if (c[kSlots - 1] != 0) {
      b.Add(&sh.hist_w[digit[kSlots - 1]], w[kSlots - 1]);
      b.Add(&sh.hist_c[digit[kSlots - 1]], c[kSlots - 1]);
    }
    for (int k = kSlots - 1; k > 0; --k) {
      digit[k] = digit[k - 1];
      w[k] = w[k - 1];
      c[k] = c[k - 1];
    }
    digit[0] = dg;
    w[0] = weight;
    c[0] = 1;
  }

  template <class Block>
  __host__ __device__ __forceinline__ void Flush(Block& b, RowShared& sh) {
    for (int k = 0; k < kSlots; ++k) {
      if (c[k] != 0) {
        b.Add(&sh.hist_w[digit[k]], w[k]);
        b.Add(&sh.hist_c[digit[k]], c[k]);
      }
    }
  }
};

// The smallest candidate key whose cumulative weight (over candidates in key order) is at least
// the threshold that `rule` gives for the candidates' total weight. Every thread of the block
// calls it and gets the key. Needs a total weight > 0 (and count <= the candidates for kCount).
template <class Block>
__host__ __device__ uint64_t Select(Block& b, RowShared& sh, const Row& row, const Dist& d,
                                    const Filter& f, Rule rule, double frac, uint64_t count) {
  const int tid = b.tid(), nt = b.size();
  int remaining = 32 + row.id_bits;  // key bits below the selected prefix
  uint64_t prefix = 0;
  for (bool first = true;; first = false) {
    const int width = remaining < kDigitBits ? remaining : kDigitBits;
    const int shift = remaining - width;
    const uint64_t mask = (uint64_t{1} << width) - 1;
    for (int i = tid; i < kBuckets; i += nt) {
      sh.hist_w[i] = 0;
      sh.hist_c[i] = 0;
    }
    b.sync();
    // Histogram of the next digit. A thread holds the weights of its last few digits before the
    // atomics: in the first passes most candidates share a handful of digits (the sign and
    // exponent of the logit), and their adds would queue on those addresses.
    PendingDigits pending;
    for (int64_t i = tid; i < row.vocab; i += nt) {
      const float l = row.logits[i];
      const uint64_t key = MakeKey(l, i, row.id_bits);
      if ((key >> remaining) != prefix) continue;
      uint64_t w;
      if (!Weigh(f, d, l, key, &w)) continue;
      pending.Add(b, sh, static_cast<int>((key >> shift) & mask), w);
    }
    pending.Flush(b, sh);
    b.sync();
    for (int g = tid; g < kGroups; g += nt) {
      uint64_t s = 0;
      for (int j = 0; j < kGroupSize; ++j) s += sh.hist_w[g * kGroupSize + j];
      sh.group_w[g] = s;
    }
    b.sync();
    if (tid == 0) {
      uint64_t below = 0;
      if (first) {
        uint64_t total = 0;
        for (int g = 0; g < kGroups; ++g) total += sh.group_w[g];
        sh.thr = Threshold(rule, frac, count, total);
      } else {
        below = sh.sel_below;
      }
      const uint64_t thr = sh.thr;
      // Invariant: below < thr <= below + (weight under the prefix).
      int g = 0;
      for (; g < kGroups - 1 && below + sh.group_w[g] < thr; ++g) below += sh.group_w[g];
      int digit = g * kGroupSize;
      for (; digit < g * kGroupSize + kGroupSize - 1 && below + sh.hist_w[digit] < thr; ++digit) {
        below += sh.hist_w[digit];
      }
      sh.sel_digit = static_cast<uint32_t>(digit);
      sh.sel_below = below;
      sh.sel_count = sh.hist_c[digit];
    }
    b.sync();
    prefix = (prefix << width) | sh.sel_digit;
    remaining = shift;
    if (remaining == 0) return prefix;
    if (sh.sel_count == 1) {
      // One candidate under the prefix: it is the key.
      for (int64_t i = tid; i < row.vocab; i += nt) {
        const float l = row.logits[i];
        const uint64_t key = MakeKey(l, i, row.id_bits);
        uint64_t w;
        if ((key >> remaining) == prefix && Weigh(f, d, l, key, &w)) sh.found = key;
      }
      b.sync();
      return sh.found;
    }
  }
}

// Samples one row; every thread of the block calls it, thread 0 writes *out.
template <class Block>
__host__ __device__ void SampleRow(Block& b, RowShared& sh, const float* logits, int64_t vocab,
                                   const SampleRowParams& p, int32_t* out) {
  const int tid = b.tid(), nt = b.size();
  const Row row{logits, vocab, BitWidth(static_cast<uint64_t>(vocab - 1))};

  // The top: the largest logit, lowest id first (the CPU's argmax, and its first candidate).
  if (tid == 0) sh.min_key = kNoLimit;
  b.sync();
  uint64_t local = kNoLimit;
  for (int64_t i = tid; i < vocab; i += nt) {
    const uint64_t key = MakeKey(logits[i], i, row.id_bits);
    if (key < local) local = key;
  }
  b.MinInto(&sh.min_key, local);
  b.sync();
  const uint64_t top_key = sh.min_key;
  const int32_t top_id = KeyId(top_key, row.id_bits);
  const float top_logit = logits[top_id];
  const bool greedy = !(p.temperature > 0.0f) || p.top_k == 1;
  if (greedy || !IsFinite(top_logit)) {
    // The CPU's argmax keeps index 0 when logits[0] is NaN.
    if (tid == 0) *out = greedy && IsNan(logits[0]) ? 0 : top_id;
    return;
  }

  Dist d;
  d.inv_t = 1.0 / static_cast<double>(p.temperature);
  d.top = MulRn(static_cast<double>(top_logit), d.inv_t);
  int scale_bits = 63 - BitWidth(static_cast<uint64_t>(vocab));
  if (scale_bits > 52) scale_bits = 52;
  d.scale = ldexp(1.0, scale_bits);
  // exp(x) < 2^-(scale_bits + 2) there: under half a unit with room to spare.
  d.cutoff = -static_cast<double>(scale_bits + 2) * kLn2;

  uint64_t limit = kNoLimit;
  if (p.top_k > 0 && p.top_k < vocab) {
    const Filter f{kNoLimit, false, false, 0.0, top_key};
    limit = Select(b, sh, row, d, f, Rule::kCount, 0.0, static_cast<uint64_t>(p.top_k));
  }
  if (p.top_p < 1.0f) {
    const Filter f{limit, true, false, 0.0, top_key};
    limit = Select(b, sh, row, d, f, Rule::kAtLeast, static_cast<double>(p.top_p), 0);
  }
  // The CPU's min-p floor is min_p * prob[0], and prob[0] = exp(0) = 1.
  const Filter f{limit, true, p.min_p > 0.0f, static_cast<double>(p.min_p), top_key};
  const uint64_t drawn = Select(b, sh, row, d, f, Rule::kAbove, p.uniform, 0);
  if (tid == 0) *out = KeyId(drawn, row.id_bits);
}

// The block interface of SampleRow on the device.
struct DeviceBlock {
  __device__ int tid() const { return static_cast<int>(threadIdx.x); }
  __device__ int size() const { return static_cast<int>(blockDim.x); }
  __device__ void sync() const { __syncthreads(); }
  __device__ void Add(uint64_t* a, uint64_t v) const {
    atomicAdd(reinterpret_cast<unsigned long long*>(a), static_cast<unsigned long long>(v));
  }
  __device__ void Add(uint32_t* a, uint32_t v) const { atomicAdd(a, v); }
  // *a = min(*a, v over the block); every thread calls it (whole warps).
  __device__ void MinInto(uint64_t* a, uint64_t v) const {
    unsigned long long m = v;
    for (int o = 16; o > 0; o >>= 1) {
      const unsigned long long other = __shfl_xor_sync(0xffffffffu, m, o);
      m = other < m ? other : m;
    }
    if ((threadIdx.x & 31) == 0) atomicMin(reinterpret_cast<unsigned long long*>(a), m);
  }
};

__global__ void __launch_bounds__(kSampleThreads)
    SampleKernel(const float* __restrict__ logits, int64_t vocab,
                 const SampleRowParams* __restrict__ params, int32_t* __restrict__ out) {
  __shared__ RowShared sh;
  const int64_t r = blockIdx.x;
  const SampleRowParams p = params[r];
  DeviceBlock b;
  SampleRow(b, sh, logits + r * vocab, vocab, p, out + r);
}

}  // namespace

size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab) { return 0; }

void LaunchSample(const float* logits, int64_t rows, int64_t vocab,
                  const SampleRowParams* params, int32_t* out, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream) {
  // Bad sizes are the caller's mistake, refused before anything is enqueued.
  if (rows < 0 || rows > INT_MAX) {
    throw std::invalid_argument("LaunchSample: rows " + std::to_string(rows) +
                                " outside 0..INT_MAX");
  }
  if (rows == 0) return;
  if (vocab < 1 || vocab > kSampleMaxVocab) {
    throw std::invalid_argument("LaunchSample: vocab " + std::to_string(vocab) +
                                " outside 1.." + std::to_string(kSampleMaxVocab));
  }
  if (workspace_bytes < SampleWorkspaceBytes(rows, vocab)) {
    throw std::invalid_argument("LaunchSample: a workspace of " +
                                std::to_string(workspace_bytes) + " bytes, " +
                                std::to_string(SampleWorkspaceBytes(rows, vocab)) + " needed");
  }
  SampleKernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(logits, vocab, params,
                                                                          out);
  SHARDLM_CUDA_LAUNCH_CHECK("SampleKernel<<<>>>");
}

}  // namespace shardlm::cuda
