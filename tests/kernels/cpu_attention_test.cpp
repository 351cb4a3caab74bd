// WriteKv and PagedAttention of the CPU backend against a double-precision reference that reads
// each query's keys through its sequence's block table, one position at a time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <ostream>
#include <random>
#include <stdexcept>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/kernels/test_util.h"

namespace shardlm {
namespace {

using testutil::AllClose;
using testutil::RandomTensor;
using testutil::ToVector;

// Causal (optionally windowed) GQA attention in double, straight from the definition: query i
// attends key positions j <= positions[i] of its sequence, key j at cache row
// block_tables[table_begin[seq] + j / block_size] * block_size + j % block_size.
std::vector<double> ReferenceAttention(const Tensor& q, const Tensor& k_cache,
                                       const Tensor& v_cache, const PagedKvLayout& layout,
                                       const AttentionParams& p) {
  const int64_t n = static_cast<int64_t>(layout.positions.size());
  const int64_t hd = p.head_dim, bs = layout.block_size;
  const int64_t group = p.num_heads / p.num_kv_heads;
  const float* qd = q.data<float>();
  const float* kd = k_cache.data<float>();
  const float* vd = v_cache.data<float>();
  std::vector<double> out(n * p.num_heads * hd, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = layout.positions[i];
    const int32_t* table = layout.block_tables.data() + layout.table_begin[layout.seq_index[i]];
    for (int64_t h = 0; h < p.num_heads; ++h) {
      const int64_t kvh = h / group;
      std::vector<double> scores;
      std::vector<int64_t> rows;
      for (int64_t j = 0; j <= pos; ++j) {
        if (p.sliding_window > 0 && pos - j >= p.sliding_window) continue;
        const int64_t row = int64_t{table[j / bs]} * bs + j % bs;
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) {
          dot += static_cast<double>(qd[(i * p.num_heads + h) * hd + d]) *
                 kd[(row * p.num_kv_heads + kvh) * hd + d];
        }
        scores.push_back(dot * p.scale);
        rows.push_back(row);
      }
      const double mx = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& s : scores) sum += (s = std::exp(s - mx));
      for (size_t t = 0; t < rows.size(); ++t) {
        for (int64_t d = 0; d < hd; ++d) {
          out[(i * p.num_heads + h) * hd + d] +=
              scores[t] / sum * vd[(rows[t] * p.num_kv_heads + kvh) * hd + d];
        }
      }
    }
  }
  return out;
}

AttentionParams Params(int heads, int kv_heads, int head_dim, int window = 0) {
  AttentionParams p;
  p.num_heads = heads;
  p.num_kv_heads = kv_heads;
  p.head_dim = head_dim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  p.sliding_window = window;
  return p;
}

std::vector<int32_t> Iota(int32_t begin, int32_t end) {
  std::vector<int32_t> v(static_cast<size_t>(end - begin));
  std::iota(v.begin(), v.end(), begin);
  return v;
}

// One sequence of `positions` queries whose keys [0, capacity) lie in blocks of `block_size` of
// a cache of `cache_blocks` blocks: blocks 0, 1, 2, ... in order (consecutive cache rows, which
// the backend reads as one run), or scattered over the cache (a fixed shuffle).
struct OneSequence {
  int block_size;
  int64_t cache_blocks;
  std::vector<int32_t> positions, seq_index, table_begin, table;

  OneSequence(int bs, int64_t capacity, std::vector<int32_t> query_positions, bool scattered,
              int64_t spare_blocks = 0)
      : block_size(bs), positions(std::move(query_positions)) {
    const int64_t blocks = (capacity + bs - 1) / bs;
    cache_blocks = blocks + spare_blocks;
    std::vector<int32_t> all = Iota(0, static_cast<int32_t>(cache_blocks));
    if (scattered) std::shuffle(all.begin(), all.end(), std::mt19937(17));
    table.assign(all.begin(), all.begin() + blocks);
    seq_index.assign(positions.size(), 0);
    table_begin = {0, static_cast<int32_t>(table.size())};
  }
  PagedKvLayout Layout() const {
    return PagedKvLayout{block_size, positions, seq_index, table_begin, table};
  }
  int64_t rows() const { return cache_blocks * block_size; }
  // The cache row of key position j.
  int32_t Row(int64_t j) const {
    return static_cast<int32_t>(table[j / block_size] * block_size + j % block_size);
  }
};

