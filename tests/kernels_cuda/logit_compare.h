// Helpers of the CUDA tests: comparing a device result with the CPU backend's (ExpectClose, for
// the op tests) and logits rows of a device run against a CPU reference, and greedy ids where the
// reference is not a near-tie (the model tests).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "base/tensor.h"
#include "formats/random_weights.h"

namespace shardlm::cudatest {

// Every element of `got` within tol * max(1, max |want|) of `want` (f32 host tensors of one
// shape); the first 10 misses are reported, naming `what`.
inline void ExpectClose(const Tensor& got, const Tensor& want, float tol, const std::string& what) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  float scale = 1.0f;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, std::abs(want.data<float>()[i]));
  }
  int bad = 0;
  for (int64_t i = 0; i < want.numel() && bad < 10; ++i) {
    const float g = got.data<float>()[i], w = want.data<float>()[i];
    if (!(std::abs(g - w) <= tol * scale)) {
      ADD_FAILURE() << what << ": element " << i << " is " << g << ", CPU gives " << w
                    << " (tolerance " << tol * scale << ")";
      ++bad;
    }
  }
}

// The tiny model shape of the GPU model tests: hidden 256, 4 layers, 8 heads / 2 KV heads,
// intermediate 512, vocabulary 1000.
inline TinyModelSpec GpuTestSpec(Arch arch, DType dtype, uint64_t seed) {
  TinyModelSpec s;
  s.arch = arch;
  s.layers = 4;
  s.hidden = 256;
  s.heads = 8;
  s.kv_heads = 2;
  s.intermediate = 512;
  s.vocab = 1000;
  s.dtype = dtype;
  s.seed = seed;
  return s;
}

inline double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// max |a - b| over [begin, end) (NaN anywhere gives +inf).
inline double MaxDiff(const std::vector<float>& a, const std::vector<float>& b, size_t begin = 0,
                      size_t end = SIZE_MAX) {
  end = std::min({end, a.size(), b.size()});
  double m = 0;
  for (size_t i = begin; i < end; ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(d <= m)) m = std::isnan(d) ? INFINITY : d;
  }
  return m;
}

// First index of the maximum of row `r` of a [rows, vocab] matrix, and the gap to the runner-up.
struct Top2 {
  int32_t id = -1;
  double margin = 0;
};
inline Top2 RowTop2(const std::vector<float>& m, int64_t vocab, int64_t r) {
  const float* row = m.data() + r * vocab;
  Top2 t;
  double best = -INFINITY, second = -INFINITY;
  for (int64_t j = 0; j < vocab; ++j) {
    if (row[j] > best) {
      second = best;
      best = row[j];
      t.id = static_cast<int32_t>(j);
    } else if (row[j] > second) {
      second = row[j];
    }
  }
  t.margin = best - second;
  return t;
}

struct LogitReport {
  double max_diff = 0;    // over every row
  double scale = 0;       // max |reference logit|
  int ids_compared = 0;   // rows whose reference margin allowed comparing the argmax
  int ids_equal = 0;
  std::vector<bool> confident;  // per row: reference margin > max(min_margin, 4 x row's diff)
};

// Compares `got` with `want` (both [rows, vocab], host): max |diff| <= rel_tol * max |want|, and
// got_ids[r] == argmax of want's row r wherever the reference's top-2 margin exceeds both
// `min_margin` and twice that row's max |diff| (a smaller margin may flip legitimately).
inline LogitReport CompareLogits(const std::vector<float>& got, const std::vector<float>& want,
                                 const std::vector<int32_t>& got_ids, int64_t vocab,
                                 double rel_tol, double min_margin, const std::string& what) {
  LogitReport rep;
  EXPECT_EQ(got.size(), want.size()) << what;
  if (got.size() != want.size() || vocab <= 0) return rep;
  const int64_t rows = static_cast<int64_t>(want.size()) / vocab;
  EXPECT_EQ(static_cast<int64_t>(got_ids.size()), rows) << what;
  rep.scale = MaxAbs(want);
  rep.max_diff = MaxDiff(got, want);
  EXPECT_LE(rep.max_diff, rel_tol * rep.scale)
      << what << ": max |logit diff| " << rep.max_diff << " over " << rows
      << " rows, max |logit| " << rep.scale;
  rep.confident.assign(static_cast<size_t>(rows), false);
  for (int64_t r = 0; r < rows && r < static_cast<int64_t>(got_ids.size()); ++r) {
    const Top2 t = RowTop2(want, vocab, r);
    const double row_diff = MaxDiff(got, want, r * vocab, (r + 1) * vocab);
    rep.confident[static_cast<size_t>(r)] = t.margin > std::max(min_margin, 4 * row_diff);
    if (t.margin <= std::max(min_margin, 2 * row_diff)) continue;
    ++rep.ids_compared;
    if (got_ids[r] == t.id) {
      ++rep.ids_equal;
    } else {
      ADD_FAILURE() << what << ": row " << r << " greedy id " << got_ids[r] << ", reference "
                    << t.id << " (margin " << t.margin << ", row max |diff| " << row_diff << ")";
    }
  }
  return rep;
}

// Free-running greedy ids `got` against the reference's `want`, whose row i chose want[i] with
// confidence confident[first_row + i]: the same tokens went in as long as the ids agree, so the
// first difference is allowed only at a row that was not confident (a near-tie); nothing after
// it is compared. Returns how many ids were equal before the first difference.
inline size_t CompareGenerated(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                               const std::vector<bool>& confident, size_t first_row,
                               const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  size_t i = 0;
  for (; i < got.size() && i < want.size(); ++i) {
    if (got[i] == want[i]) continue;
    const size_t row = first_row + i;
    EXPECT_FALSE(row < confident.size() && confident[row])
        << what << ": generated token " << i << " is " << got[i] << ", the reference's " << want[i]
        << ", where the reference was not a near-tie";
    break;
  }
  return i;
}

}  // namespace shardlm::cudatest
