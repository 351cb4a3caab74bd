// The worker's sampler against the definitions: penalties, greedy, top-k, top-p, min-p, the
// seeded draw and logprobs.
#include "runtime/sampler.h"

#include "base/logprob.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <vector>

namespace shardlm {
namespace {

TEST(SamplerTest, GreedyTakesTheFirstMaximum) {
  std::vector<float> logits = {1, 5, 5, 2};
  SamplerParams p;
  p.temperature = 0;
  EXPECT_EQ(Sample(logits, p, {}, 0).token, 1);
  p.temperature = 0.7f;
  p.top_k = 1;  // top-k 1 is greedy too
  logits = {1, 5, 5, 2};
  EXPECT_EQ(Sample(logits, p, {}, 0).token, 1);
}

TEST(SamplerTest, PenaltiesFollowHfAndOpenAi) {
  TokenHistory h;
  h.seen = {0, 1};
  h.generated = {{1, 3}};
  SamplerParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  std::vector<float> logits = {4, -1, 3};
  Sample(logits, p, h, 0);
  EXPECT_FLOAT_EQ(logits[0], 2.0f);   // positive: divided
  EXPECT_FLOAT_EQ(logits[1], -2.0f);  // negative: multiplied
  EXPECT_FLOAT_EQ(logits[2], 3.0f);   // unseen: unchanged
  p.repetition_penalty = 1.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  logits = {4, -1, 3};
  Sample(logits, p, h, 0);
  EXPECT_FLOAT_EQ(logits[0], 4.0f);                   // seen in the prompt only
  EXPECT_FLOAT_EQ(logits[1], -1.0f - 0.5f - 0.75f);  // generated 3 times
}

TEST(SamplerTest, DrawsFollowTheFilteredSoftmax) {
  // Logits of 4 tokens; temperature 1; top-p 0.9 drops the last one (p = 0.0321...).
  const std::vector<float> base = {2.0f, 1.0f, 0.5f, -1.0f};
  double z = 0;
  for (float l : base) z += std::exp(l);
  SamplerParams p;
  p.seed = 7;
  p.top_p = 0.9f;
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int pos = 0; pos < n; ++pos) {
    std::vector<float> logits = base;
    ++counts[Sample(logits, p, {}, pos).token];
  }
  EXPECT_EQ(counts.count(3), 0u);
  const double kept = (std::exp(2.0) + std::exp(1.0) + std::exp(0.5)) / z;
  for (int t = 0; t < 3; ++t) {
    const double want = std::exp(base[t]) / z / kept;
    EXPECT_NEAR(counts[t] / double(n), want, 0.015) << t;
  }
  // min-p 0.5 keeps only tokens with p >= 0.5 * p_max: exp(1)/exp(2) = 0.37 < 0.5 -> token 0.
  p.top_p = 1.0f;
  p.min_p = 0.5f;
  for (int pos = 0; pos < 50; ++pos) {
    std::vector<float> logits = base;
    EXPECT_EQ(Sample(logits, p, {}, pos).token, 0);
  }
  // top-k 2 never draws tokens 2 and 3.
  p.min_p = 0.0f;
  p.top_k = 2;
  for (int pos = 0; pos < 200; ++pos) {
    std::vector<float> logits = base;
    EXPECT_LT(Sample(logits, p, {}, pos).token, 2);
  }
}

TEST(SamplerTest, TheDrawDependsOnSeedAndPositionOnly) {
  EXPECT_EQ(UniformAt(1, 5), UniformAt(1, 5));
  EXPECT_NE(UniformAt(1, 5), UniformAt(1, 6));
  EXPECT_NE(UniformAt(1, 5), UniformAt(2, 5));
  for (int i = 0; i < 1000; ++i) {
    const double u = UniformAt(123, i);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(SamplerTest, LogprobsAreLogSoftmax) {
  std::vector<float> logits = {0.0f, std::log(3.0f)};
  SamplerParams p;
  p.temperature = 0;
  p.logprobs = 2;
  const Sampled s = Sample(logits, p, {}, 0);
  EXPECT_EQ(s.token, 1);
  EXPECT_NEAR(s.logprob, std::log(0.75), 1e-6);
  ASSERT_EQ(s.top.size(), 2u);
  EXPECT_EQ(s.top[0].first, 1);
  EXPECT_NEAR(s.top[1].second, std::log(0.25), 1e-6);
}

// A token of probability 0 reports the floor, not -inf; penalties that would push a huge finite
// logit past the float range leave it finite, so no logprob turns NaN.
TEST(SamplerTest, LogprobsStayFiniteAtTheExtremes) {
  const float inf = std::numeric_limits<float>::infinity();
  const float big = std::numeric_limits<float>::max();
  std::vector<float> masked = {2.0f, -inf, 1.0f, -inf};
  SamplerParams p;
  p.temperature = 1;
  p.logprobs = 4;
  Sampled s = Sample(masked, p, {}, 0);
  EXPECT_TRUE(s.token == 0 || s.token == 2);
  ASSERT_EQ(s.top.size(), 4u);
  EXPECT_EQ(s.top[2].second, kLogprobFloor);
  EXPECT_EQ(s.top[3].second, kLogprobFloor);

  // Far apart: log-probabilities below -FLT_MAX, which a float cannot hold.
  std::vector<float> apart = {big, -big};
  p.temperature = 0;
  s = Sample(apart, p, {}, 0);
  EXPECT_EQ(s.token, 0);
  EXPECT_EQ(s.logprob, 0.0f);
  EXPECT_EQ(s.top[1].second, kLogprobFloor);

  // repetition_penalty 0.01 multiplies a positive logit by 100, 100 multiplies a negative one.
  TokenHistory h;
  h.seen = {0, 1};
  h.generated = {{0, 1000000}};
  for (float penalty : {0.01f, 100.0f}) {
    std::vector<float> huge = {big / 2, -big / 2, 0.0f};
    p.repetition_penalty = penalty;
    p.frequency_penalty = -2;
    p.logprobs = 3;
    s = Sample(huge, p, h, 0);
    EXPECT_TRUE(std::isfinite(s.logprob)) << penalty;
    for (const auto& [id, logprob] : s.top) {
      EXPECT_TRUE(std::isfinite(logprob)) << penalty << " id " << id;
      EXPECT_GE(logprob, kLogprobFloor);
      EXPECT_LE(logprob, 0.0f);
    }
  }
}

}  // namespace
}  // namespace shardlm
