#include "worker/pipeline.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "base/check.h"
#include "base/status_macros.h"
#include "parallel/collectives.h"
#include "parallel/mpi_communicator.h"
#include "spdlog/spdlog.h"

namespace shardlm {
namespace {

using worker::v1::CoordinatorMessage;
using worker::v1::StepPlan;
using worker::v1::StepResult;
using worker::v1::WorkerMessage;

// Ends the job: a rank that failed mid-step leaves its peers waiting in a transfer it left.
[[noreturn]] void Fail(int rank, const std::string& what) {
  spdlog::error("rank {}: {}; aborting the job (with pipeline stages a failed step cannot be "
                "recovered; the coordinator recomputes its requests on the next job)",
                rank, what);
  static_cast<void>(MPI_Abort(MPI_COMM_WORLD, 1));
  std::_Exit(1);
}

// True when a frame (SendFrame) from `peer` waits to be received.
bool FrameWaiting(MPI_Comm comm, int peer) {
  int flag = 0;
  MPI_Iprobe(peer, static_cast<int>(MpiTag::kFrameSize), comm, &flag, MPI_STATUS_IGNORE);
  return flag != 0;
}

// Grows a sleeping poll's pause from 20 us to `cap`.
class Backoff {
 public:
  explicit Backoff(std::chrono::microseconds cap) : cap_(cap) {}
  std::chrono::microseconds Next() {
    const auto now = pause_;
    pause_ = std::min(pause_ * 2, cap_);
    return now;
  }
  void Reset() { pause_ = std::chrono::microseconds(20); }

 private:
  std::chrono::microseconds cap_;
  std::chrono::microseconds pause_{20};
};

// The last stage's root: results go to rank 0 without waiting for it to take them. A blocking
// send of a result larger than MPI's eager limit (logprobs of many sequences) would wait for
// rank 0's receive while rank 0 waits in its own send of the next plan or activations down the
// pipeline: a cycle of blocking sends. Each result stays here until its send completes.
class ResultSender {
 public:
  ResultSender(MPI_Comm comm, int rank) : comm_(comm), rank_(rank) {}
  ~ResultSender() { Drain(); }

  void Send(std::string bytes) {
    Reap();
    Pending& p = pending_.emplace_back();
    p.size = bytes.size();
    p.bytes = std::move(bytes);
    if (MPI_Isend(&p.size, sizeof(p.size), MPI_BYTE, 0, static_cast<int>(MpiTag::kFrameSize),
                  comm_, &p.requests[0]) != MPI_SUCCESS ||
        MPI_Isend(p.bytes.data(), static_cast<int>(p.bytes.size()), MPI_BYTE, 0,
                  static_cast<int>(MpiTag::kFrameBytes), comm_, &p.requests[1]) != MPI_SUCCESS) {
      Fail(rank_, "MPI_Isend of a step result to rank 0 failed");
    }
  }
  // Waits for every send (rank 0 takes every result before it shuts the pipeline down).
  void Drain() {
    for (Pending& p : pending_) MPI_Waitall(2, p.requests, MPI_STATUSES_IGNORE);
    pending_.clear();
  }

 private:
  struct Pending {
    uint64_t size = 0;
    std::string bytes;
    MPI_Request requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  };
  // Drops the sends that completed, oldest first.
  void Reap() {
    while (!pending_.empty()) {
      int done = 0;
      MPI_Testall(2, pending_.front().requests, &done, MPI_STATUSES_IGNORE);
      if (!done) return;
      pending_.pop_front();
    }
  }

  const MPI_Comm comm_;
  const int rank_;
  std::deque<Pending> pending_;  // a deque: the buffers of earlier sends never move
};

// Rank 0: the coordinator's next command, expanded, while it relays the results that come back.
class Rank0 {
 public:
  Rank0(Communicator& world, MPI_Comm comm, int last_root, CoordinatorStream& stream,
        StepDeltas& deltas)
      : world_(world), comm_(comm), last_root_(last_root), stream_(stream), deltas_(deltas) {}

  void Sent(StepPlan expanded) { in_flight_.push_back({std::move(expanded), std::nullopt}); }