TEST(WriteKvTest, WritesRowsAtPositions) {
  auto backend = CreateCpuBackend();
  Tensor k = RandomTensor({3, 2, 4}, 1);
  Tensor v = RandomTensor({3, 2, 4}, 2);
  Tensor k_cache = backend->Allocate({10, 2, 4});
  Tensor v_cache = backend->Allocate({10, 2, 4});
  const std::vector<int32_t> positions = {7, 2, 9};
  backend->WriteKv(k, v, positions, k_cache, v_cache);
  for (int64_t row = 0; row < 10; ++row) {
    const auto it = std::find(positions.begin(), positions.end(), row);
    for (int64_t e = 0; e < 8; ++e) {
      const float kw =
          it == positions.end() ? 0.0f : k.data<float>()[(it - positions.begin()) * 8 + e];
      const float vw =
          it == positions.end() ? 0.0f : v.data<float>()[(it - positions.begin()) * 8 + e];
      ASSERT_EQ(k_cache.data<float>()[row * 8 + e], kw) << row;
      ASSERT_EQ(v_cache.data<float>()[row * 8 + e], vw) << row;
    }
  }
  const std::vector<int32_t> past_end = {7, 2, 10};
  EXPECT_THROW(backend->WriteKv(k, v, past_end, k_cache, v_cache), std::out_of_range);
  const std::vector<int32_t> too_few = {1, 2};
  EXPECT_THROW(backend->WriteKv(k, v, too_few, k_cache, v_cache), std::invalid_argument);
}

struct AttentionCase {
  int heads, kv_heads, head_dim, window;
  std::vector<int32_t> positions;
  int capacity;  // key positions the sequence's blocks hold
  int block_size;
  float scale_mult = 1.0f;
};

void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << c.heads << "/" << c.kv_heads << " heads, head_dim " << c.head_dim << ", window "
      << c.window << ", " << c.positions.size() << " rows, capacity " << c.capacity
      << ", blocks of " << c.block_size;
}

class AttentionTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(AttentionTest, MatchesReference) {
  const AttentionCase& c = GetParam();
  auto backend = CreateCpuBackend();
  AttentionParams p = Params(c.heads, c.kv_heads, c.head_dim, c.window);
  p.scale *= c.scale_mult;
  const int64_t n = static_cast<int64_t>(c.positions.size());
  for (bool scattered : {false, true}) {
    const OneSequence seq(c.block_size, c.capacity, c.positions, scattered, /*spare_blocks=*/3);
    Tensor q = RandomTensor({n, c.heads, c.head_dim}, 1);
    Tensor k_cache = RandomTensor({seq.rows(), c.kv_heads, c.head_dim}, 2);
    Tensor v_cache = RandomTensor({seq.rows(), c.kv_heads, c.head_dim}, 3);
    Tensor out = backend->Allocate({n, int64_t{c.heads} * c.head_dim});
    backend->PagedAttention(q, k_cache, v_cache, seq.Layout(), p, out);
    // Scores carry ~1e-7 relative error times their size; a large scale magnifies it.
    EXPECT_TRUE(AllClose(out, ReferenceAttention(q, k_cache, v_cache, seq.Layout(), p),
                         2e-6 * c.scale_mult, 1e-5))
        << (scattered ? "scattered blocks" : "blocks in order");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTest,
    ::testing::Values(AttentionCase{8, 2, 16, 0, {0}, 4, 4},                // first token
                      AttentionCase{8, 2, 16, 0, {5}, 8, 4},                // GQA decode
                      AttentionCase{8, 2, 16, 0, Iota(0, 12), 12, 4},       // GQA prefill
                      AttentionCase{4, 1, 8, 0, Iota(3, 9), 16, 16},        // MQA, one block
                      AttentionCase{9, 3, 12, 0, {0, 4, 11, 2}, 12, 3},     // 9/3, any order
                      AttentionCase{4, 4, 64, 0, Iota(0, 5), 8, 1},         // MHA, 1-row blocks
                      AttentionCase{8, 2, 16, 5, Iota(0, 20), 20, 4},       // sliding window
                      AttentionCase{4, 2, 8, 1, {0, 3, 9}, 10, 4},          // window of 1
                      AttentionCase{4, 2, 8, 50, Iota(0, 10), 10, 4},       // window > context
                      AttentionCase{4, 2, 32, 0, Iota(0, 6), 6, 2, 40.0f},  // peaked softmax
                      AttentionCase{32, 8, 128, 0, {1999}, 2048, 16},       // long decode
                      AttentionCase{8, 2, 64, 0, Iota(0, 64), 64, 16},      // parallel prefill
                      // Decodes split at multiples of 256 keys and merged: on either side of a
                      // split edge, over several head groups, and with a window across splits.
                      AttentionCase{12, 3, 64, 0, {255, 767, 256, 512}, 768, 16},
                      AttentionCase{8, 2, 16, 300, {700, 257}, 701, 4},
                      // Prefill tiles of 32 tokens and a partial one (45 = 32 + 13) against
                      // blocks of 128 keys and a partial one, plain and windowed.
                      AttentionCase{12, 3, 64, 0, Iota(200, 245), 245, 16},
                      AttentionCase{12, 3, 64, 100, Iota(150, 300), 300, 8},
                      // Peaked scores across key blocks: the online softmax rescales.
                      AttentionCase{4, 2, 32, 0, Iota(130, 170), 170, 16, 40.0f}));

TEST(AttentionTest, LargeScoresStayFinite) {
  // Scores around +-160: exp overflows (or underflows to an all-zero sum) in f32 unless the
  // row maximum is subtracted first.
  auto backend = CreateCpuBackend();
  AttentionParams p = Params(2, 1, 16);
  p.scale = 1.0f;
  const OneSequence seq(2, 6, Iota(0, 6), /*scattered=*/false);
  std::vector<float> qv(6 * 2 * 16);
  for (size_t e = 0; e < qv.size(); ++e) qv[e] = (e / 16) % 2 == 0 ? 10.0f : -10.0f;
  std::vector<float> kv = testutil::RandomVector(6 * 16, 91, 0.95f, 1.05f);
  Tensor q = testutil::FromVector({6, 2, 16}, qv);
  Tensor k_cache = testutil::FromVector({6, 1, 16}, kv);
  Tensor v_cache = RandomTensor({6, 1, 16}, 92);
  Tensor out = backend->Allocate({6, 32});
  backend->PagedAttention(q, k_cache, v_cache, seq.Layout(), p, out);
  EXPECT_TRUE(AllClose(out, ReferenceAttention(q, k_cache, v_cache, seq.Layout(), p), 5e-5));
}

TEST(AttentionTest, PrefillEqualsTokenByTokenDecode) {
  // The same sequence written and attended in chunks (a prompt, then a continuation) and one
  // token at a time must agree, with and without a window, over scattered blocks.
  for (int window : {0, 4}) {
    auto backend = CreateCpuBackend();
    const AttentionParams p = Params(8, 2, 16, window);
    const int64_t total = 11;
    const int64_t width = 8 * 16;
    Tensor q = RandomTensor({total, 8, 16}, 71);
    Tensor k = RandomTensor({total, 2, 16}, 72);
    Tensor v = RandomTensor({total, 2, 16}, 73);
    const OneSequence all(4, total, Iota(0, total), /*scattered=*/true, /*spare_blocks=*/2);
    // Query rows [begin, end) with their K/V written at their cache rows first.
    auto attend = [&](Tensor& kc, Tensor& vc, int64_t begin, int64_t end, Tensor& out) {
      const OneSequence chunk = [&] {
        OneSequence s = all;
        s.positions = Iota(static_cast<int32_t>(begin), static_cast<int32_t>(end));
        s.seq_index.assign(s.positions.size(), 0);
        return s;
      }();
      std::vector<int32_t> rows;
      for (int64_t j = begin; j < end; ++j) rows.push_back(all.Row(j));
      backend->WriteKv(k.Rows(begin, end), v.Rows(begin, end), rows, kc, vc);
      Tensor o = out.Rows(begin, end);
      backend->PagedAttention(q.Rows(begin, end), kc, vc, chunk.Layout(), p, o);
    };

    Tensor kc = backend->Allocate({all.rows(), 2, 16});
    Tensor vc = backend->Allocate({all.rows(), 2, 16});
    Tensor chunked = backend->Allocate({total, width});
    attend(kc, vc, 0, 7, chunked);
    attend(kc, vc, 7, total, chunked);

    Tensor kc1 = backend->Allocate({all.rows(), 2, 16});
    Tensor vc1 = backend->Allocate({all.rows(), 2, 16});
    Tensor stepped = backend->Allocate({total, width});
    for (int64_t t = 0; t < total; ++t) attend(kc1, vc1, t, t + 1, stepped);
    EXPECT_TRUE(AllClose(chunked, stepped, 1e-6, 1e-6)) << "window " << window;
    // And both agree with the reference over the whole sequence.
    EXPECT_TRUE(AllClose(stepped, ReferenceAttention(q, kc1, vc1, all.Layout(), p), 2e-6))
        << "window " << window;
  }
}

TEST(AttentionTest, SameResultWithAnyThreadCount) {
  // Prefill (many tasks), and GQA / MQA decodes, whose keys the backend splits into pieces
  // that threads share: the thread count must not change a single bit.
  struct Case {
    AttentionParams params;
    std::vector<int32_t> positions;
  };
  const Case cases[] = {{Params(8, 2, 32), Iota(0, 40)},
                        {Params(8, 2, 32), {299}},
                        {Params(8, 1, 32), {299}},
                        {Params(12, 3, 64), Iota(230, 300)},  // tiles past a key block
                        {Params(12, 3, 64), {40, 299, 170}}};  // decodes, split and not
  for (const Case& c : cases) {
    const OneSequence seq(4, 300, c.positions, /*scattered=*/true);
    const int64_t n = static_cast<int64_t>(c.positions.size());
    const int64_t width = int64_t{c.params.num_heads} * c.params.head_dim;
    Tensor q = RandomTensor({n, c.params.num_heads, c.params.head_dim}, 81);
    Tensor k_cache = RandomTensor({seq.rows(), c.params.num_kv_heads, c.params.head_dim}, 82);
    Tensor v_cache = RandomTensor({seq.rows(), c.params.num_kv_heads, c.params.head_dim}, 83);
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3, 4}) {
      auto backend = CreateCpuBackend(threads);
      Tensor out = backend->Allocate({n, width});
      backend->PagedAttention(q, k_cache, v_cache, seq.Layout(), c.params, out);
      results.push_back(ToVector(out));
    }
    for (size_t r = 1; r < results.size(); ++r) EXPECT_EQ(results[0], results[r]) << r + 1;
    EXPECT_TRUE(AllClose(std::span<const float>(results[0]),
                         ReferenceAttention(q, k_cache, v_cache, seq.Layout(), c.params), 2e-6));
  }
}

