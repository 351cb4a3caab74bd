// RopeInverseFrequencies and the CPU backend's Rope against double-precision references.
#include <cmath>
#include <numbers>
#include <ostream>
#include <stdexcept>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/kernels/test_util.h"

namespace shardlm {
namespace {

using testutil::AllClose;
using testutil::RandomTensor;
using testutil::ToVector;

std::vector<double> PlainFrequencies(double theta, int dim) {
  std::vector<double> f;
  for (int i = 0; i < dim; i += 2) f.push_back(1.0 / std::pow(theta, static_cast<double>(i) / dim));
  return f;
}

TEST(RopeFrequenciesTest, NoScaling) {
  RopeConfig rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = 64;
  const std::vector<float> got = RopeInverseFrequencies(rope);
  ASSERT_EQ(got.size(), 32u);
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_TRUE(AllClose(got, PlainFrequencies(10000.0, 64), 0.0, 1e-7));
  rope.rotary_dim = 4;  // 1 / 10000^(2/4) = 0.01
  EXPECT_FLOAT_EQ(RopeInverseFrequencies(rope)[1], 0.01f);
}

TEST(RopeFrequenciesTest, LinearScaling) {
  RopeConfig rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = 32;
  rope.scaling = RopeConfig::Scaling::kLinear;
  rope.factor = 4.0f;
  std::vector<double> want = PlainFrequencies(10000.0, 32);
  for (double& f : want) f /= 4.0;
  EXPECT_TRUE(AllClose(RopeInverseFrequencies(rope), want, 0.0, 1e-7));
}

TEST(RopeFrequenciesTest, Llama3MatchesHuggingFaceFormula) {
  RopeConfig rope;
  rope.theta = 500000.0f;
  rope.rotary_dim = 128;
  rope.scaling = RopeConfig::Scaling::kLlama3;
  rope.factor = 8.0f;
  rope.low_freq_factor = 1.0f;
  rope.high_freq_factor = 4.0f;
  rope.original_max_position = 8192;
  // transformers' _compute_llama3_parameters, transcribed in double.
  const double factor = 8, low = 1, high = 4, old_ctx = 8192;
  const double low_wavelen = old_ctx / low;
  const double high_wavelen = old_ctx / high;
  std::vector<double> want;
  int scaled = 0, kept = 0, smoothed = 0;
  for (double inv_freq : PlainFrequencies(500000.0, 128)) {
    const double wavelen = 2 * std::numbers::pi / inv_freq;
    double f = wavelen > low_wavelen ? inv_freq / factor : inv_freq;
    const double smooth = (old_ctx / wavelen - low) / (high - low);
    const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    if (medium) f = (1 - smooth) * f / factor + smooth * f;
    want.push_back(f);
    scaled += wavelen > low_wavelen;
    kept += wavelen < high_wavelen;
    smoothed += medium;
  }
  // The configuration exercises all three bands.
  ASSERT_GT(scaled, 0);
  ASSERT_GT(kept, 0);
  ASSERT_GT(smoothed, 0);
  const std::vector<float> got = RopeInverseFrequencies(rope);
  EXPECT_TRUE(AllClose(got, want, 0.0, 1e-6));
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_FLOAT_EQ(got[63], static_cast<float>(1.0 / std::pow(500000.0, 126.0 / 128) / 8));
}

// Long-rope (Phi-3): inverse frequency k divided by freq_factors[k]; attention_factor is not a
// frequency parameter.
TEST(RopeFrequenciesTest, LongRopeDividesByTheFactors) {
  RopeConfig rope;
  rope.theta = 10000.0f;
  rope.rotary_dim = 96;
  rope.scaling = RopeConfig::Scaling::kLongRope;
  rope.original_max_position = 4096;
  rope.attention_factor = 1.1902380714238083f;
  for (int k = 0; k < 48; ++k) rope.freq_factors.push_back(1.0f + 0.37f * static_cast<float>(k));
  std::vector<double> want = PlainFrequencies(10000.0, 96);
  for (size_t k = 0; k < want.size(); ++k) want[k] /= rope.freq_factors[k];
  const std::vector<float> got = RopeInverseFrequencies(rope);
  EXPECT_TRUE(AllClose(got, want, 0.0, 1e-7));
  EXPECT_EQ(got[0], 1.0f);
  RopeConfig plain = rope;
  plain.attention_factor = 1.0f;
  EXPECT_EQ(RopeInverseFrequencies(plain), got);
  EXPECT_EQ(FrequencyKey(plain), FrequencyKey(rope));
  RopeConfig longer = rope;  // the long factors: another key
  longer.freq_factors[47] *= 2.0f;
  EXPECT_NE(FrequencyKey(longer), FrequencyKey(rope));
  EXPECT_FLOAT_EQ(RopeInverseFrequencies(longer)[47], got[47] / 2.0f);
}

// x [n, heads, head_dim] rotated in place, in double from the same float angle HF computes;
// cos and sin times the attention factor (long-rope), the features past rotary_dim kept.
std::vector<double> ReferenceRope(const std::vector<float>& x, int64_t n, int64_t heads,
                                  int64_t head_dim, const std::vector<int32_t>& positions,
                                  const RopeConfig& rope) {
  const std::vector<float> inv = RopeInverseFrequencies(rope);
  const int64_t half = rope.rotary_dim / 2;
  std::vector<double> out(x.begin(), x.end());
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = out.data() + (i * heads + h) * head_dim;
      for (int64_t k = 0; k < half; ++k) {
        const float angle = static_cast<float>(positions[i]) * inv[k];
        const double c = std::cos(static_cast<double>(angle)) * rope.attention_factor;
        const double s = std::sin(static_cast<double>(angle)) * rope.attention_factor;
        const int64_t a = rope.interleaved ? 2 * k : k;
        const int64_t b = rope.interleaved ? 2 * k + 1 : k + half;
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x1 * c + x0 * s;
      }
    }
  }
  return out;
}

