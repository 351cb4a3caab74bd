#include <cmath>
#include <numbers>

#include "base/rope.h"

namespace shardlm {

RopeFrequencyKey FrequencyKey(const RopeConfig& rope) {
  return {rope.theta,           rope.rotary_dim,       rope.scaling,
          rope.factor,          rope.low_freq_factor,  rope.high_freq_factor,
          rope.original_max_position, rope.freq_factors};
}

std::vector<float> RopeInverseFrequencies(const RopeConfig& rope) {
  const int pairs = rope.rotary_dim / 2;
  std::vector<float> inv(pairs);
  for (int i = 0; i < pairs; ++i) {
    double f = 1.0 / std::pow(static_cast<double>(rope.theta),
                              2.0 * i / static_cast<double>(rope.rotary_dim));
    switch (rope.scaling) {
      case RopeConfig::Scaling::kNone:
        break;
      case RopeConfig::Scaling::kLinear:
        f /= rope.factor;
        break;
      case RopeConfig::Scaling::kLongRope:
        // The config reader checked there is one factor per pair.
        f /= static_cast<double>(rope.freq_factors.at(static_cast<size_t>(i)));
        break;
      case RopeConfig::Scaling::kLlama3: {
        // As in Meta's Llama 3.1 reference: long wavelengths are slowed by `factor`, short ones
        // kept, and the band between is interpolated smoothly.
        const double old_ctx = rope.original_max_position;
        const double low_wavelen = old_ctx / rope.low_freq_factor;
        const double high_wavelen = old_ctx / rope.high_freq_factor;
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f /= rope.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (old_ctx / wavelen - rope.low_freq_factor) /
                                (rope.high_freq_factor - rope.low_freq_factor);
          f = (1.0 - smooth) * f / rope.factor + smooth * f;
        }
        break;
      }
    }
    inv[i] = static_cast<float>(f);
  }
  return inv;
}

}  // namespace shardlm
