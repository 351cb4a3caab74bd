#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/shard_loader.h"
#include "parallel/collectives.h"

namespace shardlm {

PlanInput PlanInputFor(const ModelConfig& config, int tp, int pp, std::vector<int64_t> pp_layers,
                       const WeightSource* weights, int ep) {
  PlanInput in;
  in.layers = config.num_layers;
  in.heads = config.num_heads;
  in.kv_heads = config.num_kv_heads;
  in.head_dim = config.head_dim;
  in.intermediate = config.intermediate_size;
  in.vocab = config.vocab_size;
  in.hidden = config.hidden_size;
  in.experts = config.num_experts;
  in.moe_intermediate = config.num_experts > 0 ? config.moe_intermediate_size : 0;
  in.tp = tp;
  in.pp = pp;
  in.ep = ep;
  in.pp_layers = std::move(pp_layers);
  if (weights != nullptr) {
    // Block sizes are powers of two, so the largest is a multiple of all the others.
    for (int64_t l = 0; l < config.num_layers; ++l) {
      const bool moe = LayerIsMoe(config, l);
      int64_t& align = moe ? in.moe_align : in.intermediate_align;
      auto info = weights->Info(moe ? MoeTensorName(config.arch, l, 0, MoePart::kDown)
                                    : absl::StrCat("model.layers.", l, ".mlp.down_proj.weight"));
      if (info.ok()) align = std::max(align, DTypeBlockElements(info->dtype));
    }
  }
  return in;
}

ShardPlan SingleRankPlan(const ModelConfig& config) {
  absl::StatusOr<ShardPlan> plan = MakeShardPlan(PlanInputFor(config, 1, 1));
  // One rank always fits a config that ParseModelConfig accepted.
  return *std::move(plan);
}

absl::StatusOr<LlamaWeights> LoadLlamaShard(const ModelConfig& config, const RankShard& shard,
                                            const ShardPlan& plan, ShardLoader& w) {
  const int64_t h = config.hidden_size, v = config.vocab_size, inter = config.intermediate_size;
  const int64_t hd = config.head_dim;
  const int64_t q_dim = config.num_heads * hd, kv_dim = config.num_kv_heads * hd;
  const Range q_rows{shard.q_heads.begin * hd, shard.q_heads.end * hd};
  const Range kv_rows{shard.kv_heads.begin * hd, shard.kv_heads.end * hd};
  const Range& mlp = shard.intermediate;
  // Row-parallel biases are added once, by TP rank 0.
  const bool row_bias = shard.tp_rank == 0;
  LlamaWeights out;

  auto rows = [&](bool present, const std::string& name, std::vector<int64_t> shape,
                  Range r) -> absl::StatusOr<std::optional<Tensor>> {
    if (!present) return std::optional<Tensor>();
    SHARDLM_ASSIGN_OR_RETURN(Tensor t, w.Rows(name, shape, r));
    return std::optional<Tensor>(std::move(t));
  };
  auto full = [&](bool present, const std::string& name,
                  std::vector<int64_t> shape) -> absl::StatusOr<std::optional<Tensor>> {
    if (!present) return std::optional<Tensor>();
    SHARDLM_ASSIGN_OR_RETURN(Tensor t, w.Full(name, shape));
    return std::optional<Tensor>(std::move(t));
  };

  // Stacked biases of a fused projection (vectors always stack).
  auto stacked =
      [&](bool present,
          std::vector<ShardLoader::RowSlice> parts) -> absl::StatusOr<std::optional<Tensor>> {
    if (!present) return std::optional<Tensor>();
    SHARDLM_ASSIGN_OR_RETURN(std::optional<Tensor> t, w.StackedRows(parts));
    if (!t)
      return absl::InternalError(absl::StrCat("biases from '", parts[0].name, "' did not stack"));
    return t;
  };

  if (shard.first_stage) {
    VocabParallelEmbedding e;
    e.vocab = shard.vocab;
    SHARDLM_ASSIGN_OR_RETURN(e.table, w.Rows("model.embed_tokens.weight", {v, h}, shard.vocab));
    out.embed = std::move(e);
  }
  if (shard.last_stage) {
    SHARDLM_ASSIGN_OR_RETURN(out.final_norm,
                             w.Full("model.norm.weight", {h}, config.norm_plus_one ? 1.0f : 0.0f));
    ParallelLMHead head;
    head.vocab = shard.vocab;
    head.full_vocab = v;
    for (int t = 0; t < plan.tp; ++t) head.all_vocab.push_back(plan.ranks[t].vocab);
    if (config.tie_word_embeddings && out.embed) {
      head.weight = out.embed->table;  // the same slice: held once
    } else {
      const char* name = config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
      SHARDLM_ASSIGN_OR_RETURN(head.weight, w.Rows(name, {v, h}, shard.vocab));
    }
    out.lm_head = std::move(head);
  }
  const LayerNormNames norms = NormNamesOf(config.arch);
  // HF Gemma checkpoints store norm weights w of a (1 + w) scale; GGUF files store 1 + w.
  const float norm_offset = config.norm_plus_one ? 1.0f : 0.0f;
  auto norm = [&](const std::string& name, int64_t size) {
    return w.Full(name, {size}, norm_offset);
  };
  for (int64_t l = shard.layers.begin; l < shard.layers.end; ++l) {
    LlamaLayerWeights lw;
    const std::string p = absl::StrCat("model.layers.", l, ".");
    SHARDLM_ASSIGN_OR_RETURN(lw.attn_norm, norm(p + norms.attn + ".weight", h));
    const std::string q = p + "self_attn.q_proj.", k = p + "self_attn.k_proj.",
                      vp = p + "self_attn.v_proj.";
    // This rank's Q, K and V rows (and bias entries): from q_proj, k_proj, v_proj, or from the
    // parts of one qkv_proj [q; k; v] (Phi-3; GLM-4-9B's GGUF).
    auto qkv_slices = [&](const std::string& suffix, std::vector<int64_t> cols) {
      std::vector<ShardLoader::RowSlice> parts;
      auto shape = [&](int64_t rows) {
        std::vector<int64_t> s = {rows};
        s.insert(s.end(), cols.begin(), cols.end());
        return s;
      };
      if (config.fused_qkv_proj) {
        const std::string fused = p + "self_attn.qkv_proj." + suffix;
        const std::vector<int64_t> all = shape(q_dim + 2 * kv_dim);
        parts = {{fused, all, q_rows},
                 {fused, all, {q_dim + kv_rows.begin, q_dim + kv_rows.end}},
                 {fused, all, {q_dim + kv_dim + kv_rows.begin, q_dim + kv_dim + kv_rows.end}}};
      } else {
        parts = {{q + suffix, shape(q_dim), q_rows},
                 {k + suffix, shape(kv_dim), kv_rows},
                 {vp + suffix, shape(kv_dim), kv_rows}};
      }
      return parts;
    };
    const std::vector<ShardLoader::RowSlice> qkv_parts = qkv_slices("weight", {h});
    const std::vector<ShardLoader::RowSlice> qkv_bias_parts = qkv_slices("bias", {});
    SHARDLM_ASSIGN_OR_RETURN(auto qkv, w.StackedRows(qkv_parts));
    lw.fused_qkv = qkv.has_value();
    if (lw.fused_qkv) {
      lw.qkv.weight = *std::move(qkv);
      SHARDLM_ASSIGN_OR_RETURN(lw.qkv.bias, stacked(config.qkv_bias, qkv_bias_parts));
    } else {
      ColumnParallelLinear* parts[] = {&lw.q, &lw.k, &lw.v};
      for (int i = 0; i < 3; ++i) {
        const ShardLoader::RowSlice& part = qkv_parts[i];
        const ShardLoader::RowSlice& bias = qkv_bias_parts[i];
        SHARDLM_ASSIGN_OR_RETURN(parts[i]->weight, w.Rows(part.name, part.shape, part.rows));
        SHARDLM_ASSIGN_OR_RETURN(parts[i]->bias,
                                 rows(config.qkv_bias, bias.name, bias.shape, bias.rows));
      }
    }
    if (config.qk_norm) {
      SHARDLM_ASSIGN_OR_RETURN(lw.q_norm, norm(p + "self_attn.q_norm.weight", hd));
      SHARDLM_ASSIGN_OR_RETURN(lw.k_norm, norm(p + "self_attn.k_norm.weight", hd));
    }
    SHARDLM_ASSIGN_OR_RETURN(lw.o.weight,
                             w.Columns(p + "self_attn.o_proj.weight", {h, q_dim}, q_rows));
    SHARDLM_ASSIGN_OR_RETURN(lw.o.bias, full(config.o_bias && row_bias, p + "self_attn.o_proj.bias", {h}));
    if (config.post_norms) {
      SHARDLM_ASSIGN_OR_RETURN(lw.post_attn_norm, norm(p + norms.post_attn + ".weight", h));
      SHARDLM_ASSIGN_OR_RETURN(lw.post_mlp_norm, norm(p + norms.post_mlp + ".weight", h));
    }
    SHARDLM_ASSIGN_OR_RETURN(lw.mlp_norm, norm(p + norms.mlp + ".weight", h));
    if (LayerIsMoe(config, l)) {
      lw.moe = true;
      const int64_t moe = config.moe_intermediate_size;
      // This rank's experts (all of them, or its EP group's), each its share of the columns.
      const Range part = shard.moe_intermediate;
      SHARDLM_ASSIGN_OR_RETURN(lw.router, w.Full(MoeTensorName(config.arch, l, 0, MoePart::kRouter),
                                                 {config.num_experts, h}));
      for (int64_t e = shard.experts.begin; e < shard.experts.end; ++e) {
        LlamaLayerWeights::Expert ex;
        const std::string g = MoeTensorName(config.arch, l, e, MoePart::kGate);
        SHARDLM_ASSIGN_OR_RETURN(
            auto gu, w.StackedRows({{g, {moe, h}, part},
                                    {MoeTensorName(config.arch, l, e, MoePart::kUp), {moe, h}, part}}));
        if (!gu) {
          return absl::UnimplementedError(absl::StrCat(
              "tensor '", g, "': an expert whose gate and up differ in dtype is not supported"));
        }
        ex.gate_up.weight = *std::move(gu);
        SHARDLM_ASSIGN_OR_RETURN(
            ex.down, w.Columns(MoeTensorName(config.arch, l, e, MoePart::kDown), {h, moe}, part));
        lw.experts.push_back(std::move(ex));
      }
      out.layers.push_back(std::move(lw));
      w.ReleaseUnused();
      continue;
    }
    const std::string gate = p + "mlp.gate_proj.", up = p + "mlp.up_proj.";
    // Gate and up rows: from gate_proj and up_proj, or from one gate_up_proj [gate; up] (Phi-3,
    // GLM).
    std::vector<ShardLoader::RowSlice> gate_up_parts;
    if (config.fused_gate_up_proj) {
      const std::string fused = p + "mlp.gate_up_proj.weight";
      const std::vector<int64_t> shape = {2 * inter, h};
      gate_up_parts = {{fused, shape, mlp}, {fused, shape, {inter + mlp.begin, inter + mlp.end}}};
    } else {
      gate_up_parts = {{gate + "weight", {inter, h}, mlp}, {up + "weight", {inter, h}, mlp}};
    }
    SHARDLM_ASSIGN_OR_RETURN(auto gate_up, w.StackedRows(gate_up_parts));
    lw.fused_gate_up = gate_up.has_value();
    if (lw.fused_gate_up) {
      lw.gate_up.weight = *std::move(gate_up);
      SHARDLM_ASSIGN_OR_RETURN(
          lw.gate_up.bias,
          stacked(config.mlp_bias, {{gate + "bias", {inter}, mlp}, {up + "bias", {inter}, mlp}}));
    } else {
      ColumnParallelLinear* parts[] = {&lw.gate, &lw.up};
      for (int i = 0; i < 2; ++i) {
        const ShardLoader::RowSlice& part = gate_up_parts[i];
        SHARDLM_ASSIGN_OR_RETURN(parts[i]->weight, w.Rows(part.name, part.shape, part.rows));
      }
      SHARDLM_ASSIGN_OR_RETURN(lw.gate.bias, rows(config.mlp_bias, gate + "bias", {inter}, mlp));
      SHARDLM_ASSIGN_OR_RETURN(lw.up.bias, rows(config.mlp_bias, up + "bias", {inter}, mlp));
    }
    SHARDLM_ASSIGN_OR_RETURN(lw.down.weight,
                             w.Columns(p + "mlp.down_proj.weight", {h, inter}, mlp));
    SHARDLM_ASSIGN_OR_RETURN(lw.down.bias, full(config.mlp_bias && row_bias, p + "mlp.down_proj.bias", {h}));
    out.layers.push_back(std::move(lw));
    w.ReleaseUnused();
  }
  w.ReleaseUnused();
  return out;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(
    const ModelConfig& config, const WeightSource& weights, Backend& backend,
    std::optional<ParallelContext> parallel) {
  if (!parallel) parallel = ParallelContext::Single(SingleRankPlan(config));
  std::unique_ptr<LlamaModel> m(new LlamaModel(config, backend, std::move(*parallel)));
  ShardLoader loader(config, weights, &backend);
  SHARDLM_ASSIGN_OR_RETURN(m->w_,
                           LoadLlamaShard(config, m->parallel_.shard, m->parallel_.plan, loader));
  m->weight_bytes_ = loader.bytes();
  m->expert_tokens_.assign(static_cast<size_t>(config.num_layers * config.num_experts), 0);

  const RankShard& shard = m->parallel_.shard;
  AttentionParams attn;
  attn.num_heads = static_cast<int>(shard.q_heads.size());
  attn.num_kv_heads = static_cast<int>(shard.kv_heads.size());
  attn.head_dim = static_cast<int>(config.head_dim);
  attn.scale = config.attention_scale > 0
                   ? config.attention_scale
                   : 1.0f / std::sqrt(static_cast<float>(config.head_dim));
  for (int64_t l = shard.layers.begin; l < shard.layers.end; ++l) {
    const bool slides = LayerSlides(config, l);
    attn.sliding_window = slides ? static_cast<int>(config.sliding_window) : 0;
    m->attn_.push_back(attn);
    m->rope_.push_back(slides && config.sliding_rope ? *config.sliding_rope : config.rope);
  }
  m->act_ = config.hidden_act == HiddenAct::kGeluTanh ? Activation::kGeluTanh : Activation::kSilu;
  return m;
}

std::vector<int32_t> HostStepIndices::Packed() const {
  std::vector<int32_t> out;
  out.reserve(embed_ids.size() + positions.size() + cache_rows.size() + seq_index.size() +
              table_begin.size() + block_tables.size() + logit_rows.size());
  for (const std::vector<int32_t>* v : {&embed_ids, &positions, &cache_rows, &seq_index,
                                        &table_begin, &block_tables, &logit_rows}) {
    out.insert(out.end(), v->begin(), v->end());
  }
  return out;
}

StepIndices StepIndices::Views(const HostStepIndices& host, const Tensor& packed) {
  StepIndices s;
  s.tokens = static_cast<int64_t>(host.positions.size());
  int64_t at = 0;
  auto next = [&](const std::vector<int32_t>& v) {
    const int64_t n = static_cast<int64_t>(v.size());
    Tensor t = packed.Rows(at, at + n);
    at += n;
    return t;
  };
  s.embed_ids = next(host.embed_ids);
  s.positions = next(host.positions);
  s.cache_rows = next(host.cache_rows);
  s.layout.seq_index = next(host.seq_index);
  s.layout.table_begin = next(host.table_begin);
  s.layout.block_tables = next(host.block_tables);
  s.logit_rows = next(host.logit_rows);
  s.layout.block_size = host.block_size;
  s.layout.positions = s.positions;
  return s;
}

// A view into `buf` from element `offset`, shaped `shape` (a part of a workspace buffer).
static Tensor Part(const Tensor& buf, int64_t offset, std::vector<int64_t> shape) {
  return Tensor::View(buf.data<float>() + offset, std::move(shape), buf.dtype(), buf.holder(),
                      buf.device());
}

absl::Status LlamaModel::Layer(int64_t l, bool first, StepWorkspace& ws, const StepIndices& step,
                               Tensor& k_cache, Tensor& v_cache) {
  const LlamaLayerWeights& lw = w_.layers[l];
  const int64_t n = ws.tokens, hd = config_.head_dim;
  const AttentionParams& attn = attn_[l];
  const RopeConfig& rope = rope_[l];
  const int64_t heads = attn.num_heads, kv_heads = attn.num_kv_heads;
  const int64_t inter = parallel_.shard.intermediate.size();
  const float eps = config_.rms_norm_eps;
  Backend& b = backend_;
  Tensor& x = ws.x;
  Tensor& h = ws.h;

  if (first) {
    b.RmsNorm(x, lw.attn_norm, eps, h);
  } else {
    b.AddRmsNorm(x, h, lw.attn_norm, eps, h);  // h: the previous layer's MLP output
  }
  if (lw.fused_qkv) {
    lw.qkv.Apply(b, h, ws.qkv);
    if (config_.qk_norm) {
      b.HeadRmsNorm(ws.qkv, static_cast<int>(heads), static_cast<int>(kv_heads), lw.q_norm,
                    lw.k_norm, eps);
    }
    b.RopeWriteKv(ws.qkv, step.positions, rope, step.cache_rows, k_cache, v_cache, ws.q);
  } else {
    // Q straight into ws.q (rotated in place); K and V in the first two parts of ws.qkv.
    Tensor q = ws.q.Reshape({n, heads * hd});
    Tensor k = Part(ws.qkv, 0, {n, kv_heads * hd});
    Tensor v = Part(ws.qkv, n * kv_heads * hd, {n, kv_heads * hd});
    lw.q.Apply(b, h, q);
    lw.k.Apply(b, h, k);
    lw.v.Apply(b, h, v);
    Tensor k3 = k.Reshape({n, kv_heads, hd});
    if (config_.qk_norm) {
      Tensor q_heads = ws.q.Reshape({n * heads, hd}), k_heads = k.Reshape({n * kv_heads, hd});
      b.RmsNorm(q_heads, lw.q_norm, eps, q_heads);
      b.RmsNorm(k_heads, lw.k_norm, eps, k_heads);
    }
    b.Rope(ws.q, step.positions, rope);
    b.Rope(k3, step.positions, rope);
    b.WriteKv(k3, v.Reshape({n, kv_heads, hd}), step.cache_rows, k_cache, v_cache);
  }
  b.PagedAttention(ws.q, k_cache, v_cache, step.layout, attn, ws.attn);
  SHARDLM_RETURN_IF_ERROR(lw.o.Apply(b, parallel_, ws.attn, h));
  if (config_.post_norms) b.RmsNorm(h, lw.post_attn_norm, eps, h);
  // x += attention output; h = norm(x), in one pass.
  b.AddRmsNorm(x, h, lw.mlp_norm, eps, h);
  if (lw.moe) {
    SHARDLM_RETURN_IF_ERROR(MoeMlp(parallel_.shard.layers.begin + l, lw, ws));
    if (config_.post_norms) b.RmsNorm(h, lw.post_mlp_norm, eps, h);
    return absl::OkStatus();
  }
  if (lw.fused_gate_up) {
    lw.gate_up.Apply(b, h, ws.gate_up);
    b.GluMulPacked(ws.gate_up, act_, ws.act);
  } else {
    Tensor gate = Part(ws.gate_up, 0, {n, inter});
    Tensor up = Part(ws.gate_up, n * inter, {n, inter});
    lw.gate.Apply(b, h, gate);
    lw.up.Apply(b, h, up);
    b.GluMul(gate, up, act_, ws.act);
  }
  // h = the MLP output: added to x with the next layer's first norm (or after the stage).
  SHARDLM_RETURN_IF_ERROR(lw.down.Apply(b, parallel_, ws.act, h));
  if (config_.post_norms) b.RmsNorm(h, lw.post_mlp_norm, eps, h);
  return absl::OkStatus();
}

StepWorkspace StepWorkspace::Prefix(int64_t new_tokens, int64_t new_logit_rows) const {
  if (new_tokens > tokens || new_logit_rows > logit_rows) {
    throw std::invalid_argument(absl::StrCat("StepWorkspace::Prefix: ", new_tokens, " tokens and ",
                                             new_logit_rows, " logit rows of a workspace for ",
                                             tokens, " and ", logit_rows));
  }
  auto rows = [](const Tensor& t, int64_t n) { return t.rank() == 0 ? t : t.Rows(0, n); };
  StepWorkspace p;
  p.tokens = new_tokens;
  p.logit_rows = new_logit_rows;
  for (auto [dst, src] :
       {std::pair{&p.x, &x}, std::pair{&p.h, &h}, std::pair{&p.qkv, &qkv}, std::pair{&p.q, &q},
        std::pair{&p.attn, &attn}, std::pair{&p.gate_up, &gate_up}, std::pair{&p.act, &act}}) {
    *dst = rows(*src, new_tokens);
  }
  for (auto [dst, src] :
       {std::pair{&p.last, &last}, std::pair{&p.normed, &normed}, std::pair{&p.logits, &logits}}) {
    *dst = rows(*src, new_logit_rows);
  }
  return p;
}

StepWorkspace LlamaModel::NewWorkspace(int64_t tokens, int64_t logit_rows) const {
  const RankShard& shard = parallel_.shard;
  const int64_t hidden = config_.hidden_size, hd = config_.head_dim;
  const int64_t heads = shard.q_heads.size(), kv_heads = shard.kv_heads.size();
  const int64_t inter = shard.intermediate.size();
  Backend& b = backend_;
  StepWorkspace ws;
  ws.tokens = tokens;
  ws.logit_rows = logit_rows;
  ws.x = b.AllocateUninitialized({tokens, hidden});
  if (!w_.layers.empty()) {
    ws.h = b.AllocateUninitialized({tokens, hidden});
    ws.qkv = b.AllocateUninitialized({tokens, (heads + 2 * kv_heads) * hd});
    ws.q = b.AllocateUninitialized({tokens, heads, hd});
    ws.attn = b.AllocateUninitialized({tokens, heads * hd});
    ws.gate_up = b.AllocateUninitialized({tokens, 2 * inter});
    ws.act = b.AllocateUninitialized({tokens, inter});
  }
  if (shard.last_stage) {
    ws.last = b.AllocateUninitialized({logit_rows, hidden});
    ws.normed = b.AllocateUninitialized({logit_rows, hidden});
    ws.logits = b.AllocateUninitialized({logit_rows, shard.vocab.size()});
  }
  return ws;
}

absl::StatusOr<Tensor> LlamaModel::ForwardStep(const StepIndices& step,
                                               std::vector<Tensor>& k_caches,
                                               std::vector<Tensor>& v_caches,
                                               StepWorkspace* workspace) {
  const int64_t n = step.tokens;
  const RankShard& shard = parallel_.shard;
  StepWorkspace own;
  if (workspace == nullptr) {
    own = NewWorkspace(n, step.logit_rows.numel());
    workspace = &own;
  } else if (workspace->tokens != n || workspace->logit_rows != step.logit_rows.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ForwardStep: a workspace for ", workspace->tokens, " tokens and ", workspace->logit_rows,
        " logit rows, but the step has ", n, " and ", step.logit_rows.numel()));
  }
  StepWorkspace& ws = *workspace;

