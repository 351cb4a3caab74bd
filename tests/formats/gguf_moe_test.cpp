// GGUF mixtures of experts in llama.cpp's layout: Mixtral (`llama` with experts) and Qwen3-MoE
// (`qwen3moe`) written by ExportGguf read back with the original's MoE config, each expert served
// under its HF name as a view of its slice of the 3-D tensor; layouts we do not implement, or
// that contradict themselves, are refused with one error naming the key or the tensor.
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formats/gguf.h"
#include "formats/gguf_export.h"
#include "formats/gguf_model.h"
#include "formats/gguf_writer.h"
#include "formats/random_weights.h"
#include "gtest/gtest.h"
#include "io_test_util.h"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::TempDir;

ModelConfig TinyMoe(Arch arch) {
  TinyModelSpec spec;
  spec.arch = arch;
  spec.layers = 3;
  spec.hidden = 64;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.intermediate = 128;
  spec.vocab = 96;
  spec.seed = 7;
  absl::StatusOr<ModelConfig> config = TinyModelConfig(spec);
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

struct MoeCase {
  const char* name;
  Arch arch;
  DType dtype;
};

class GgufMoeTest : public ::testing::TestWithParam<MoeCase> {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  TempDir dir_;
};

TEST_P(GgufMoeTest, ConfigAndExpertsReadBack) {
  const MoeCase& mc = GetParam();
  const ModelConfig config = TinyMoe(mc.arch);
  const RandomWeightSource hf(config, 7, DType::kF32);
  const std::string path = dir_.File("moe.gguf");
  ASSERT_TRUE(ExportGguf(config, hf, path, mc.dtype).ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->GetString("general.architecture").value_or(""),
            mc.arch == Arch::kMixtral ? "llama" : "qwen3moe");

  absl::StatusOr<ModelConfig> got = ModelConfigFromGguf(**file);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->arch, mc.arch);
  EXPECT_EQ(got->num_experts, config.num_experts);
  EXPECT_EQ(got->experts_per_token, config.experts_per_token);
  EXPECT_EQ(got->moe_intermediate_size, config.moe_intermediate_size);
  EXPECT_EQ(got->norm_topk_prob, config.norm_topk_prob);
  EXPECT_EQ(got->moe_layers, config.moe_layers);
  // Qwen3-MoE's last layer is dense: its MLP tensors are the dense ones.
  EXPECT_EQ(got->moe_layers.empty(), mc.arch == Arch::kMixtral);

  // The view lists the HF names of the original, experts included, and serves each expert as a
  // view of its slice of the 3-D tensor: expert e's bytes start e slices after expert 0's.
  const GgufHfView view(**file);
  EXPECT_EQ(view.Names(), hf.Names());
  for (int64_t l = 0; l < config.num_layers; ++l) {
    if (!LayerIsMoe(config, l)) continue;
    auto router = view.Info(MoeTensorName(mc.arch, l, 0, MoePart::kRouter));
    ASSERT_TRUE(router.ok()) << router.status();
    EXPECT_EQ(router->dtype, DType::kF32);  // llama.cpp keeps routers unquantized
    EXPECT_EQ(router->shape, (std::vector<int64_t>{config.num_experts, config.hidden_size}));
    for (MoePart part : {MoePart::kGate, MoePart::kUp, MoePart::kDown}) {
      const std::string first = MoeTensorName(mc.arch, l, 0, part);
      auto info0 = view.Info(first);
      ASSERT_TRUE(info0.ok()) << info0.status();
      EXPECT_EQ(info0->dtype, mc.dtype) << first;
      const int64_t h = config.hidden_size, ff = config.moe_intermediate_size;
      EXPECT_EQ(info0->shape, part == MoePart::kDown ? (std::vector<int64_t>{h, ff})
                                                     : (std::vector<int64_t>{ff, h}));
      absl::StatusOr<Tensor> t0 = view.Load(first);
      ASSERT_TRUE(t0.ok()) << t0.status();
      for (int64_t e = 1; e < config.num_experts; ++e) {
        const std::string name = MoeTensorName(mc.arch, l, e, part);
        auto info = view.Info(name);
        ASSERT_TRUE(info.ok()) << info.status();
        EXPECT_EQ(info->offset, info0->offset + e * info0->size) << name;
        absl::StatusOr<Tensor> t = view.Load(name);
        ASSERT_TRUE(t.ok()) << t.status();
        EXPECT_EQ(static_cast<const char*>(t->raw()),
                  static_cast<const char*>(t0->raw()) + e * info0->size)
            << name << " is not a view of its slice";
        if (mc.dtype != DType::kF32) continue;
        // f32: the very values of the original.
        absl::StatusOr<Tensor> want = hf.Load(name);
        ASSERT_TRUE(want.ok());
        EXPECT_EQ(std::memcmp(t->raw(), want->raw(), want->nbytes()), 0) << name;
      }
      // A row range of an expert is within its slice (what a TP rank loads).
      absl::StatusOr<Tensor> rows = view.LoadRows(first, 1, 3);
      ASSERT_TRUE(rows.ok()) << rows.status();
      EXPECT_EQ(static_cast<const char*>(rows->raw()),
                static_cast<const char*>(t0->raw()) + DTypeBytes(mc.dtype, info0->shape[1]));
    }
    // No expert past the last.
    EXPECT_TRUE(IsErrorWith(
        view.Info(MoeTensorName(mc.arch, l, config.num_experts, MoePart::kUp)).status(),
        StatusCode::kNotFound, {path, absl::StrCat("blk.", l, ".ffn_up_exps.weight"), "no slice"}));
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, GgufMoeTest,
                         ::testing::Values(MoeCase{"mixtral_f32", Arch::kMixtral, DType::kF32},
                                           MoeCase{"mixtral_q8_0", Arch::kMixtral, DType::kQ8_0},
                                           MoeCase{"qwen3_moe_f32", Arch::kQwen3Moe, DType::kF32},
                                           MoeCase{"qwen3_moe_q4_1", Arch::kQwen3Moe,
                                                   DType::kQ4_1}),
                         [](const auto& info) { return std::string(info.param.name); });

// A tiny model's GGUF, rewritten with its metadata and tensors changed by `edit`.
using Meta = std::vector<std::pair<std::string, GgufValue>>;
using Tensors = std::vector<std::pair<std::string, Tensor>>;

class GgufMoeBadLayoutTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  // The status of reading the config of `arch`'s tiny model with `edit` applied.
  absl::Status ReadEdited(Arch arch, const std::function<void(Meta&, Tensors&)>& edit) {
    const ModelConfig config = TinyMoe(arch);
    const RandomWeightSource hf(config, 7, DType::kF32);
    const std::string original = dir_.File("original.gguf");
    if (absl::Status s = ExportGguf(config, hf, original); !s.ok()) return s;
    auto file = GgufFile::Open(original);
    if (!file.ok()) return file.status();
    Meta meta((*file)->metadata().begin(), (*file)->metadata().end());
    Tensors tensors;
    for (const std::string& name : (*file)->Names()) {
      absl::StatusOr<Tensor> t = (*file)->Load(name);
      if (!t.ok()) return t.status();
      tensors.emplace_back(name, *t);
    }
    edit(meta, tensors);
    path_ = dir_.File("edited.gguf");
    if (absl::Status s = WriteGguf(path_, meta, tensors); !s.ok()) return s;
    auto edited = GgufFile::Open(path_);
    if (!edited.ok()) return edited.status();
    return ModelConfigFromGguf(**edited).status();
  }

  static void Rename(Tensors& tensors, const std::string& from, const std::string& to) {
    for (auto& [name, t] : tensors) {
      if (name == from) name = to;
    }
  }
  static void Remove(Tensors& tensors, const std::string& name) {
    std::erase_if(tensors, [&](const auto& t) { return t.first == name; });
  }
  static void Set(Meta& meta, const std::string& key, GgufValue value) {
    for (auto& [k, v] : meta) {
      if (k == key) {
        v = std::move(value);
        return;
      }
    }
    meta.emplace_back(key, std::move(value));
  }

  TempDir dir_;
  std::string path_;
};