TEST(AttentionTest, RejectsBadArguments) {
  auto backend = CreateCpuBackend();
  const OneSequence seq(2, 4, {0, 1}, /*scattered=*/false);
  Tensor q = RandomTensor({2, 6, 8}, 1);
  Tensor kc = RandomTensor({4, 4, 8}, 2);
  Tensor vc = RandomTensor({4, 4, 8}, 3);
  Tensor out = backend->Allocate({2, 48});
  EXPECT_THROW(backend->PagedAttention(q, kc, vc, seq.Layout(), Params(6, 4, 8), out),
               std::invalid_argument);  // 6 heads do not split into 4 groups
  Tensor q4 = RandomTensor({2, 4, 8}, 1);
  Tensor out4 = backend->Allocate({2, 32});
  OneSequence past_end = seq;
  past_end.positions = {0, 4};  // the sequence's 2 blocks of 2 hold positions 0..3
  EXPECT_THROW(backend->PagedAttention(q4, kc, vc, past_end.Layout(), Params(4, 4, 8), out4),
               std::out_of_range);
  OneSequence one = seq;
  one.positions = {0};
  one.seq_index = {0};
  EXPECT_THROW(backend->PagedAttention(q4, kc, vc, one.Layout(), Params(4, 4, 8), out4),
               std::invalid_argument);  // 2 query rows, 1 position
  OneSequence odd = seq;
  odd.block_size = 3;  // does not divide the cache's 4 rows
  odd.table = {0};
  odd.table_begin = {0, 1};
  EXPECT_THROW(backend->PagedAttention(q4, kc, vc, odd.Layout(), Params(4, 4, 8), out4),
               std::invalid_argument);
}