  if (shard.first_stage) {
    SHARDLM_RETURN_IF_ERROR(w_.embed->Apply(backend_, parallel_, step.embed_ids, ws.x));
    if (config_.scale_embeddings) {
      backend_.Scale(ws.x, std::sqrt(static_cast<float>(config_.hidden_size)));
    }
  } else {
    // The previous stage's hidden states, from the rank with the same TP rank there.
    SHARDLM_RETURN_IF_ERROR(RecvFromPreviousStage(backend_, parallel_, ws.x));
  }
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    SHARDLM_RETURN_IF_ERROR(
        Layer(static_cast<int64_t>(l), l == 0, ws, step, k_caches[l], v_caches[l]));
  }
  if (!w_.layers.empty()) backend_.Add(ws.x, ws.h);
  if (!shard.last_stage) {
    SHARDLM_RETURN_IF_ERROR(SendToNextStage(backend_, parallel_, ws.x));
    return Tensor();
  }

  // Gather the wanted rows (an f32 "embedding" lookup into x).
  if (ws.logit_rows == 0) return ws.logits;
  backend_.Embedding(ws.x, step.logit_rows, ws.last);
  backend_.RmsNorm(ws.last, w_.final_norm, config_.rms_norm_eps, ws.normed);
  w_.lm_head->Apply(backend_, ws.normed, ws.logits);
  return ws.logits;
}

