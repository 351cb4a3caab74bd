// Extreme but valid sampling parameters give finite numbers all the way to the client: each set
// passes the coordinator's validation, drives the worker's real sampler (runtime/sampler) on
// ordinary and huge logits, and its logprobs go through the coordinator's output processor
// into a GenerateResponse, as the worker (runtime/engine.cpp) and the engine pass them on.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "base/logprob.h"
#include "coordinator/output_processor.h"
#include "coordinator/validation.h"
#include "gtest/gtest.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator {
namespace {

// The logits rows: a model's usual range, and the float range's ends.
std::vector<std::vector<float>> Rows(int32_t vocab) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 8.0f);
  std::vector<float> usual(static_cast<size_t>(vocab));
  for (float& l : usual) l = normal(rng);
  const float big = std::numeric_limits<float>::max();
  std::vector<float> huge(static_cast<size_t>(vocab), 0.0f);
  for (int32_t i = 0; i < vocab; ++i) {
    const float sign = i % 2 == 0 ? 1.0f : -1.0f;
    huge[static_cast<size_t>(i)] = sign * (i % 3 == 0 ? big : big / static_cast<float>(1 + i));
  }
  std::vector<float> flat(static_cast<size_t>(vocab), 1.0f);
  return {usual, huge, flat};
}

TEST(FiniteLogprobsTest, ExtremeValidParametersGiveFiniteResponses) {
  auto model = testing::TinyModel();
  const int32_t vocab = static_cast<int32_t>(model->config.vocab_size);
  // Penalties count every id as seen, and generated often (a long generation).
  TokenHistory history;
  for (int32_t id = 0; id < vocab; ++id) {
    history.seen.insert(id);
    if (id % 2 == 0) history.generated[id] = 100000;
  }
  const float tiny = std::numeric_limits<float>::denorm_min();
  int checked = 0;
  for (const float temperature : {0.0f, tiny, 1e-3f, 1.0f, kMaxTemperature}) {
    for (const int32_t top_k : {0, 1, 5}) {
      for (const float top_p : {1e-6f, 1.0f}) {
        for (const float min_p : {0.0f, 1.0f}) {
          for (const float repetition : {kMinRepetitionPenalty, 1.0f, kMaxRepetitionPenalty}) {
            for (const float penalty : {-kMaxAbsPenalty, kMaxAbsPenalty}) {
              v1::SamplingParams sampling;
              sampling.set_temperature(temperature);
              sampling.set_top_k(top_k);
              sampling.set_top_p(top_p);
              sampling.set_min_p(min_p);
              sampling.set_repetition_penalty(repetition);
              sampling.set_presence_penalty(penalty);
              sampling.set_frequency_penalty(-penalty);
              sampling.set_seed(11);
              ASSERT_TRUE(ValidateSamplingParams(sampling).ok())
                  << ValidateSamplingParams(sampling) << sampling.ShortDebugString();
              const SamplerParams params = SamplerParamsFrom(sampling, kMaxLogprobs, 0);
              PreparedRequest request;
              request.prompt = {1, 2, 3};
              request.max_new_tokens = 100;
              request.logprobs = kMaxLogprobs;
              request.sampling = sampling;
              OutputProcessor output(*model, request);
              int64_t position = 3;
              for (std::vector<float> row : Rows(vocab)) {
                const Sampled s = Sample(row, params, history, position++);
                // As runtime/engine.cpp answers it.
                v1::Logprobs sent;
                sent.mutable_chosen()->set_id(s.token);
                sent.mutable_chosen()->set_logprob(s.logprob);
                for (const auto& [id, logprob] : s.top) {
                  v1::TokenLogprob* t = sent.add_top();
                  t->set_id(id);
                  t->set_logprob(logprob);
                }
                v1::GenerateResponse response;
                ASSERT_NE(output.Add(s.token, &sent, &response), v1::FINISH_REASON_ERROR)
                    << output.error() << " " << sampling.ShortDebugString();
                ASSERT_EQ(response.logprobs_size(), 1);
                const v1::Logprobs& lp = response.logprobs(0);
                ASSERT_EQ(lp.top_size(), kMaxLogprobs);
                std::vector<float> values = {lp.chosen().logprob()};
                for (const v1::TokenLogprob& t : lp.top()) values.push_back(t.logprob());
                for (float v : values) {
                  ASSERT_TRUE(std::isfinite(v)) << v << " " << sampling.ShortDebugString();
                  ASSERT_GE(v, kLogprobFloor);
                  ASSERT_LE(v, 1e-6f);
                }
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 5 * 3 * 2 * 2 * 3 * 2 * 3);
}

}  // namespace
}  // namespace shardlm::coordinator
