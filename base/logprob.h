// The finite floor of every logprob shardlm reports (TokenLogprob.logprob in
// proto/shardlm/v1/generation.proto). A token of probability 0 (a -inf logit, or one so far below
// the others that its log-probability overflows a float) has logprob -inf, which JSON cannot carry
// and clients mishandle; it is reported as kLogprobFloor instead (the value vLLM uses). Both the
// worker's sampler and the coordinator apply it: the coordinator does not trust the worker.
#pragma once

namespace shardlm {

inline constexpr float kLogprobFloor = -9999.0f;

// `logprob` as reported: at least kLogprobFloor (-inf included), as a float. NaN stays NaN: it
// means broken logits, an error for the request, which the caller reports.
inline float FlooredLogprob(double logprob) {
  return logprob < kLogprobFloor ? kLogprobFloor : static_cast<float>(logprob);
}

}  // namespace shardlm