  // The next work item: a step (expanded) or a shutdown (also for the end of the stream), after
  // every result in flight was relayed.
  CoordinatorMessage Next() {
    Backoff backoff(std::chrono::microseconds(500));
    while (true) {
      bool progress = Collect();
      if (!held_ && !ended_) {
        bool ended = false;
        // Wait on the stream only when no result can come (nothing in flight).
        const auto wait = in_flight_.empty() ? std::chrono::microseconds(2000)
                                             : std::chrono::microseconds(0);
        held_ = stream_.NextFor(wait, &ended);
        ended_ = ended;
        progress = progress || held_.has_value();
      }
      if (ended_ || (held_ && !held_->has_step())) {
        if (ended_ || held_->has_shutdown()) {
          if (in_flight_.empty()) {
            if (held_ && held_->has_shutdown()) spdlog::info("rank 0: shutdown requested");
            CoordinatorMessage stop;
            stop.mutable_shutdown();
            return stop;
          }
        } else {
          spdlog::warn("rank 0: unexpected command (kind {}) while serving: ignored",
                       static_cast<int>(held_->kind_case()));
          held_.reset();
          continue;
        }
      } else if (held_ && deltas_.Ready(held_->step())) {
        absl::StatusOr<StepPlan> expanded = deltas_.Expand(held_->step());
        const uint64_t step_id = held_->step().step_id();
        held_.reset();
        if (expanded.ok()) {
          CoordinatorMessage out;
          *out.mutable_step() = std::move(*expanded);
          return out;
        }
        // Refused before any rank saw it: no rank runs it, and its answer goes out after those
        // of the steps before it.
        spdlog::error("step {} refused: {}", step_id, std::string(expanded.status().message()));
        StepResult refused;
        refused.set_step_id(step_id);
        refused.set_error(std::string(expanded.status().message()));
        in_flight_.push_back({StepPlan(), std::move(refused)});
        continue;
      }
      if (progress) {
        backoff.Reset();
      } else if (!in_flight_.empty()) {
        std::this_thread::sleep_for(backoff.Next());
      }
    }
  }

 private:
  // Relays every result already back, in order. True when there was one.
  bool Collect() {
    bool any = false;
    while (!in_flight_.empty()) {
      if (in_flight_.front().answer) {  // a refused step
        WorkerMessage reply;
        *reply.mutable_result() = std::move(*in_flight_.front().answer);
        in_flight_.pop_front();
        if (!stream_.Write(reply)) spdlog::warn("the coordinator stream closed while relaying");
        any = true;
        continue;
      }
      if (!FrameWaiting(comm_, last_root_)) break;
      std::string bytes;
      if (absl::Status st = RecvFrame(world_, bytes, last_root_); !st.ok()) {
        Fail(0, std::string(st.message()));
      }
      StepResult result;
      if (!result.ParseFromString(bytes)) Fail(0, "a bad StepResult from the last stage");
      const StepPlan& oldest = in_flight_.front().plan;
      if (result.step_id() != oldest.step_id()) {
        Fail(0, "the last stage answered step " + std::to_string(result.step_id()) +
                    " while step " + std::to_string(oldest.step_id()) + " was the oldest in flight");
      }
      deltas_.Record(oldest, result);
      in_flight_.pop_front();
      if (!result.error().empty()) {
        spdlog::error("step {} failed: {}; its requests end with the error, serving goes on",
                      result.step_id(), result.error());
      }
      WorkerMessage reply;
      *reply.mutable_result() = std::move(result);
      if (!stream_.Write(reply)) spdlog::warn("the coordinator stream closed while relaying");
      any = true;
    }
    return any;
  }