// Three sequences of different lengths in one batch over a paged cache whose blocks are
// scattered, interleaved and partly adjacent (7 then 8: one run): each token's output equals the
// double reference over its own sequence's keys.
TEST(PagedAttentionTest, SequencesOfABatchReadTheirOwnBlocks) {
  auto backend = CreateCpuBackend(2);
  AttentionParams p;
  p.num_heads = 8;
  p.num_kv_heads = 2;
  p.head_dim = 16;
  p.scale = 0.25f;
  const int bs = 4;
  const int64_t num_blocks = 16;
  Tensor k_cache = RandomTensor({num_blocks * bs, p.num_kv_heads, p.head_dim}, 3);
  Tensor v_cache = RandomTensor({num_blocks * bs, p.num_kv_heads, p.head_dim}, 4);
  const std::vector<std::vector<int32_t>> tables = {{7, 8, 2, 11}, {0}, {5, 9, 1, 14}};
  const std::vector<int32_t> lengths = {14, 3, 13};
  for (int window : {0, 5}) {
    p.sliding_window = window;
    // Each sequence contributes its last 2 positions (a decode-like and a prefill-like mix).
    std::vector<int32_t> positions, seq_index, table_begin = {0}, block_tables;
    for (size_t s = 0; s < tables.size(); ++s) {
      block_tables.insert(block_tables.end(), tables[s].begin(), tables[s].end());
      table_begin.push_back(static_cast<int32_t>(block_tables.size()));
      for (int32_t pos = std::max(0, lengths[s] - 2); pos < lengths[s]; ++pos) {
        positions.push_back(pos);
        seq_index.push_back(static_cast<int32_t>(s));
      }
    }
    const int64_t n = static_cast<int64_t>(positions.size());
    Tensor q = RandomTensor({n, p.num_heads, p.head_dim}, 5);
    Tensor out = backend->Allocate({n, p.num_heads * p.head_dim});
    const PagedKvLayout layout{bs, positions, seq_index, table_begin, block_tables};
    backend->PagedAttention(q, k_cache, v_cache, layout, p, out);
    EXPECT_TRUE(AllClose(out, ReferenceAttention(q, k_cache, v_cache, layout, p), 1e-5))
        << "window " << window;
  }
  // A position past the sequence's blocks is an error, not a stray read.
  std::vector<int32_t> positions = {4}, seq_index = {0}, table_begin = {0, 1}, block_tables = {3};
  Tensor q = RandomTensor({1, p.num_heads, p.head_dim}, 6);
  Tensor out = backend->Allocate({1, p.num_heads * p.head_dim});
  const PagedKvLayout bad{bs, positions, seq_index, table_begin, block_tables};
  EXPECT_THROW(backend->PagedAttention(q, k_cache, v_cache, bad, p, out), std::out_of_range);
}

// A step of a server: one sequence's prompt chunk (tiles of tokens) between the decode tokens
// of two long sequences (keys split in pieces), blocks shuffled over one cache so that key
// blocks of the tiles are gathered from many runs.
TEST(PagedAttentionTest, PrefillChunkAmongLongDecodes) {
  auto backend = CreateCpuBackend(2);
  const AttentionParams p = Params(12, 3, 64);
  const int bs = 16;
  const std::vector<int32_t> lengths = {700, 300, 1100};  // keys each sequence holds
  std::vector<int32_t> blocks(140);  // 44 + 19 + 69 used
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(5));
  std::vector<int32_t> positions, seq_index, table_begin = {0}, block_tables;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const int32_t need = (lengths[s] + bs - 1) / bs;
    block_tables.insert(block_tables.end(), blocks.begin() + table_begin.back(),
                        blocks.begin() + table_begin.back() + need);
    table_begin.push_back(table_begin.back() + need);
    const int32_t first = s == 1 ? lengths[s] - 45 : lengths[s] - 1;  // sequence 1: a chunk
    for (int32_t pos = first; pos < lengths[s]; ++pos) {
      positions.push_back(pos);
      seq_index.push_back(static_cast<int32_t>(s));
    }
  }
  const int64_t rows = static_cast<int64_t>(blocks.size()) * bs;
  Tensor k_cache = RandomTensor({rows, p.num_kv_heads, p.head_dim}, 11);
  Tensor v_cache = RandomTensor({rows, p.num_kv_heads, p.head_dim}, 12);
  const int64_t n = static_cast<int64_t>(positions.size());
  Tensor q = RandomTensor({n, p.num_heads, p.head_dim}, 13);
  Tensor out = backend->Allocate({n, int64_t{p.num_heads} * p.head_dim});
  const PagedKvLayout layout{bs, positions, seq_index, table_begin, block_tables};
  backend->PagedAttention(q, k_cache, v_cache, layout, p, out);
  EXPECT_TRUE(AllClose(out, ReferenceAttention(q, k_cache, v_cache, layout, p), 2e-6));
}

}  // namespace
}  // namespace shardlm
