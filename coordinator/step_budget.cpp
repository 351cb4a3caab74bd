#include "coordinator/step_budget.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace shardlm::coordinator {

void StepBudget::Observe(const StepSize& size, double ms) {
  if (size.tokens <= 0 || !std::isfinite(ms) || ms < 0) return;
  const int bucket = std::min(
      kBuckets - 1, static_cast<int>(std::bit_width(static_cast<uint64_t>(size.tokens))) - 1);
  Point& p = points_[bucket];
  const double n = static_cast<double>(size.tokens);
  if (p.steps == 0) {
    p.tokens = n;
    p.ms = ms;
  } else {
    p.tokens += kAlpha * (n - p.tokens);
    p.ms += kAlpha * (ms - p.ms);
  }
  ++p.steps;
  ++steps_;
}

std::optional<StepBudget::Fit> StepBudget::CostModel() const {
  if (steps_ < options_.min_steps) return std::nullopt;
  int points = 0;
  double sx = 0, sy = 0, min_x = 0, max_x = 0;
  for (const Point& p : points_) {
    if (p.steps == 0) continue;
    min_x = points == 0 ? p.tokens : std::min(min_x, p.tokens);
    max_x = std::max(max_x, p.tokens);
    sx += p.tokens;
    sy += p.ms;
    ++points;
  }
  // A slope needs steps of clearly different sizes.
  if (points < 2 || max_x < 2 * min_x) return std::nullopt;
  const double mx = sx / points, my = sy / points;
  double sxx = 0, sxy = 0;
  for (const Point& p : points_) {
    if (p.steps == 0) continue;
    sxx += (p.tokens - mx) * (p.tokens - mx);
    sxy += (p.tokens - mx) * (p.ms - my);
  }
  const double slope = sxy / sxx;
  // Noise can make small steps look slower than large ones: no usable model then.
  if (!(slope > 0) || !std::isfinite(slope)) return std::nullopt;
  return Fit{std::max(0.0, my - slope * mx), slope};
}

int64_t StepBudget::PrefillBudget(int64_t decodes, int64_t batch) const {
  if (decodes <= 0 || (options_.ratio <= 0 && options_.max_step_ms <= 0)) return kUnlimited;
  const std::optional<Fit> fit = CostModel();
  if (!fit) return std::max<int64_t>(1, options_.cold_chunk);
  auto step_ms = [&](int64_t tokens) {
    return fit->overhead_ms + fit->per_token_ms * static_cast<double>(tokens);
  };
  const double decode_only_ms = step_ms(decodes);
  double limit_ms = std::numeric_limits<double>::infinity();
  if (options_.ratio > 0) {
    limit_ms = std::min(limit_ms, options_.ratio * step_ms(std::max(decodes, batch)));
  }
  if (options_.max_step_ms > 0) limit_ms = std::min(limit_ms, options_.max_step_ms);
  const double tokens = std::floor((limit_ms - decode_only_ms) / fit->per_token_ms);
  // Clamped before the conversion: a 2^30-token step is beyond any budget anyway.
  return static_cast<int64_t>(std::clamp(tokens, 1.0, 1073741824.0));
}

void StepBudget::Reset() {
  points_.fill(Point{});
  steps_ = 0;
}

}  // namespace shardlm::coordinator