TEST_F(GgufMoeBadLayoutTest, TheUneditedFilesRead) {
  for (Arch arch : {Arch::kMixtral, Arch::kQwen3Moe}) {
    EXPECT_TRUE(ReadEdited(arch, [](Meta&, Tensors&) {}).ok()) << ArchName(arch);
  }
}

TEST_F(GgufMoeBadLayoutTest, SharedExperts) {
  absl::Status s = ReadEdited(Arch::kQwen3Moe, [](Meta&, Tensors& t) {
    t.emplace_back("blk.0.ffn_gate_shexp.weight", Tensor::Empty({32, 64}, DType::kF32));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented,
                          {path_, "blk.0.ffn_gate_shexp.weight", "shared experts"}));
  s = ReadEdited(Arch::kQwen3Moe,
                 [](Meta& m, Tensors&) { Set(m, "qwen3moe.expert_shared_count", GgufInt(GgufType::kUint32, 1)); });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented,
                          {path_, "qwen3moe.expert_shared_count", "is 1"}));
}

TEST_F(GgufMoeBadLayoutTest, OldPerExpertTensors) {
  absl::Status s = ReadEdited(Arch::kMixtral, [](Meta&, Tensors& t) {
    Remove(t, "blk.0.ffn_gate_exps.weight");
    t.emplace_back("blk.0.ffn_gate.0.weight", Tensor::Empty({128, 64}, DType::kF32));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented,
                          {path_, "blk.0.ffn_gate.0.weight", "old Mixtral GGUF layout"}));
}