  Communicator& world_;
  const MPI_Comm comm_;
  const int last_root_;
  CoordinatorStream& stream_;
  StepDeltas& deltas_;
  struct Pending {
    StepPlan plan;                     // expanded, sent down the pipeline
    std::optional<StepResult> answer;  // set for a step refused here (never sent)
  };
  std::deque<Pending> in_flight_;  // in the coordinator's order, not answered yet
  std::optional<CoordinatorMessage> held_;  // taken from the stream, not started yet
  bool ended_ = false;
};

// Stage > 0: the next work item from the previous stage (a sleeping poll: the job may sit idle).
CoordinatorMessage FromPreviousStage(Communicator& world, MPI_Comm comm, int prev, int rank) {
  Backoff backoff(std::chrono::microseconds(1000));
  while (!FrameWaiting(comm, prev)) std::this_thread::sleep_for(backoff.Next());
  std::string bytes;
  if (absl::Status st = RecvFrame(world, bytes, prev); !st.ok()) Fail(rank, std::string(st.message()));
  CoordinatorMessage msg;
  if (!msg.ParseFromString(bytes)) Fail(rank, "a bad work item from the previous stage");
  return msg;
}

}  // namespace

absl::Status BroadcastBytes(MPI_Comm comm, int rank, std::string& bytes) {
  uint64_t size = bytes.size();
  auto wait = [&](void* data, int count) -> absl::Status {
    MPI_Request req;
    SHARDLM_MPI_RETURN_ON(MPI_Ibcast(data, count, MPI_BYTE, 0, comm, &req),
                          " (the command broadcast)");
    Backoff backoff(std::chrono::microseconds(2000));
    int done = 0;
    while (true) {
      SHARDLM_MPI_RETURN_ON(MPI_Test(&req, &done, MPI_STATUS_IGNORE), " (the command broadcast)");
      if (done) return absl::OkStatus();
      std::this_thread::sleep_for(backoff.Next());
    }
  };
  SHARDLM_RETURN_IF_ERROR(wait(&size, sizeof(size)));
  if (rank != 0) bytes.resize(size);
  if (size > 0) SHARDLM_RETURN_IF_ERROR(wait(bytes.data(), static_cast<int>(size)));
  return absl::OkStatus();
}

int ServePipelined(WorkerEngine& engine, MPI_Comm world_comm, CoordinatorStream* stream,
                   StepDeltas* deltas, StepPlan first) {
  const ParallelContext& par = engine.model().parallel();
  Communicator& world = *par.world;
  const int rank = par.shard.rank;
  const int tp = par.plan.tp;
  const bool first_stage = par.shard.first_stage;
  const bool last_stage = par.shard.last_stage;
  const int last_root = engine.model().LastStageRoot();
  std::optional<Rank0> rank0;
  if (rank == 0) rank0.emplace(world, world_comm, last_root, *stream, *deltas);
  std::optional<ResultSender> results;
  if (rank == last_root) results.emplace(world_comm, rank);
  MPI_Comm stage_comm = MPI_COMM_NULL;
  if (first_stage && tp > 1) {
    auto* mpi = dynamic_cast<MpiCommunicator*>(par.tp.get());
    if (mpi == nullptr) Fail(rank, "stage 0's TP communicator is not an MPI one");
    stage_comm = mpi->comm();
  }

  CoordinatorMessage item;
  *item.mutable_step() = std::move(first);
  bool have = true;
  while (true) {
    if (!have) {
      if (first_stage) {
        std::string bytes;
        if (rank == 0) bytes = rank0->Next().SerializeAsString();
        if (tp > 1) {
          if (absl::Status st = BroadcastBytes(stage_comm, par.shard.tp_rank, bytes); !st.ok()) {
            Fail(rank, std::string(st.message()));
          }
        }
        if (!item.ParseFromString(bytes)) Fail(rank, "a bad work item from rank 0");
      } else {
        item = FromPreviousStage(world, world_comm, rank - tp, rank);
      }
    }
    // The first step reached every rank by the job's broadcast: it is not sent on.
    const bool forward = !have && !last_stage;
    have = false;
    if (forward) {
      if (absl::Status st = SendFrame(world, item.SerializeAsString(), rank + tp); !st.ok()) {
        Fail(rank, std::string(st.message()));
      }
    }
    if (item.has_shutdown()) {
      if (results) results->Drain();
      return 0;
    }
    if (!item.has_step()) Fail(rank, "a work item that is neither a step nor a shutdown");
    if (rank == 0) rank0->Sent(item.step());
    absl::StatusOr<StepResult> result = engine.StageStep(item.step());
    if (!result.ok()) {
      Fail(rank, "step " + std::to_string(item.step().step_id()) + " failed: " +
                     std::string(result.status().message()));
    }
    if (results) results->Send(result->SerializeAsString());
  }
}

}  // namespace shardlm