struct RopeCase {
  int64_t n, heads, head_dim;
  int rotary_dim;
  bool interleaved;
  float theta;
  float attention_factor = 1.0f;
};

void PrintTo(const RopeCase& c, std::ostream* os) {
  *os << "[" << c.n << ", " << c.heads << ", " << c.head_dim << "], rotary_dim " << c.rotary_dim
      << (c.interleaved ? ", interleaved" : "") << ", theta " << c.theta << ", attention factor "
      << c.attention_factor;
}

class RopeOpTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeOpTest, MatchesReference) {
  const RopeCase c = GetParam();
  auto backend = CreateCpuBackend();
  RopeConfig rope;
  rope.theta = c.theta;
  rope.rotary_dim = c.rotary_dim;
  rope.interleaved = c.interleaved;
  rope.attention_factor = c.attention_factor;
  std::vector<int32_t> positions;
  // Large positions make the angle's float rounding visible: computing it in double fails.
  const int32_t some[] = {0, 1, 2, 7, 31, 500, 4097, 100003};
  for (int64_t i = 0; i < c.n; ++i) positions.push_back(some[i % 8] + static_cast<int32_t>(i / 8));
  Tensor x = RandomTensor({c.n, c.heads, c.head_dim}, 7);
  const std::vector<float> before = ToVector(x);
  backend->Rope(x, positions, rope);
  EXPECT_TRUE(
      AllClose(x, ReferenceRope(before, c.n, c.heads, c.head_dim, positions, rope), 2e-6, 1e-5));
  // Features past rotary_dim are untouched, bit for bit.
  for (int64_t r = 0; r < c.n * c.heads; ++r) {
    for (int64_t d = c.rotary_dim; d < c.head_dim; ++d) {
      ASSERT_EQ(x.data<float>()[r * c.head_dim + d], before[r * c.head_dim + d]) << r << " " << d;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeOpTest,
    ::testing::Values(RopeCase{1, 1, 8, 8, false, 10000.0f},
                      RopeCase{1, 4, 64, 64, false, 10000.0f},
                      RopeCase{8, 3, 64, 64, true, 10000.0f},
                      RopeCase{5, 2, 16, 8, false, 10000.0f},  // partial rotary
                      RopeCase{5, 2, 16, 8, true, 10000.0f},   // partial, interleaved
                      RopeCase{4, 2, 80, 32, false, 1000000.0f},
                      RopeCase{64, 8, 128, 128, false, 500000.0f},  // parallel path
                      // GLM-4: half of a 128-wide head, interleaved pairs.
                      RopeCase{9, 4, 128, 64, true, 10000.0f},
                      // Long-rope's attention factor: whole heads (Phi-3), and partial ones, where
                      // the tail must stay unscaled.
                      RopeCase{6, 3, 96, 96, false, 10000.0f, 1.1902381f},
                      RopeCase{5, 2, 16, 8, true, 10000.0f, 1.25f},
                      RopeCase{5, 2, 24, 16, false, 10000.0f, 0.8f}));

TEST(RopeOpTest, CachedFrequenciesFollowTheConfig) {
  // One backend alternating between two configs (as Gemma-style local / global layers do) must
  // give what a fresh backend gives for each.
  auto shared = CreateCpuBackend();
  RopeConfig a;
  a.theta = 10000.0f;
  a.rotary_dim = 32;
  RopeConfig b = a;
  b.theta = 1000000.0f;
  RopeConfig c = a;
  c.scaling = RopeConfig::Scaling::kLinear;
  c.factor = 2.0f;
  RopeConfig d = c;  // differs from c in the factor alone
  d.factor = 4.0f;
  RopeConfig e = a;  // long-rope short and long factors, and an attention factor
  e.scaling = RopeConfig::Scaling::kLongRope;
  e.freq_factors.assign(16, 1.0f);
  e.freq_factors[3] = 1.5f;
  RopeConfig f = e;
  f.freq_factors[3] = 3.0f;
  RopeConfig g = f;
  g.attention_factor = 1.2f;
  const std::vector<int32_t> positions = {3, 1000};
  for (int round = 0; round < 2; ++round) {
    for (const RopeConfig* rope : {&a, &b, &c, &d, &e, &f, &g}) {
      Tensor x = RandomTensor({2, 2, 32}, 11);
      Tensor y = RandomTensor({2, 2, 32}, 11);
      shared->Rope(x, positions, *rope);
      CreateCpuBackend()->Rope(y, positions, *rope);
      EXPECT_EQ(ToVector(x), ToVector(y))
          << "round " << round << " theta " << rope->theta << " factor " << rope->factor;
    }
  }
}

TEST(RopeOpTest, RejectsBadShapes) {
  auto backend = CreateCpuBackend();
  RopeConfig rope;
  rope.rotary_dim = 32;
  Tensor x = RandomTensor({2, 2, 16}, 1);  // rotary_dim > head_dim
  const std::vector<int32_t> positions = {0, 1};
  EXPECT_THROW(backend->Rope(x, positions, rope), std::invalid_argument);
  rope.rotary_dim = 16;
  const std::vector<int32_t> one = {0};
  EXPECT_THROW(backend->Rope(x, one, rope), std::invalid_argument);
}

}  // namespace
}  // namespace shardlm