TEST_F(GgufMoeBadLayoutTest, GatingOtherThanSoftmax) {
  absl::Status s = ReadEdited(Arch::kMixtral, [](Meta& m, Tensors&) {
    Set(m, "llama.expert_gating_func", GgufInt(GgufType::kUint32, 2));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented,
                          {path_, "llama.expert_gating_func", "2 (sigmoid)", "1 (softmax)"}));
  s = ReadEdited(Arch::kQwen3Moe, [](Meta& m, Tensors&) {
    Set(m, "qwen3moe.expert_weights_scale", GgufFloat(GgufType::kFloat32, 2.5));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented,
                          {path_, "qwen3moe.expert_weights_scale", "2.5"}));
  // llama.cpp's "unset" and softmax are what we implement.
  for (int gating : {0, 1}) {
    EXPECT_TRUE(ReadEdited(Arch::kQwen3Moe, [&](Meta& m, Tensors&) {
                  Set(m, "qwen3moe.expert_gating_func", GgufInt(GgufType::kUint32, gating));
                }).ok());
  }
}

TEST_F(GgufMoeBadLayoutTest, RouterBiasIsNotImplemented) {
  absl::Status s = ReadEdited(Arch::kQwen3Moe, [](Meta&, Tensors& t) {
    t.emplace_back("blk.1.ffn_gate_inp.bias", Tensor::Empty({6}, DType::kF32));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kUnimplemented, {path_, "blk.1.ffn_gate_inp.bias"}));
}

TEST_F(GgufMoeBadLayoutTest, InconsistentBlocks) {
  // Experts without their router.
  absl::Status s = ReadEdited(Arch::kQwen3Moe, [](Meta&, Tensors& t) {
    Remove(t, "blk.1.ffn_gate_inp.weight");
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "blk.1.ffn_", "_exps.weight' has no router blk.1.ffn_gate_inp.weight"}));
  // A router without all of its experts.
  s = ReadEdited(Arch::kQwen3Moe, [](Meta&, Tensors& t) { Remove(t, "blk.0.ffn_down_exps.weight"); });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "'blk.0.ffn_down_exps.weight' is missing"}));
  // A Mixtral block without a router (Mixtral has no dense layers): its experts renamed away.
  s = ReadEdited(Arch::kMixtral, [](Meta&, Tensors& t) {
    for (const char* part : {"gate_inp", "gate_exps", "up_exps", "down_exps"}) {
      Remove(t, absl::StrCat("blk.2.ffn_", part, ".weight"));
    }
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "'blk.2.ffn_gate_inp.weight' is missing", "every block"}));
  // An expert count that the tensors do not have.
  s = ReadEdited(Arch::kMixtral, [](Meta& m, Tensors&) {
    Set(m, "llama.expert_count", GgufInt(GgufType::kUint32, 8));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "blk.0.ffn_gate_inp.weight", "shape [4, 64]", "expected [8, 64]"}));
  // Experts in a dense file: a `llama` without expert_count is Llama.
  s = ReadEdited(Arch::kMixtral, [](Meta& m, Tensors&) {
    std::erase_if(m, [](const auto& kv) { return kv.first == "llama.expert_count"; });
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "blk.0.ffn_gate_inp.weight", "dense"}));
  // More experts used than there are.
  s = ReadEdited(Arch::kQwen3Moe, [](Meta& m, Tensors&) {
    Set(m, "qwen3moe.expert_used_count", GgufInt(GgufType::kUint32, 7));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "qwen3moe.expert_used_count", "is 7", "at most"}));
  // Expert n_ff that disagrees with the tensors.
  s = ReadEdited(Arch::kQwen3Moe, [](Meta& m, Tensors&) {
    Set(m, "qwen3moe.expert_feed_forward_length", GgufInt(GgufType::kUint32, 32));
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "blk.0.ffn_gate_exps.weight", "expected [6, 32, 64]"}));
}

// Without expert_feed_forward_length, llama.cpp's defaults: feed_forward_length for `llama`,
// feed_forward_length / expert_used_count for `qwen3moe`.
TEST_F(GgufMoeBadLayoutTest, ExpertFeedForwardLengthDefaults) {
  absl::Status s = ReadEdited(Arch::kQwen3Moe, [](Meta& m, Tensors&) {
    std::erase_if(m, [](const auto& kv) { return kv.first == "qwen3moe.expert_feed_forward_length"; });
    // n_ff 192 / 3 experts used = 64, the experts' size.
    Set(m, "qwen3moe.feed_forward_length", GgufInt(GgufType::kUint32, 192));
  });
  EXPECT_TRUE(s.ok()) << s;
  s = ReadEdited(Arch::kQwen3Moe, [](Meta& m, Tensors&) {
    std::erase_if(m, [](const auto& kv) { return kv.first == "qwen3moe.expert_feed_forward_length"; });
  });
  EXPECT_TRUE(IsErrorWith(s, StatusCode::kInvalidArgument,
                          {path_, "blk.0.ffn_gate_exps.weight", "expected [6, 42, 64]"}));
}

}  // namespace
}  // namespace shardlm
