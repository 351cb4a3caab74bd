#include "coordinator/output_processor.h"

#include <algorithm>

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

void OutputProcessor::AddLogprobs(int32_t token, const v1::Logprobs* logprobs,
                                  v1::GenerateResponse* out) const {
  v1::Logprobs* lp = out->add_logprobs();  // one per id, even when the worker sent none
  if (logprobs != nullptr) *lp = *logprobs;
  if (!lp->has_chosen()) lp->mutable_chosen()->set_id(token);
  lp->mutable_chosen()->set_text(model_.TokenText(lp->chosen().id()));
  for (v1::TokenLogprob& top : *lp->mutable_top()) top.set_text(model_.TokenText(top.id()));
}

bool OutputProcessor::EmitText(std::string_view text, v1::GenerateResponse* out) {
  StopMatcher::Result r = stop_.Push(text);
  out->mutable_text()->append(r.text);
  return r.matched;
}

v1::FinishReason OutputProcessor::Add(int32_t token, const v1::Logprobs* logprobs,
                                      v1::GenerateResponse* out) {
  if (finish_ != v1::FINISH_REASON_UNSPECIFIED) return finish_;  // nothing after the end
  ++completion_tokens_;
  out->add_token_ids(token);
  if (logprobs_ > 0) AddLogprobs(token, logprobs, out);

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
