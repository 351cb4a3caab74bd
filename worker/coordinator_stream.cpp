#include "worker/coordinator_stream.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace shardlm {

using worker::v1::CoordinatorMessage;
using worker::v1::WorkerMessage;

CoordinatorStream::CoordinatorStream(const Options& options, AbortJob abort_job)
    : options_(options), abort_job_(std::move(abort_job)) {}

absl::StatusOr<std::unique_ptr<CoordinatorStream>> CoordinatorStream::Open(
    const Options& options, const WorkerMessage& hello, AbortJob abort_job) {
  std::unique_ptr<CoordinatorStream> s(new CoordinatorStream(options, std::move(abort_job)));
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Keep pinging while no data flows (a long step): by default gRPC stops after two pings.
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  s->channel_ =
      grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args);
  if (!s->channel_->WaitForConnected(std::chrono::system_clock::now() + options.connect_timeout)) {
    return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", options.address,
                                               " within ", options.connect_timeout.count() / 1000.0,
                                               " s"));
  }
  s->stub_ = worker::v1::WorkerControl::NewStub(s->channel_);
  s->stream_ = s->stub_->Attach(&s->context_);
  if (!s->stream_->Write(hello)) {
    const grpc::Status st = s->stream_->Finish();
    s->final_status_ = st;
    return absl::UnavailableError(absl::StrCat("the attach stream to ", options.address,
                                               " broke before the hello: ", st.error_message()));
  }
  s->reader_ = std::thread([p = s.get()] { p->ReadLoop(); });
  return s;
}

CoordinatorStream::~CoordinatorStream() {
  if (reader_.joinable()) Close(std::chrono::milliseconds(1000));
}

void CoordinatorStream::ReadLoop() {
  CoordinatorMessage message;
  bool aborted = false;
  while (stream_->Read(&message)) {
    if (message.has_abort()) {
      // Now, not after the step the main thread may be stuck in: that step may never end.
      spdlog::error("the coordinator aborts the job: {}", message.abort().reason());
      abort_job_(message.abort().reason());
      aborted = true;  // (only when abort_job_ returned)
      break;
    }
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(message));
    message.Clear();
    cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    cv_.notify_all();
  }
  if (!aborted) WatchBusyAfterEnd();
}

void CoordinatorStream::WatchBusyAfterEnd() {
  // A main thread waiting in Next with no command left is idle: the end is all it will get. Not
  // having come there after the grace means that it is still busy with a step (or a load).
  std::unique_lock<std::mutex> lock(mu_);
  const bool idle = cv_.wait_for(lock, options_.lost_grace, [&] {
    return closing_ || end_taken_ || (waiting_ && queue_.empty());
  });
  if (idle) return;
  lock.unlock();
  const std::string why = absl::StrCat(
      "the coordinator stream ended while this job was busy in a step, and it is still busy ",
      options_.lost_grace.count() / 1000.0,
      " s later: ending the job so that no rank is left behind");
  spdlog::error("{}", why);
  abort_job_(why);
}

std::optional<CoordinatorMessage> CoordinatorStream::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  waiting_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return !queue_.empty() || ended_; });
  waiting_ = false;
  bool ended = false;
  return TakeLocked(&ended);
}

std::optional<CoordinatorMessage> CoordinatorStream::TakeLocked(bool* ended) {
  *ended = queue_.empty();
  if (*ended) {
    end_taken_ = true;
    cv_.notify_all();
    return std::nullopt;
  }
  CoordinatorMessage message = std::move(queue_.front());
  queue_.pop_front();
  return message;
}

std::optional<CoordinatorMessage> CoordinatorStream::NextFor(std::chrono::microseconds wait,
                                                            bool* ended) {
  std::unique_lock<std::mutex> lock(mu_);
  *ended = false;
  if (!cv_.wait_for(lock, wait, [&] { return !queue_.empty() || ended_; })) return std::nullopt;
  return TakeLocked(ended);
}

bool CoordinatorStream::Write(const WorkerMessage& message) { return stream_->Write(message); }

grpc::Status CoordinatorStream::Close(std::chrono::milliseconds wait) {
  if (final_status_) return *final_status_;
  stream_->WritesDone();
  bool ended = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    closing_ = true;
    cv_.notify_all();
    ended = cv_.wait_for(lock, wait, [&] { return ended_; });
  }
  if (!ended) context_.TryCancel();  // unblocks the reader's Read
  reader_.join();
  final_status_ = stream_->Finish();
  return *final_status_;
}

}  // namespace shardlm
