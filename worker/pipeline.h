// Pipelined serving (pp > 1): every stage works on a different step at once.
//
// The coordinator keeps several steps in flight, each of a different micro-batch of sequences
// (coordinator/scheduler.h). Without this loop, every rank would take each step together (a
// broadcast over the whole job, then the step agreement), so stage 0 would sit idle while the
// later stages ran. Here each step's plan travels down the pipeline with its activations:
//   - rank 0 takes the coordinator's next delta plan, expands it (runtime/step_deltas.h: it waits
//     for the result of an earlier step when the plan runs a token that step samples), gives it
//     to the other TP ranks of stage 0 (a broadcast over the stage), and every rank of a stage
//     sends it on to the rank with its TP rank in the next stage before running its layers;
//   - a stage runs the steps in the order they come (WorkerEngine::StageStep), so the KV blocks
//     a later step reuses were written by the earlier one first;
//   - the last stage's root sends each result to rank 0, which collects them while it computes
//     (MPI_Iprobe between its own steps) and relays them to the coordinator in order.
// Shutdown (or the end of the coordinator stream) travels down the pipeline the same way, after
// rank 0 has collected the results still in flight.
//
// Failures: with stages, a rank that fails mid-step leaves the others waiting for its
// activations, so any failure ends the whole job (MPI_Abort after logging it); the coordinator
// sees the job go, and recomputes its requests on the next job that attaches (--requeue-timeout).
#pragma once

#include <mpi.h>

#include <string>

#include "absl/status/status.h"

#include "runtime/engine.h"
#include "runtime/step_deltas.h"
#include "shardlm/v1/worker.pb.h"
#include "worker/coordinator_stream.h"

namespace shardlm {

// Broadcast of one serialized message from `comm`'s rank 0. The other ranks wait with a
// sleeping poll (MPI_Ibcast + MPI_Test) rather than a busy MPI_Bcast: between steps the job may
// sit idle for a long time and must not burn the cores the coordinator and the ranks' compute
// need. `rank` is this rank in `comm`.
absl::Status BroadcastBytes(MPI_Comm comm, int rank, std::string& bytes);

// Every rank of a job with pp > 1, once its first step (`first`, already expanded, the same on
// every rank) has been broadcast. `stream` and `deltas` are rank 0's (null elsewhere). Returns
// the exit code of this rank (0 after a shutdown or the end of the stream).
int ServePipelined(WorkerEngine& engine, MPI_Comm world, CoordinatorStream* stream,
                   StepDeltas* deltas, worker::v1::StepPlan first);

}  // namespace shardlm
