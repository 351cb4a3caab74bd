#include "coordinator/step_deadline.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardlm::coordinator {

StepSize StepSize::Of(const worker::v1::StepPlan& plan) {
  StepSize size;
  for (const worker::v1::SeqStep& s : plan.seqs()) {
    const int64_t n = s.sampled_input() ? 1 : s.tokens_size();  // the workers' own sample
    const int64_t start = s.start_pos();
    ++size.seqs;
    size.tokens += n;
    size.attended += n * start + n * (n + 1) / 2;
  }
  return size;
}

std::string StepSize::ToString() const {
  return absl::StrCat(seqs, " seqs, ", tokens, " tokens, ", attended, " attended positions");
}

int StepDeadline::Bucket(int64_t tokens) {
  int b = 0;
  while (tokens > 1 && b + 1 < kBuckets) {
    tokens >>= 1;
    ++b;
  }
  return b;
}

void StepDeadline::Observe(const StepSize& size, double ms) {
  if (size.tokens <= 0 || !std::isfinite(ms) || ms < 0) return;
  std::optional<Sample>& slot = slowest_[Bucket(size.tokens)];
  if (!slot || ms > slot->ms) slot = Sample{size, ms};
}

StepDeadline::Deadline StepDeadline::For(const StepSize& size) const {
  using std::chrono::milliseconds;
  if (options_.fixed.count() > 0) {
    return {options_.fixed,
            absl::StrFormat("fixed by --step-timeout %.3g s", options_.fixed.count() / 1000.0)};
  }
  const std::string floor_text =
      absl::StrFormat("the floor of %.3g s", options_.floor.count() / 1000.0);
  // Its own bucket when measured, else the nearest measured one (smaller first: scaling up from
  // a smaller step overestimates, which is the safe side).
  const int own = Bucket(std::max<int64_t>(size.tokens, 1));
  const Sample* ref = nullptr;
  for (int d = 0; d < kBuckets && ref == nullptr; ++d) {
    for (int b : {own - d, own + d}) {
      if (b >= 0 && b < kBuckets && slowest_[b]) {
        ref = &*slowest_[b];
        break;
      }
    }
  }
  if (ref == nullptr) return {options_.floor, absl::StrCat(floor_text, " (no step measured yet)")};
  const double scale =
      std::max({1.0, static_cast<double>(size.tokens) / std::max<int64_t>(ref->size.tokens, 1),
                static_cast<double>(size.attended) / std::max<int64_t>(ref->size.attended, 1)});
  const double estimate_ms = ref->ms * scale;
  const double scaled_ms = options_.multiplier * estimate_ms;
  const std::string derived = absl::StrFormat(
      "%g x %.1f ms: the slowest step of %d-%d tokens seen took %.1f ms (%s), scaled by %.2f",
      options_.multiplier, estimate_ms, int64_t{1} << Bucket(ref->size.tokens),
      (int64_t{2} << Bucket(ref->size.tokens)) - 1, ref->ms, ref->size.ToString(), scale);
  // Clamped so that the conversion cannot overflow; a day is beyond any step.
  const double capped_ms = std::min(scaled_ms, 86400e3);
  if (capped_ms <= static_cast<double>(options_.floor.count())) {
    return {options_.floor, absl::StrCat(floor_text, ", above ", derived)};
  }
  return {milliseconds(static_cast<int64_t>(std::ceil(capped_ms))), derived};
}

}  // namespace shardlm::coordinator
