// Sampling on the device: temperature, top-k, top-p, min-p and one seeded draw per row of
// logits, choosing the token that the CPU sampler (shardlm::Sample in worker/sampler.h, no
// penalties) chooses. Plain pointers and sizes only (C++17, no C++20 / absl headers), like
// cuda_kernels.h.
//
// Stream-ordered: LaunchSample enqueues one kernel on `stream`, allocates nothing and never
// synchronizes with the host, so it can be captured in a CUDA graph. It throws
// std::invalid_argument on bad sizes and shardlm::CheckFailure (base/check.h) on a failed launch.
//
// Agreement with the CPU: the choice is the same except where the draw (or the top-p cut) falls
// within 2e-9 (relative; about 1e-14 in practice) of a boundary of the cumulative probabilities:
// the device sums the probabilities in 64-bit fixed point, in parallel (deterministic, whatever
// the order), where the CPU sums doubles in order.
// Greedy rows (temperature 0, or top_k 1) are the CPU's argmax exactly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace shardlm::cuda {

// The largest vocabulary (row length) LaunchSample takes.
constexpr int64_t kSampleMaxVocab = int64_t{1} << 20;

// One row's sampling parameters, as in shardlm::SamplerParams. temperature 0 (or top_k 1):
// greedy; a negative or NaN temperature is greedy too (the CPU sampler has no meaning for it).
// top_k <= 0 or >= vocab: off. top_p >= 1 (or NaN): off. min_p <= 0 (or NaN): off. uniform:
// the draw in [0, 1), shardlm::UniformAt(seed, position).
struct SampleRowParams {
  float temperature;
  int32_t top_k;
  float top_p;
  float min_p;
  double uniform;
};

// Workspace bytes LaunchSample needs for `rows` rows of `vocab` (0 for the present kernel, which
// works in shared memory; pass what this returns).
size_t SampleWorkspaceBytes(int64_t rows, int64_t vocab);

// out[r] = the token sampled from logits row r. Device pointers: logits [rows, vocab] f32,
// params [rows], out [rows], workspace of at least SampleWorkspaceBytes(rows, vocab) bytes
// (may be null when that is 0). 1 <= vocab <= kSampleMaxVocab; rows 0 enqueues nothing.
// Logits of -inf are never drawn (unless the whole row is -inf); NaN logits rank below -inf.
void LaunchSample(const float* logits, int64_t rows, int64_t vocab,
                  const SampleRowParams* params, int32_t* out, void* workspace,
                  size_t workspace_bytes, cudaStream_t stream);

}  // namespace shardlm::cuda
