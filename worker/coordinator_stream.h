// Rank 0's attach stream to the coordinator (WorkerControl.Attach), serviced on a thread of its
// own. gRPC's synchronous client moves bytes on a connection only while some thread waits in a
// call on it; the coordinator pings every 2 s and drops a connection that does not answer within
// 2 s. So a reader thread always sits in Read(): it keeps the connection polled (pings answered,
// this side's own keepalives sent) while the main thread computes a step of any length or waits
// in a collective, and it hands the commands to the main thread through a queue. The main thread
// writes the results (a sync stream allows one reader and one writer at the same time).
//
// The reader also acts on what cannot wait for the main thread:
//   - CoordinatorMessage.abort: it logs the reason and ends the whole job at once (AbortJob);
//   - the stream ends while the main thread is busy (in a step, a load, a collective) and it is
//     still busy `lost_grace` later (it has not come back to Next to see the end): nobody will
//     read its result, and a rank may be stuck, so it ends the job too. When the main thread is
//     idle (waiting in Next) an ended stream is simply the end of the commands, and the job
//     leaves the normal way.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "shardlm/v1/worker.grpc.pb.h"

namespace shardlm {

class CoordinatorStream {
 public:
  // Ends the whole job at once (the worker: MPI_Abort); called on the reader thread and expected
  // not to return. If it does (tests), the reader stops as if the stream had ended.
  using AbortJob = std::function<void(const std::string& why)>;

  struct Options {
    std::string address;  // HOST:PORT
    std::chrono::milliseconds connect_timeout{60000};
    // How long the main thread may stay busy after the stream ended before the job is aborted.
    std::chrono::milliseconds lost_grace{10000};
    // This side's keepalive pings, so that a coordinator host that vanished (no FIN, no RST) is
    // noticed: a ping every `keepalive_time`, the connection dropped after `keepalive_timeout`
    // without an answer. (The coordinator permits client pings at >= 1 s.)
    std::chrono::milliseconds keepalive_time{10000};
    std::chrono::milliseconds keepalive_timeout{10000};
  };

  // Dials `options.address`, opens Attach, writes `hello` and starts the reader thread.
  // Unavailable when the coordinator cannot be reached within the connect timeout or the stream
  // breaks before the hello is written.
  static absl::StatusOr<std::unique_ptr<CoordinatorStream>> Open(
      const Options& options, const worker::v1::WorkerMessage& hello, AbortJob abort_job);

  ~CoordinatorStream();  // Close()s a stream that is still open
  CoordinatorStream(const CoordinatorStream&) = delete;
  CoordinatorStream& operator=(const CoordinatorStream&) = delete;

  // Main thread. The next command; nullopt once the stream has ended (after the commands that
  // came before the end). The main thread is idle while it waits in here with no command left,
  // and busy otherwise (until Close).
  std::optional<worker::v1::CoordinatorMessage> Next();
  // Main thread, pipelined serving: like Next, but waits at most `wait`. nullopt with *ended
  // false: no command yet; with *ended true: the stream has ended (the end is taken, as by
  // Next). The main thread counts as busy while it polls.
  std::optional<worker::v1::CoordinatorMessage> NextFor(std::chrono::microseconds wait,
                                                        bool* ended);
  // Main thread. False when the stream is broken.
  bool Write(const worker::v1::WorkerMessage& message);
  // Main thread, at the end: half-closes the stream, gives the coordinator up to `wait` to end
  // it (it does after our WritesDone), cancels it otherwise, and returns its final status.
  grpc::Status Close(std::chrono::milliseconds wait = std::chrono::milliseconds(5000));

 private:
  CoordinatorStream(const Options& options, AbortJob abort_job);
  void ReadLoop();
  // After the stream ended: aborts the job when the main thread has not taken the end (in Next)
  // within lost_grace.
  void WatchBusyAfterEnd();
  // With mu_ held, after a wait that saw a command or the end: the next command, or nullopt
  // with *ended (the end is taken).
  std::optional<worker::v1::CoordinatorMessage> TakeLocked(bool* ended);

  const Options options_;
  const AbortJob abort_job_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<worker::v1::WorkerControl::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<
      grpc::ClientReaderWriter<worker::v1::WorkerMessage, worker::v1::CoordinatorMessage>>
      stream_;
  std::thread reader_;
  std::optional<grpc::Status> final_status_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<worker::v1::CoordinatorMessage> queue_;  // guarded by mu_
  bool ended_ = false;      // the reader saw the end of the stream (guarded by mu_)
  bool end_taken_ = false;  // Next returned the end to the main thread (guarded by mu_)
  bool waiting_ = false;    // the main thread waits in Next (guarded by mu_)
  bool closing_ = false;    // Close() began: the end is expected (guarded by mu_)
};

}  // namespace shardlm
