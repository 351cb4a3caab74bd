// CUDA graphs for decode steps: a step whose sequences each bring one token is padded to the
// next of a few batch sizes, its index arrays are written into fixed device buffers, and a graph
// recorded at the first such step of that size replays the whole forward pass (every layer's
// kernels, GEMMs and NCCL all-reduces) in one launch. Prefill and mixed steps run as usual.
//
// Padding rows are token 0 at position 0 of a sequence whose table is all `pad_block`: a cache
// block that the scheduler never hands out, so their K/V writes land where nobody reads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama.h"

namespace shardlm {

class DecodeGraphs {
 public:
  // batch_sizes: the padded sizes to record (ascending after sorting); max_blocks: the most KV
  // blocks a sequence's table may have in a recorded step.
  DecodeGraphs(LlamaModel& model, PagedKvCache& cache, std::vector<int> batch_sizes,
               int max_blocks, int32_t pad_block);

  // Whether graphs can run here at all: a backend that records them and a device-resident
  // forward pass (one pipeline stage; TP through a device communicator).
  bool enabled() const { return enabled_; }
  // Whether `batch` is a decode step that a graph runs: every sequence one token with its logits
  // wanted, at most the largest batch size, tables of at most max_blocks blocks.
  bool Accepts(const BatchInput& batch) const;
  // Runs the step (checked like ForwardBatch): logits [sequences, vocab_local] on the last stage
  // (a view of the graph's output buffer, valid until the next Run), else an empty tensor. The
  // first step of a size runs eagerly and records its graph for the next ones.
  absl::StatusOr<Tensor> Run(const BatchInput& batch);

  int graphs() const { return static_cast<int>(graphs_.size()); }

 private:
  struct Graph {
    HostStepIndices layout;   // the padded arrays' sizes (values change each step)
    Tensor indices;           // device copy of layout.Packed(), rewritten each step
    StepWorkspace workspace;  // the step's activations: the first rows of workspace_
    Tensor logits;            // [size, vocab_local] written by the graph: workspace.logits
    std::unique_ptr<BackendGraph> graph;
  };
  // The padded host arrays of `batch` for `size` rows.
  HostStepIndices Pad(const HostStepIndices& host, const BatchInput& batch, int size) const;

  LlamaModel& model_;
  PagedKvCache& cache_;
  std::vector<int> sizes_;
  int max_blocks_;
  int32_t pad_block_;
  bool enabled_ = false;
  std::map<int, Graph> graphs_;
  // Activations for the largest size, allocated before the first capture; every graph runs in
  // its first rows (graphs replay one after another on one stream, never at once).
  StepWorkspace workspace_;
};

}  // namespace shardlm
