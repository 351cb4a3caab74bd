#include "coordinator/output_processor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/logprob.h"
#include "base/status_macros.h"

namespace shardlm::coordinator {

OutputProcessor::OutputProcessor(const ModelContext& model, const PreparedRequest& request)
    : model_(model),
      prompt_len_(static_cast<int32_t>(request.prompt.size())),
      max_new_tokens_(request.max_new_tokens),
      stop_token_ids_(request.stop_token_ids),
      ignore_eos_(request.ignore_eos),
      logprobs_(request.logprobs),
      stop_(request.stop) {
  // Generated tokens continue the prompt's text: every piece is kept as it is (no leading space
  // dropped), special tokens are not rendered.
  if (model.tokenizer != nullptr) {
    decoder_.emplace(model.tokenizer->NewStream(/*skip_special=*/true, /*text_start=*/false));
  }
}

absl::Status OutputProcessor::AddLogprobs(int32_t token, const v1::Logprobs* logprobs,
                                          v1::Logprobs* lp) const {
  if (logprobs != nullptr) *lp = *logprobs;
  if (!lp->has_chosen()) lp->mutable_chosen()->set_id(token);
  if (lp->top_size() > logprobs_) {
    lp->mutable_top()->DeleteSubrange(logprobs_, lp->top_size() - logprobs_);
  }
  const auto finish = [&](v1::TokenLogprob* t, absl::string_view what) -> absl::Status {
    const float v = t->logprob();
    if (std::isnan(v) || v == std::numeric_limits<float>::infinity()) {
      return absl::InternalError(absl::StrCat("the workers sent logprob ", v, " for ", what,
                                              " (id ", t->id(),
                                              "): the model's numbers are not finite"));
    }
    t->set_logprob(std::min(FlooredLogprob(v), 0.0f));  // a probability is at most 1
    t->set_text(model_.TokenText(t->id()));
    return absl::OkStatus();
  };
  SHARDLM_RETURN_IF_ERROR(finish(lp->mutable_chosen(), "the sampled token"));
  for (v1::TokenLogprob& top : *lp->mutable_top()) {
    SHARDLM_RETURN_IF_ERROR(finish(&top, "an alternative"));
  }
  return absl::OkStatus();
}

bool OutputProcessor::EmitText(std::string_view text, v1::GenerateResponse* out) {
  StopMatcher::Result r = stop_.Push(text);
  out->mutable_text()->append(r.text);
  return r.matched;
}

v1::FinishReason OutputProcessor::Add(int32_t token, const v1::Logprobs* logprobs,
                                      v1::GenerateResponse* out) {
  if (finish_ != v1::FINISH_REASON_UNSPECIFIED) return finish_;  // nothing after the end
  if (logprobs_ > 0) {
    v1::Logprobs lp;  // one per id, even when the worker sent none
    error_ = AddLogprobs(token, logprobs, &lp);
    if (!error_.ok()) {
      finish_ = v1::FINISH_REASON_ERROR;
      return finish_;
    }
    *out->add_logprobs() = std::move(lp);
  }
  ++completion_tokens_;
  out->add_token_ids(token);

  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  bool stop_string = false;
  if (std::find(stop_token_ids_.begin(), stop_token_ids_.end(), token) != stop_token_ids_.end()) {
    finish = v1::FINISH_REASON_STOP;
  } else if (!ignore_eos_ && model_.IsEog(token)) {
    finish = v1::FINISH_REASON_EOS;
  } else if (decoder_) {
    stop_string = EmitText(decoder_->Push(token), out);
    if (stop_string) finish = v1::FINISH_REASON_STOP;
  }
  if (finish == v1::FINISH_REASON_UNSPECIFIED &&
      (completion_tokens_ >= max_new_tokens_ ||
       prompt_len_ + completion_tokens_ >= model_.context_length)) {
    finish = v1::FINISH_REASON_LENGTH;
  }
  if (finish != v1::FINISH_REASON_UNSPECIFIED && !stop_string && decoder_) {
    // The end: incomplete UTF-8 becomes U+FFFD, and text held for a possible stop string is
    // released (unless the flushed text completes one).
    if (EmitText(decoder_->Flush(), out)) {
      finish = v1::FINISH_REASON_STOP;
    } else {
      out->mutable_text()->append(stop_.Flush());
    }
  }
  finish_ = finish;
  return finish;
}

}  // namespace shardlm::coordinator
