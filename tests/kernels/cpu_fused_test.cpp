// The fused ops of a layer with fused Q/K/V and gate/up projections (RopeWriteKv, GluMulPacked)
// against the separate ops they replace (Rope on Q and K, WriteKv; GluMul) on the CPU backend:
// the same arithmetic in the same order, so the results must be equal bit for bit.
#include <cstring>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/kernels/test_util.h"

namespace shardlm {
namespace {

using ::testing::HasSubstr;
using testutil::RandomTensor;
using testutil::ToVector;

// Columns [begin, begin + width) of every row of a [n, cols] tensor, as a new [n, width] one.
Tensor Columns(const Tensor& t, int64_t begin, int64_t width) {
  const int64_t n = t.dim(0), cols = t.dim(1);
  Tensor out = Tensor::Empty({n, width}, DType::kF32);
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out.data<float>() + i * width, t.data<float>() + i * cols + begin,
                width * sizeof(float));
  }
  return out;
}

struct FusedCase {
  int64_t n, heads, kv_heads, head_dim;
  int rotary_dim;
  bool interleaved;
  RopeConfig::Scaling scaling;
  float attention_factor = 1.0f;
};

std::ostream& operator<<(std::ostream& os, const FusedCase& c) {
  return os << "n" << c.n << "_h" << c.heads << "_kv" << c.kv_heads << "_d" << c.head_dim << "_r"
            << c.rotary_dim << (c.interleaved ? "_interleaved" : "_half") << "_scaling"
            << static_cast<int>(c.scaling) << "_factor"
            << static_cast<int>(100 * c.attention_factor);
}

class RopeWriteKvTest : public ::testing::TestWithParam<FusedCase> {};

TEST_P(RopeWriteKvTest, EqualsRopeThenWriteKv) {
  const FusedCase& c = GetParam();
  auto backend = CreateCpuBackend(2);
  RopeConfig rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = c.rotary_dim;
  rope.interleaved = c.interleaved;
  rope.scaling = c.scaling;
  rope.factor = 4.0f;
  rope.original_max_position = 16;
  rope.attention_factor = c.attention_factor;
  if (c.scaling == RopeConfig::Scaling::kLongRope) {
    for (int k = 0; k < c.rotary_dim / 2; ++k) rope.freq_factors.push_back(1.0f + 0.5f * k);
  }
  const int64_t q_width = c.heads * c.head_dim, kv_width = c.kv_heads * c.head_dim;
  const int64_t cache_rows = 3 * c.n + 5;
  const Tensor qkv = RandomTensor({c.n, q_width + 2 * kv_width}, 11);
  std::vector<int32_t> positions(c.n), rows(c.n);
  for (int64_t i = 0; i < c.n; ++i) {
    positions[i] = static_cast<int32_t>(7 * i + 3);          // past original_max_position too
    rows[i] = static_cast<int32_t>(cache_rows - 1 - 3 * i);  // scattered, distinct
  }

  // Separate ops on the parts.
  Tensor q_want = Columns(qkv, 0, q_width).Reshape({c.n, c.heads, c.head_dim});
  Tensor k = Columns(qkv, q_width, kv_width).Reshape({c.n, c.kv_heads, c.head_dim});
  const Tensor v =
      Columns(qkv, q_width + kv_width, kv_width).Reshape({c.n, c.kv_heads, c.head_dim});
  Tensor kc_want = backend->Allocate({cache_rows, c.kv_heads, c.head_dim});
  Tensor vc_want = backend->Allocate({cache_rows, c.kv_heads, c.head_dim});
  backend->Rope(q_want, positions, rope);
  backend->Rope(k, positions, rope);
  backend->WriteKv(k, v, rows, kc_want, vc_want);

  Tensor q = backend->Allocate({c.n, c.heads, c.head_dim});
  Tensor kc = backend->Allocate({cache_rows, c.kv_heads, c.head_dim});
  Tensor vc = backend->Allocate({cache_rows, c.kv_heads, c.head_dim});
  backend->RopeWriteKv(qkv, positions, rope, rows, kc, vc, q);
  EXPECT_EQ(ToVector(q), ToVector(q_want));
  EXPECT_EQ(ToVector(kc), ToVector(kc_want));  // rows not written stay zero in both
  EXPECT_EQ(ToVector(vc), ToVector(vc_want));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeWriteKvTest,
    ::testing::Values(FusedCase{1, 4, 2, 8, 8, false, RopeConfig::Scaling::kNone},
                      FusedCase{1, 4, 2, 8, 8, true, RopeConfig::Scaling::kNone},
                      FusedCase{5, 6, 3, 16, 16, false, RopeConfig::Scaling::kLinear},
                      FusedCase{7, 9, 3, 12, 8, false, RopeConfig::Scaling::kNone},  // partial
                      FusedCase{7, 9, 3, 12, 6, true, RopeConfig::Scaling::kNone},   // partial
                      FusedCase{3, 8, 8, 32, 32, true, RopeConfig::Scaling::kLlama3},
                      FusedCase{4, 6, 2, 32, 32, false, RopeConfig::Scaling::kLongRope, 1.19f},
                      FusedCase{7, 9, 3, 12, 6, true, RopeConfig::Scaling::kNone, 1.25f},
                      FusedCase{300, 8, 2, 64, 64, false, RopeConfig::Scaling::kNone}),  // threads
    [](const auto& info) {
      std::ostringstream os;
      os << info.param;
      return os.str();
    });

