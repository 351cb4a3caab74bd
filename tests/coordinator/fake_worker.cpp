#include "tests/coordinator/fake_worker.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"

namespace shardlm::coordinator::testing {

FakeWorker::FakeWorker(const std::string& address, FakeWorkerOptions options)
    : address_(address), options_(std::move(options)) {
  thread_ = std::thread([this] { Run(); });
}

FakeWorker::~FakeWorker() {
  Kill();
  if (thread_.joinable()) thread_.join();
}

int32_t FakeWorker::NextToken(const std::vector<int32_t>& sequence, int32_t vocab) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the ids
  for (int32_t t : sequence) {
    h ^= static_cast<uint32_t>(t);
    h *= 1099511628211ull;
  }
  return static_cast<int32_t>((h >> 17) % static_cast<uint64_t>(vocab));
}

std::vector<int32_t> FakeWorker::Reference(std::vector<int32_t> prompt, int n, int32_t vocab) {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(NextToken(prompt, vocab));
    prompt.push_back(out.back());
  }
  return out;
}

void FakeWorker::Kill() { context_.TryCancel(); }

grpc::Status FakeWorker::Join() {
  if (thread_.joinable()) thread_.join();
  return status_;
}

worker::v1::LoadCommand FakeWorker::load() const {
  std::lock_guard<std::mutex> lock(mu_);
  return load_;
}

std::string FakeWorker::abort_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return abort_reason_;
}

int FakeWorker::seqs_seen() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(seen_.size());
}

std::vector<std::string> FakeWorker::errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return errors_;
}

void FakeWorker::Error(std::string message) {
  std::lock_guard<std::mutex> lock(mu_);
  errors_.push_back(std::move(message));
}

void FakeWorker::Run() {
  auto channel = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  auto stub = worker::v1::WorkerControl::NewStub(channel);
  auto stream = stub->Attach(&context_);
  worker::v1::WorkerMessage hello;
  hello.mutable_hello()->set_world_size(options_.world_size);
  hello.mutable_hello()->set_hostname("fake");
  hello.mutable_hello()->set_pid(1234);
  hello.mutable_hello()->set_secret(options_.secret);
  // Silent: the reads below wait until the coordinator ends the stream.
  if (options_.send_hello) stream->Write(hello);
  worker::v1::CoordinatorMessage in;
  while (stream->Read(&in)) {
    if (in.has_load()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        load_ = in.load();
        kv_.assign(static_cast<size_t>(options_.kv_blocks * load_.kv_block_size()), -1);
      }
      worker::v1::WorkerMessage reply;
      reply.mutable_loaded()->set_ok(options_.load_error.empty());
      reply.mutable_loaded()->set_error(options_.load_error);
      reply.mutable_loaded()->set_kv_blocks(!options_.load_error.empty() ? 0
                                            : options_.reported_kv_blocks >= 0
                                                ? options_.reported_kv_blocks
                                                : options_.kv_blocks);
      stream->Write(reply);
      if (!options_.load_error.empty()) break;
      loaded_ = true;
    } else if (in.has_step()) {
      if (options_.hang_step != 0 && static_cast<uint64_t>(steps_ + 1) >= options_.hang_step) {
        continue;  // hung: never answers
      }
      if (options_.step_delay.count() > 0) std::this_thread::sleep_for(options_.step_delay);
      worker::v1::WorkerMessage reply;
      *reply.mutable_result() = Step(in.step());
      if (options_.spoil) options_.spoil(in.step(), *reply.mutable_result());
      if (!stream->Write(reply)) break;
    } else if (in.has_abort()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        abort_reason_ = in.abort().reason();
      }
      got_abort_ = true;
    } else if (in.has_shutdown()) {
      got_shutdown_ = true;
      break;
    }
  }
  stream->WritesDone();
  status_ = stream->Finish();
}

worker::v1::StepResult FakeWorker::Step(const worker::v1::StepPlan& delta) {
  const int step = ++steps_;
  max_batch_ = std::max(max_batch_.load(), delta.seqs_size());
  worker::v1::StepResult result;
  result.set_step_id(delta.step_id());
  std::lock_guard<std::mutex> lock(mu_);
  // The coordinator sends deltas: expanded as rank 0 of a real job does (runtime/step_deltas.h).
  absl::StatusOr<worker::v1::StepPlan> expanded = deltas_.Expand(delta);
  if (!expanded.ok()) {
    errors_.push_back(std::string(expanded.status().message()));
    result.set_error(std::string(expanded.status().message()));
    return result;
  }
  const worker::v1::StepPlan& plan = *expanded;
  if (options_.fail_step != 0 && static_cast<uint64_t>(step) == options_.fail_step) {
    result.set_error("fake failure");
    deltas_.Record(plan, result);
    return result;
  }
  result = Check(plan);
  deltas_.Record(plan, result);
  return result;
}

