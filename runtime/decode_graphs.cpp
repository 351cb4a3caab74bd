#include "runtime/decode_graphs.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace shardlm {
namespace {

// Aborts the backend's capture when it goes out of scope before End made the graph.
class CaptureGuard {
 public:
  explicit CaptureGuard(Backend& backend) : backend_(backend) {}
  CaptureGuard(const CaptureGuard&) = delete;
  CaptureGuard& operator=(const CaptureGuard&) = delete;
  ~CaptureGuard() {
    if (open_) backend_.AbortCapture();
  }
  // EndCapture; when it throws, the destructor still aborts whatever it left open.
  std::unique_ptr<BackendGraph> End() {
    std::unique_ptr<BackendGraph> graph = backend_.EndCapture();
    open_ = false;
    return graph;
  }

 private:
  Backend& backend_;
  bool open_ = true;
};

}  // namespace

DecodeGraphs::DecodeGraphs(LlamaModel& model, PagedKvCache& cache, std::vector<int> batch_sizes,
                           int max_blocks, int32_t pad_block)
    : model_(model),
      cache_(cache),
      sizes_(std::move(batch_sizes)),
      max_blocks_(max_blocks),
      pad_block_(pad_block) {
  std::sort(sizes_.begin(), sizes_.end());
  sizes_.erase(std::unique(sizes_.begin(), sizes_.end()), sizes_.end());
  sizes_.erase(std::remove_if(sizes_.begin(), sizes_.end(), [](int s) { return s < 1; }),
               sizes_.end());
  enabled_ = !sizes_.empty() && max_blocks_ > 0 && pad_block_ >= 0 &&
             pad_block_ < cache_.num_blocks && model_.parallel().device_resident() &&
             model_.backend().supports_graphs() &&
             // A mixture of experts routes on the host (it reads the router's logits back),
             // which a recorded graph cannot do.
             model_.config().num_experts == 0;
}

bool DecodeGraphs::Accepts(const BatchInput& batch) const {
  if (!enabled_) return false;
  const size_t seqs = batch.table_begin.empty() ? 0 : batch.table_begin.size() - 1;
  if (seqs == 0 || seqs > static_cast<size_t>(sizes_.back()) || batch.tokens.size() != seqs ||
      batch.logit_rows.size() != seqs) {
    return false;
  }
  for (size_t s = 0; s < seqs; ++s) {
    if (batch.seq_index[s] != static_cast<int32_t>(s) ||
        batch.logit_rows[s] != static_cast<int32_t>(s) ||
        batch.table_begin[s + 1] - batch.table_begin[s] > max_blocks_) {
      return false;
    }
  }
  return true;
}

HostStepIndices DecodeGraphs::Pad(const HostStepIndices& host, const BatchInput& batch,
                                  int size) const {
  const size_t seqs = host.positions.size();
  const int bs = cache_.block_size;
  HostStepIndices p;
  p.block_size = host.block_size;
  auto pad = [&](const std::vector<int32_t>& v, int32_t fill) {
    std::vector<int32_t> out(v);
    out.resize(static_cast<size_t>(size), fill);
    return out;
  };
  if (!host.embed_ids.empty()) {
    // A padding token is token 0: local id 0 on the rank whose vocabulary starts there.
    p.embed_ids = pad(host.embed_ids, model_.parallel().shard.vocab.begin == 0 ? 0 : -1);
  }
  p.positions = pad(host.positions, 0);
  p.cache_rows = pad(host.cache_rows, pad_block_ * bs);
  p.seq_index.resize(static_cast<size_t>(size));
  p.logit_rows.resize(static_cast<size_t>(size));
  for (int s = 0; s < size; ++s) p.seq_index[s] = p.logit_rows[s] = s;
  p.table_begin.resize(static_cast<size_t>(size) + 1);
  for (int s = 0; s <= size; ++s) p.table_begin[s] = s * max_blocks_;
  p.block_tables.assign(static_cast<size_t>(size) * max_blocks_, pad_block_);
  for (size_t s = 0; s < seqs; ++s) {
    std::copy(batch.block_tables.begin() + batch.table_begin[s],
              batch.block_tables.begin() + batch.table_begin[s + 1],
              p.block_tables.begin() + static_cast<int64_t>(s) * max_blocks_);
  }
  return p;
}

absl::StatusOr<Tensor> DecodeGraphs::Run(const BatchInput& batch) {
  if (!Accepts(batch)) {
    return absl::InvalidArgumentError("DecodeGraphs::Run: not a decode step it accepts");
  }
  // The same checks as any step, on the host.
  SHARDLM_ASSIGN_OR_RETURN(HostStepIndices host, model_.PrepareBatch(batch, cache_));
  const int seqs = static_cast<int>(host.positions.size());
  const int size = *std::lower_bound(sizes_.begin(), sizes_.end(), seqs);
  HostStepIndices padded = Pad(host, batch, size);
  const std::vector<int32_t> packed = padded.Packed();
  Backend& b = model_.backend();

  auto it = graphs_.find(size);
  if (it == graphs_.end()) {
    // First step of this size: run it eagerly (which also warms up cuBLAS and uploads the RoPE
    // tables, neither of which may happen during a capture), then record the graph.
    Graph g;
    g.layout = padded;
    g.indices = b.UploadIndices(packed);
    // The activations outlive the graph, so that it holds no allocation of its own for them;
    // the eager step and the graph write the same buffers, logits included.
    if (workspace_.tokens == 0) workspace_ = model_.NewWorkspace(sizes_.back(), sizes_.back());
    g.workspace = workspace_.Prefix(size, size);
    const StepIndices views = StepIndices::Views(g.layout, g.indices);
    SHARDLM_ASSIGN_OR_RETURN(g.logits, model_.ForwardStep(views, cache_.k, cache_.v, &g.workspace));
    b.Synchronize();
    if (!b.BeginCapture()) {
      enabled_ = false;
      return g.logits.defined() && g.logits.rank() == 2 ? g.logits.Rows(0, seqs) : Tensor();
    }
    // Until EndCapture has made the graph, any way out of here (an op that throws, a step that
    // returns an error, an EndCapture that throws) aborts the capture: a stream left capturing
    // would fail every later op of every step. This size records again at its next step.
    CaptureGuard capture(b);
    absl::Status recorded_status;
    {
      // What the step still allocates itself (backend temporaries) is freed at the end of this
      // block, inside the graph (and, on the failure path, before the guard aborts the capture).
      recorded_status = model_.ForwardStep(views, cache_.k, cache_.v, &g.workspace).status();
    }
    SHARDLM_RETURN_IF_ERROR(recorded_status);
    g.graph = capture.End();
    if (g.graph == nullptr) return absl::InternalError("DecodeGraphs: the capture gave no graph");
    spdlog::info("recorded a CUDA graph for decode steps of {} sequences", size);
    Tensor out = g.logits.defined() && g.logits.rank() == 2 ? g.logits.Rows(0, seqs) : Tensor();
    graphs_.emplace(size, std::move(g));
    return out;
  }
  Graph& g = it->second;
  b.WriteIndices(packed, g.indices);
  g.graph->Replay();
  return g.logits.defined() && g.logits.rank() == 2 ? g.logits.Rows(0, seqs) : Tensor();
}

}  // namespace shardlm
