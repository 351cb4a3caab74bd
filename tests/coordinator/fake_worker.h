// A stand-in for an mpirun worker job in the coordinator's tests: it attaches over gRPC like
// rank 0 of shardlm-worker and answers step plans with a toy "model". The toy keeps a simulated
// paged KV store: each step's tokens are written into the blocks its tables name, and a sampled
// token is a hash of the whole sequence read back through the table. A wrong block table, a
// block written by one sequence while another holds it, a stale prefix-cache hit or a bad
// recomputation therefore changes the output, which the tests compare with Reference(). It can
// also fail a step, or hang (stay connected and never answer, recording the Abort it is sent).
// Protocol invariants (positions continue; a new sequence starts at 0 or at the end of its
// history, whose tokens its cached blocks must hold; tables cover exactly [0, start_pos + n); no
// block written by one sequence of a step is in another's table; released ids never come back)
// are checked and collected in errors().
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/options.h"
#include "runtime/step_deltas.h"
#include "shardlm/v1/worker.grpc.pb.h"

namespace shardlm::coordinator::testing {

// The secret the service tests give the coordinator (CoordinatorOptions::worker_secret) and
// fake workers present by default.
inline constexpr char kFakeWorkerSecret[] = "fake-worker-secret-0123456789";

// Coordinator options for an in-process server that fake jobs attach to: both servers on free
// loopback ports, the fake jobs' secret, the "tiny" model with 4-token KV blocks.
inline CoordinatorOptions FakeJobCoordinatorOptions() {
  CoordinatorOptions o;
  o.listen = "127.0.0.1:0";
  o.worker_listen = "127.0.0.1:0";
  o.worker_secret = kFakeWorkerSecret;
  o.model = "tiny";
  o.kv_block_size = 4;
  o.kv_cache_bytes = 1 << 20;
  return o;
}

struct FakeWorkerOptions {
  int32_t world_size = 1;
  std::string secret = kFakeWorkerSecret;  // WorkerHello.secret
  bool send_hello = true;                  // false: open the stream and stay silent
  int64_t kv_blocks = 64;
  // >= 0: Loaded.kv_blocks says this instead of kv_blocks (the toy store keeps kv_blocks).
  int64_t reported_kv_blocks = -1;
  // Called on every StepResult before it is sent: a broken (or hostile) job.
  std::function<void(const worker::v1::StepPlan&, worker::v1::StepResult&)> spoil;
  std::string load_error;  // non-empty: answer Loaded{ok = false, error}
  std::chrono::milliseconds step_delay{0};
  uint64_t fail_step = 0;  // answer this step (by count, from 1) with StepResult.error
  // Never answer this step (by count, from 1) nor any later one, but stay connected and keep
  // reading: a hung job. An Abort is recorded and otherwise ignored (as a job too wedged to act
  // on it), so that the coordinator has to cut the stream.
  uint64_t hang_step = 0;
  int32_t vocab = 256;
  // The logprob reported for every sampled token (alternatives: this minus their rank).
  float logprob = -0.5f;
};

class FakeWorker {
 public:
  FakeWorker(const std::string& address, FakeWorkerOptions options);
  ~FakeWorker();  // Kill() and join

  // The toy model: the token after `sequence`.
  static int32_t NextToken(const std::vector<int32_t>& sequence, int32_t vocab = 256);
  // What a request generates alone: n tokens after `prompt`.
  static std::vector<int32_t> Reference(std::vector<int32_t> prompt, int n, int32_t vocab = 256);

  // The job dies: its stream is cut as when the process is killed.
  void Kill();
  // Waits for the attach stream to end; its final status.
  grpc::Status Join();

  bool loaded() const { return loaded_; }
  bool got_shutdown() const { return got_shutdown_; }
  bool got_abort() const { return got_abort_; }
  std::string abort_reason() const;
  int steps() const { return steps_; }
  worker::v1::LoadCommand load() const;
  std::vector<std::string> errors() const;
  // The largest number of sequences one step carried.
  int max_batch() const { return max_batch_; }
  // Distinct seq ids seen: more than the requests means some were preempted and recomputed.
  int seqs_seen() const;

 private:
  void Run();
  // A delta plan from the coordinator: expanded, then checked and answered by Check.
  worker::v1::StepResult Step(const worker::v1::StepPlan& delta);
  worker::v1::StepResult Check(const worker::v1::StepPlan& plan);  // mu_ held
  void Error(std::string message);

  const std::string address_;
  const FakeWorkerOptions options_;
  grpc::ClientContext context_;
  std::thread thread_;
  grpc::Status status_;
  std::atomic<bool> loaded_{false}, got_shutdown_{false}, got_abort_{false};
  std::atomic<int> steps_{0}, max_batch_{0};

  mutable std::mutex mu_;
  worker::v1::LoadCommand load_;
  std::string abort_reason_;
  std::vector<std::string> errors_;
  // Toy KV store: token ids by cache row (block * block_size + offset).
  std::vector<int32_t> kv_;
  std::unordered_map<uint64_t, int32_t> live_;  // seq_id -> positions written so far
  std::set<uint64_t> released_;
  std::set<uint64_t> seen_;
  StepDeltas deltas_;
};

}  // namespace shardlm::coordinator::testing