worker::v1::StepResult FakeWorker::Check(const worker::v1::StepPlan& plan) {
  worker::v1::StepResult result;
  result.set_step_id(plan.step_id());
  const int32_t bs = load_.kv_block_size();
  for (uint64_t id : plan.released()) {
    live_.erase(id);
    released_.insert(id);
  }
  // Blocks a sequence writes in this step may be in no other table of the step; blocks that are
  // only read (full blocks shared from the prefix cache) may be in several.
  std::map<int32_t, uint64_t> written;  // block -> the seq writing it
  for (const worker::v1::SeqStep& s : plan.seqs()) {
    for (int i = 0; i < s.tokens_size(); ++i) {
      const int32_t block_index = (s.start_pos() + i) / bs;
      if (block_index < s.block_table_size()) written[s.block_table(block_index)] = s.seq_id();
    }
  }
  for (const worker::v1::SeqStep& s : plan.seqs()) {
    const std::string where = absl::StrCat("step ", plan.step_id(), " seq ", s.seq_id(), ": ");
    if (released_.count(s.seq_id()) > 0) errors_.push_back(where + "released id used again");
    seen_.insert(s.seq_id());
    if (s.tokens().empty()) errors_.push_back(where + "no tokens");
    auto it = live_.find(s.seq_id());
    // A new sequence starts at 0, or past the cached blocks whose tokens it sends in history.
    const int32_t expected_start = it == live_.end() ? s.history_size() : it->second;
    if (s.start_pos() != expected_start) {
      errors_.push_back(absl::StrCat(where, "start_pos ", s.start_pos(), ", expected ",
                                     expected_start));
    }
    if (it != live_.end() && s.history_size() > 0) {
      errors_.push_back(where + "history sent again after the first step");
    }
    if (s.history_size() % bs != 0) {
      errors_.push_back(absl::StrCat(where, "history of ", s.history_size(),
                                     " tokens is not whole blocks of ", bs));
    }
    for (int i = 0; i < s.history_size(); ++i) {
      // The cached blocks must hold exactly the history the coordinator believes they do.
      if (i / bs >= s.block_table_size()) break;
      const int32_t cached = kv_[static_cast<size_t>(s.block_table(i / bs)) * bs + i % bs];
      if (cached != s.history(i)) {
        errors_.push_back(absl::StrCat(where, "position ", i, " holds ", cached,
                                       " in the cache, history says ", s.history(i)));
        break;
      }
    }
    const int32_t end = s.start_pos() + s.tokens_size();
    if (s.block_table_size() != (end + bs - 1) / bs) {
      errors_.push_back(absl::StrCat(where, s.block_table_size(), " blocks for ", end,
                                     " positions of ", bs));
      continue;
    }
    for (int32_t b : s.block_table()) {
      if (b < 0 || b >= options_.kv_blocks) {
        errors_.push_back(absl::StrCat(where, "block ", b, " out of range"));
        return result;
      }
      if (auto w = written.find(b); w != written.end() && w->second != s.seq_id()) {
        errors_.push_back(absl::StrCat(where, "block ", b, " is written by seq ", w->second,
                                       " in the same step"));
      }
    }
    if (s.prompt_len() <= 0) errors_.push_back(absl::StrCat(where, "prompt_len ", s.prompt_len()));
    for (int i = 0; i < s.tokens_size(); ++i) {
      const int32_t pos = s.start_pos() + i;
      kv_[static_cast<size_t>(s.block_table(pos / bs)) * bs + pos % bs] = s.tokens(i);
    }
    live_[s.seq_id()] = end;
    if (!s.sample()) continue;
    std::vector<int32_t> sequence(static_cast<size_t>(end));
    for (int32_t pos = 0; pos < end; ++pos) {
      sequence[pos] = kv_[static_cast<size_t>(s.block_table(pos / bs)) * bs + pos % bs];
    }
    worker::v1::SeqResult* r = result.add_results();
    r->set_seq_id(s.seq_id());
    r->set_token(NextToken(sequence, options_.vocab));
    if (s.logprobs() > 0) {
      r->mutable_logprobs()->mutable_chosen()->set_id(r->token());
      r->mutable_logprobs()->mutable_chosen()->set_logprob(options_.logprob);
      for (int i = 0; i < s.logprobs(); ++i) {
        v1::TokenLogprob* top = r->mutable_logprobs()->add_top();
        top->set_id((r->token() + i) % options_.vocab);
        top->set_logprob(options_.logprob - static_cast<float>(i));
      }
    }
  }
  return result;
}

}  // namespace shardlm::coordinator::testing