TEST(RopeWriteKvTest, RejectsBadShapesAndRows) {
  auto backend = CreateCpuBackend(1);
  RopeConfig rope;
  rope.rotary_dim = 8;
  const Tensor qkv = RandomTensor({2, (4 + 2 * 2) * 8}, 3);
  Tensor q = backend->Allocate({2, 4, 8});
  Tensor kc = backend->Allocate({6, 2, 8});
  Tensor vc = backend->Allocate({6, 2, 8});
  const std::vector<int32_t> positions = {0, 1}, rows = {4, 5};
  EXPECT_NO_THROW(backend->RopeWriteKv(qkv, positions, rope, rows, kc, vc, q));

  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no exception";
  };
  Tensor wrong_q = backend->Allocate({2, 3, 8});  // qkv holds 4 Q heads
  EXPECT_THAT(message([&] { backend->RopeWriteKv(qkv, positions, rope, rows, kc, vc, wrong_q); }),
              HasSubstr("RopeWriteKv: expects qkv [n, (heads + 2 * kv_heads) * head_dim]"));
  Tensor wrong_cache = backend->Allocate({6, 3, 8});
  EXPECT_THROW(backend->RopeWriteKv(qkv, positions, rope, rows, wrong_cache, wrong_cache, q),
               std::invalid_argument);
  const std::vector<int32_t> one_row = {4};
  EXPECT_THROW(backend->RopeWriteKv(qkv, positions, rope, one_row, kc, vc, q),
               std::invalid_argument);
  RopeConfig too_wide = rope;
  too_wide.rotary_dim = 10;  // > head_dim 8
  EXPECT_THROW(backend->RopeWriteKv(qkv, positions, too_wide, rows, kc, vc, q),
               std::invalid_argument);
  const std::vector<int32_t> past_end = {4, 6};
  EXPECT_THAT(message([&] { backend->RopeWriteKv(qkv, positions, rope, past_end, kc, vc, q); }),
              HasSubstr("cache row 6 at index 1 outside [0, 6)"));
  // Through the index-tensor op (no host check first): the CPU op checks the rows itself.
  EXPECT_THROW(backend->RopeWriteKv(qkv, backend->UploadIndices(positions), rope,
                                    backend->UploadIndices(past_end), kc, vc, q),
               std::out_of_range);
}

TEST(GluMulPackedTest, EqualsGluMulOfTheHalves) {
  auto backend = CreateCpuBackend(2);
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh}) {
    for (auto [n, inter] : std::vector<std::pair<int64_t, int64_t>>{{1, 7}, {3, 64}, {200, 300}}) {
      SCOPED_TRACE(std::to_string(n) + " x " + std::to_string(inter) +
                   (act == Activation::kSilu ? " SiLU" : " GELU"));
      const Tensor gate_up = RandomTensor({n, 2 * inter}, 5);
      const Tensor gate = Columns(gate_up, 0, inter), up = Columns(gate_up, inter, inter);
      Tensor want = backend->Allocate({n, inter});
      backend->GluMul(gate, up, act, want);
      Tensor got = backend->Allocate({n, inter});
      backend->GluMulPacked(gate_up, act, got);
      EXPECT_EQ(ToVector(got), ToVector(want));
    }
  }
}

TEST(GluMulPackedTest, RejectsBadShapesAndAliasing) {
  auto backend = CreateCpuBackend(1);
  const Tensor gate_up = RandomTensor({2, 10}, 5);
  Tensor y = backend->Allocate({2, 4});  // needs [2, 5]
  EXPECT_THROW(backend->GluMulPacked(gate_up, Activation::kSilu, y), std::invalid_argument);
  Tensor y_rows = backend->Allocate({3, 5});
  EXPECT_THROW(backend->GluMulPacked(gate_up, Activation::kSilu, y_rows), std::invalid_argument);
  Tensor aliased = gate_up.Reshape({4, 5}).Rows(0, 2);
  EXPECT_THROW(backend->GluMulPacked(gate_up, Activation::kSilu, aliased), std::invalid_argument);
}

}  // namespace
}  // namespace shardlm
