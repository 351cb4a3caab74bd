// The collectives that the model, the runtime and the worker build from a Communicator: every
// rank agreeing on a status, pipeline hand-over of hidden states between stages, and framed byte
// messages between two ranks. The MPI tags of every point-to-point message are named here, once.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "base/tensor.h"
#include "kernels/backend.h"
#include "parallel/communicator.h"
#include "parallel/layers.h"

namespace shardlm {

// Every tag a point-to-point message of shardlm uses, on the world communicator.
enum class MpiTag : int {
  kActivations = 0,   // a stage's hidden states to the next stage
  kFrameSize = 7,     // the size of a framed message (SendFrame / RecvFrame)
  kFrameBytes = 8,    // its bytes
};

// Collective over `world`: OK on every rank when every rank's `status` is OK. A failing rank gets
// its own status back; the others get Aborted naming the first failing rank. Call it where ranks
// may fail independently (loading, set-up), so that none is left waiting in a later collective.
absl::Status AgreeOnStatus(Communicator& world, const absl::Status& status);

// Pipeline hand-over of x [n, hidden] (f32, backend memory) to the same TP rank of the next
// stage, and its receipt from the previous one: over the device communicator when there is one,
// else through host memory over `world`.
absl::Status SendToNextStage(Backend& backend, const ParallelContext& ctx, const Tensor& x);
absl::Status RecvFromPreviousStage(Backend& backend, const ParallelContext& ctx, Tensor& x);

// A byte string from one rank to another: its size, then its bytes.
absl::Status SendFrame(Communicator& comm, const std::string& bytes, int peer);
absl::Status RecvFrame(Communicator& comm, std::string& bytes, int peer);

}  // namespace shardlm
