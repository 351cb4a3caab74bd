// Turns one request's sampled tokens into its streamed output: incremental detokenization (whole
// UTF-8 characters only), stop strings, stop token ids, end-of-generation tokens and the length
// limits decide when it finishes. Logprobs get the text of each id. One per request; used by the
// engine thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/model_context.h"
#include "coordinator/stop_matcher.h"
#include "coordinator/validation.h"
#include "shardlm/v1/generation.pb.h"

namespace shardlm::coordinator {

class OutputProcessor {
 public:
  // `model` must outlive it.
  OutputProcessor(const ModelContext& model, const PreparedRequest& request);

  // Appends `token` (its id, text delta and, when asked, its logprobs) to *out. Returns the
  // finish reason when this token ends the request (then pending text is flushed into *out),
  // else FINISH_REASON_UNSPECIFIED. Stop and end-of-generation ids are in token_ids but add no
  // text; a stop string and what follows it are cut from the text.
  // Logprobs are made finite, whatever the worker sent: below kLogprobFloor (base/logprob.h;
  // -inf included) they become the floor, above 0 they become 0; a NaN or +inf one fails the
  // request: then nothing is
  // appended, the result is FINISH_REASON_ERROR and error() says why. At most the requested
  // number of alternatives is kept.
  v1::FinishReason Add(int32_t token, const v1::Logprobs* logprobs, v1::GenerateResponse* out);

  int32_t completion_tokens() const { return completion_tokens_; }
  v1::FinishReason finish_reason() const { return finish_; }
  // Why Add returned FINISH_REASON_ERROR (INTERNAL); OK otherwise.
  const absl::Status& error() const { return error_; }

 private:
  // *lp (what the worker sent for `token`, or just its id) with texts, floored and checked.
  absl::Status AddLogprobs(int32_t token, const v1::Logprobs* logprobs, v1::Logprobs* lp) const;
  // Runs `text` through the stop matcher into *out; true on a stop string.
  bool EmitText(std::string_view text, v1::GenerateResponse* out);

  const ModelContext& model_;
  int32_t prompt_len_;
  int32_t max_new_tokens_;
  std::vector<int32_t> stop_token_ids_;
  bool ignore_eos_;
  int32_t logprobs_;
  std::optional<Tokenizer::StreamDecoder> decoder_;  // none without a tokenizer
  StopMatcher stop_;
  int32_t completion_tokens_ = 0;
  v1::FinishReason finish_ = v1::FINISH_REASON_UNSPECIFIED;
  absl::Status error_;
};

}  // namespace shardlm::coordinator
