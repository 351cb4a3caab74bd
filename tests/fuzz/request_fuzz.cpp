// libFuzzer harness: arbitrary bytes parsed as a shardlm.v1.GenerateRequest (the protobuf wire
// format, as gRPC hands it to the service), then validated (PrepareGenerateRequest) against
// SmolLM2's real model context: tokenizer, chat template and a context length of 2048.
// Invariants of an accepted request: a non-empty prompt of ids inside the vocabulary that fits
// the context with max_new_tokens, limits in range, finite sampling values. Of a refused one:
// INVALID_ARGUMENT or FAILED_PRECONDITION, and a message of bounded size (values are quoted
// shortened, base/quote.h).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "coordinator/model_context.h"
#include "coordinator/validation.h"
#include "google/protobuf/stubs/logging.h"
#include "shardlm/v1/generation.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace shardlm::fuzz {
namespace {

constexpr int64_t kContextLength = 2048;
constexpr size_t kMaxErrorBytes = 512;

std::unique_ptr<coordinator::ModelContext>& Model() {
  static std::unique_ptr<coordinator::ModelContext> model;
  return model;
}

bool FiniteIfSet(bool has, float value) { return !has || std::isfinite(value); }

void CheckAccepted(const v1::GenerateRequest& request, const coordinator::PreparedRequest& p,
                   const coordinator::ModelContext& model) {
  SHARDLM_FUZZ_CHECK(!p.prompt.empty(), "accepted an empty prompt");
  for (int32_t id : p.prompt) {
    SHARDLM_FUZZ_CHECK(id >= 0 && id < model.config.vocab_size, "prompt id %d, vocabulary %lld", id,
                       static_cast<long long>(model.config.vocab_size));
  }
  SHARDLM_FUZZ_CHECK(p.max_new_tokens > 0, "max_new_tokens %d", p.max_new_tokens);
  SHARDLM_FUZZ_CHECK(static_cast<int64_t>(p.prompt.size()) + p.max_new_tokens <= kContextLength,
                     "%zu prompt + %d new tokens exceed the context %lld", p.prompt.size(),
                     p.max_new_tokens, static_cast<long long>(kContextLength));
  SHARDLM_FUZZ_CHECK(p.logprobs >= 0 && p.logprobs <= coordinator::kMaxLogprobs, "logprobs %d",
                     p.logprobs);
  for (int32_t id : p.stop_token_ids) {
    SHARDLM_FUZZ_CHECK(id >= 0 && id < model.config.vocab_size, "stop token id %d", id);
  }
  for (const std::string& stop : p.stop) SHARDLM_FUZZ_CHECK(!stop.empty(), "an empty stop");
  const v1::SamplingParams& s = p.sampling;
  SHARDLM_FUZZ_CHECK(FiniteIfSet(s.has_temperature(), s.temperature()) &&
                         FiniteIfSet(s.has_top_p(), s.top_p()) &&
                         FiniteIfSet(s.has_min_p(), s.min_p()) &&
                         FiniteIfSet(s.has_repetition_penalty(), s.repetition_penalty()) &&
                         FiniteIfSet(s.has_presence_penalty(), s.presence_penalty()) &&
                         FiniteIfSet(s.has_frequency_penalty(), s.frequency_penalty()),
                     "accepted a non-finite sampling value: %s", s.ShortDebugString().c_str());
  SHARDLM_FUZZ_CHECK(p.request_id == request.request_id(), "request id changed");
}

}  // namespace
}  // namespace shardlm::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace shardlm;
  // Invalid UTF-8 in a string field fails the parse, and protobuf logs each one: not news.
  google::protobuf::SetLogHandler(nullptr);
  const std::string path = fuzz::ModelPathOrSkip();
  absl::StatusOr<std::unique_ptr<coordinator::ModelContext>> model =
      coordinator::LoadModelContext(path, fuzz::kContextLength);
  if (!model.ok()) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), std::string(model.status().message()).c_str());
    std::exit(1);
  }
  fuzz::Model() = std::move(*model);
  if (fuzz::Model()->tokenizer == nullptr || !fuzz::Model()->default_chat_template.ok()) {
    std::fprintf(stderr, "%s: no tokenizer or chat template\n", path.c_str());
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const coordinator::ModelContext& model = *fuzz::Model();
  absl::StatusOr<coordinator::PreparedRequest> prepared =
      coordinator::PrepareGenerateRequest(request, model);
  if (prepared.ok()) {
    fuzz::CheckAccepted(request, *prepared, model);
    return 0;
  }
  const absl::Status& status = prepared.status();
  SHARDLM_FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument ||
                         status.code() == absl::StatusCode::kFailedPrecondition,
                     "code %d: %s", static_cast<int>(status.code()),
                     std::string(status.message()).c_str());
  SHARDLM_FUZZ_CHECK(status.message().size() <= fuzz::kMaxErrorBytes,
                     "a %zu-byte error message: %.200s...", status.message().size(),
                     std::string(status.message()).c_str());
  return 0;
}
