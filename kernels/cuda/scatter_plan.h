// The host half of the CUDA backend's ScatterAddRows (dst[rows[i], :] += weights[i] * src[i, :],
// rows may repeat): the source rows grouped by destination row, so that the kernel runs one
// thread block per distinct destination row and each thread adds that row's sources into its
// column in source order. No two blocks write one row (no atomics), and every element sees the
// same sequence of adds as the CPU backend's loop over i: the result is the CPU's, bit for bit,
// and the same on every run. Plain C++ (no CUDA), so that it is tested without a device.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <vector>

namespace shardlm::cuda {

// One int32 array for one upload, in four parts (g groups, m sources):
//   [0, g)                 the destination row of each group, ascending;
//   [g, 2g + 1)            offsets: group j's sources are entries [begin[j], begin[j + 1]) below;
//   [2g + 1, 2g + 1 + m)   source row indices i, ascending within a group;
//   [2g + 1 + m, .. + 2m)  the weight of each of those sources, as float bits.
struct ScatterAddRowsPlan {
  int64_t groups = 0;
  std::vector<int32_t> packed;
};

// The caller has checked rows.size() == weights.size() (CheckScatterAddRows).
inline ScatterAddRowsPlan PlanScatterAddRows(std::span<const int32_t> rows,
                                             std::span<const float> weights) {
  const size_t m = rows.size();
  std::vector<int32_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  // Stable: the sources of one destination keep their order (the CPU's order of adds). Already
  // sorted in the usual case (an expert's tokens in token order).
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return rows[a] < rows[b]; });
  std::vector<int32_t> dst_rows, begins;
  for (size_t p = 0; p < m; ++p) {
    if (p == 0 || rows[order[p]] != rows[order[p - 1]]) {
      dst_rows.push_back(rows[order[p]]);
      begins.push_back(static_cast<int32_t>(p));
    }
  }
  begins.push_back(static_cast<int32_t>(m));
  ScatterAddRowsPlan plan;
  plan.groups = static_cast<int64_t>(dst_rows.size());
  plan.packed.reserve(dst_rows.size() + begins.size() + 2 * m);
  plan.packed.insert(plan.packed.end(), dst_rows.begin(), dst_rows.end());
  plan.packed.insert(plan.packed.end(), begins.begin(), begins.end());
  plan.packed.insert(plan.packed.end(), order.begin(), order.end());
  for (const int32_t i : order) {
    int32_t bits = 0;
    std::memcpy(&bits, &weights[static_cast<size_t>(i)], sizeof(bits));
    plan.packed.push_back(bits);
  }
  return plan;
}

}  // namespace shardlm::cuda