absl::StatusOr<Tensor> LlamaModel::RunHost(const HostStepIndices& host,
                                           std::vector<Tensor>& k_caches,
                                           std::vector<Tensor>& v_caches) {
  const Tensor packed = backend_.UploadIndices(host.Packed());
  return ForwardStep(StepIndices::Views(host, packed), k_caches, v_caches);
}

static absl::Status CheckTokens(std::span<const int32_t> tokens, int64_t vocab) {
  if (tokens.empty()) return absl::InvalidArgumentError("ForwardBatch: no tokens");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                     " is out of range [0, vocab_size=", vocab,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

uint64_t LlamaModel::KvBytesPerBlock(int block_size) const {
  return static_cast<uint64_t>(w_.layers.size()) * 2 * block_size *
         parallel_.shard.kv_heads.size() * config_.head_dim *
         DTypeSize(backend_.kv_cache_dtype());
}

PagedKvCache LlamaModel::NewPagedCache(int block_size, int64_t num_blocks) const {
  PagedKvCache cache;
  cache.block_size = block_size;
  cache.num_blocks = num_blocks;
  const int64_t rows = num_blocks * block_size, kvh = parallel_.shard.kv_heads.size();
  const DType dtype = backend_.kv_cache_dtype();
  for (size_t l = 0; l < w_.layers.size(); ++l) {
    cache.k.push_back(backend_.Allocate({rows, kvh, config_.head_dim}, dtype));
    cache.v.push_back(backend_.Allocate({rows, kvh, config_.head_dim}, dtype));
  }
  return cache;
}

absl::StatusOr<HostStepIndices> LlamaModel::PrepareBatch(const BatchInput& batch,
                                                         const PagedKvCache& cache) const {
  const size_t n = batch.tokens.size();
  SHARDLM_RETURN_IF_ERROR(CheckTokens(batch.tokens, config_.vocab_size));
  if (batch.positions.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("ForwardBatch: ", n, " tokens but ",
                                                   batch.positions.size(), " positions"));
  }
  const PagedKvLayout layout{cache.block_size, batch.positions, batch.seq_index,
                             batch.table_begin, batch.block_tables};
  // Every token's block must be in its sequence's table and in the cache; its K/V row follows.
  if (const std::string error = PagedKvLayoutError(layout, cache.num_blocks); !error.empty()) {
    return absl::OutOfRangeError(absl::StrCat("ForwardBatch: ", error));
  }
  for (int32_t r : batch.logit_rows) {
    if (r < 0 || static_cast<size_t>(r) >= n) {
      return absl::OutOfRangeError(absl::StrCat("ForwardBatch: logit row ", r, " of ", n));
    }
  }
  HostStepIndices host;
  const int64_t bs = cache.block_size;
  if (w_.embed) host.embed_ids = w_.embed->LocalIds(batch.tokens);
  host.positions = batch.positions;
  host.cache_rows.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t p = batch.positions[i];
    const int32_t block = batch.block_tables[batch.table_begin[batch.seq_index[i]] + p / bs];
    host.cache_rows[i] = static_cast<int32_t>(block * bs + p % bs);
  }
  host.seq_index = batch.seq_index;
  host.table_begin = batch.table_begin;
  host.block_tables = batch.block_tables;
  host.logit_rows = batch.logit_rows;
  host.block_size = cache.block_size;
  return host;
}

absl::StatusOr<Tensor> LlamaModel::ForwardBatch(const BatchInput& batch, PagedKvCache& cache) {
  SHARDLM_ASSIGN_OR_RETURN(HostStepIndices host, PrepareBatch(batch, cache));
  return RunHost(host, cache.k, cache.v);
}

absl::StatusOr<std::vector<int32_t>> LlamaModel::LastStageArgmax(const Tensor& local_logits) {
  if (!parallel_.shard.last_stage) return absl::FailedPreconditionError("not the last stage");
  return w_.lm_head->Argmax(backend_, *parallel_.tp, local_logits);
}

absl::StatusOr<std::vector<float>> LlamaModel::LastStageGather(const Tensor& local_logits) {
  if (!parallel_.shard.last_stage) return absl::FailedPreconditionError("not the last stage");
  return w_.lm_head->Gather(backend_, *parallel_.tp, local_logits);
}

Tensor LlamaModel::SelectRows(const Tensor& t, std::span<const int32_t> rows) {
  Tensor out = backend_.Allocate({static_cast<int64_t>(rows.size()), t.dim(1)});
  if (!rows.empty()) backend_.Embedding(t, rows, out);
  return out;
}

}  // namespace shardlm
