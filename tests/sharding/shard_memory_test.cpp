// One copy of each weight in host memory: a rank's shard loaded through the shard loader onto the
// CPU backend uses the checkpoint's mapping in place where it can (whole tensors, row slices) and
// holds its pages; what it copies (row-parallel column slices) leaves no file pages behind, and
// neither do the other ranks' rows. Checked on a bf16 safetensors model and a Q8_0 GGUF, with
// /proc/self/maps (where the file is mapped) and /proc/self/pagemap (which pages are mapped).
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "formats/checkpoint_loader.h"
#include "formats/gguf_export.h"
#include "formats/random_weights.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"
#include "model/shard_loader.h"
#include "tests/formats/io_test_util.h"

namespace shardlm {
namespace {

constexpr uintptr_t kPage = 4096;

// Where `file` is mapped in this process: [begin, end) over all its mappings (0, 0 when none).
std::pair<uintptr_t, uintptr_t> MappedRange(const std::string& file) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  uintptr_t begin = 0, end = 0;
  while (std::getline(maps, line)) {
    if (line.size() < file.size() || line.compare(line.size() - file.size(), file.size(), file))
      continue;
    std::istringstream in(line);
    std::string range;
    in >> range;
    const uintptr_t b = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    const uintptr_t e = std::stoull(range.substr(range.find('-') + 1), nullptr, 16);
    if (begin == 0 || b < begin) begin = b;
    end = std::max(end, e);
  }
  return {begin, end};
}

// Mapped pages of this process among the pages that overlap [begin, end) (bit 63 of pagemap).
class Pagemap {
 public:
  Pagemap() : fd_(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)) {}
  ~Pagemap() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  size_t Present(uintptr_t begin, uintptr_t end) const {
    size_t n = 0;
    for (uintptr_t page = begin / kPage; page < (end + kPage - 1) / kPage; ++page) {
      uint64_t entry = 0;
      if (::pread(fd_, &entry, sizeof entry, static_cast<off_t>(page * 8)) == sizeof entry &&
          (entry >> 63) != 0) {
        ++n;
      }
    }
    return n;
  }
  // Pages wholly inside [begin, end).
  static size_t Inner(uintptr_t begin, uintptr_t end) {
    const uintptr_t b = (begin + kPage - 1) / kPage, e = end / kPage;
    return e > b ? e - b : 0;
  }

 private:
  int fd_;
};

uintptr_t Addr(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw()); }

class ShardMemoryTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    if (!pagemap_.ok()) GTEST_SKIP() << "/proc/self/pagemap cannot be read here";
    // Matrices of 64 KiB to 256 KiB, so that every tensor spans whole pages.
    TinyModelSpec spec;
    spec.layers = 2;
    spec.hidden = 256;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.intermediate = 512;
    spec.vocab = 512;
    spec.seed = 3;
    spec.dtype = DType::kBF16;
    ASSERT_TRUE(WriteTinyModel(spec, dir_.path()).ok());
    path_ = dir_.path();
    file_ = dir_.File("model.safetensors");
    if (GetParam() == "gguf") {
      auto config = TinyModelConfig(spec);
      ASSERT_TRUE(config.ok());
      RandomWeightSource weights(*config, spec.seed, spec.dtype);
      path_ = file_ = dir_.File("model.gguf");
      ASSERT_TRUE(ExportGguf(*config, weights, path_, DType::kQ8_0).ok());
    }
    auto checkpoint = OpenCheckpoint(path_);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    checkpoint_ = *std::move(checkpoint);
  }

  // Loads world rank `rank` of a tp-way split and checks what it holds against the mapping.
  void LoadAndCheck(int tp, int rank) {
    const ModelConfig& config = checkpoint_.config;
    auto plan = MakeShardPlan(PlanInputFor(config, tp, 1, {}, checkpoint_.weights.get()));
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto backend = CreateCpuBackend(1);
    ShardLoader loader(config, *checkpoint_.weights, backend.get());
    auto w = LoadLlamaShard(config, plan->ranks[rank], *plan, loader);
    ASSERT_TRUE(w.ok()) << w.status();
    const auto [map_begin, map_end] = MappedRange(file_);
    ASSERT_NE(map_begin, 0u) << file_ << " is not mapped";
    auto inside = [&](const Tensor& t) {
      return Addr(t) >= map_begin && Addr(t) + t.nbytes() <= map_end;
    };

    // Used in place, every page mapped: the view tensors.
    std::vector<std::pair<std::string, const Tensor*>> views = {{"embed", &w->embed->table},
                                                                {"lm_head", &w->lm_head->weight}};
    std::vector<std::pair<std::string, const Tensor*>> copies;
    for (size_t l = 0; l < w->layers.size(); ++l) {
      const LlamaLayerWeights& lw = w->layers[l];
      // Column-parallel: this rank's rows in place, unless they are stacked into one fused
      // projection ([q; k; v], [gate; up]): then the stacked copy is the one this rank holds.
      if (lw.fused_qkv) {
        copies.emplace_back(absl::StrCat("layer ", l, " qkv"), &lw.qkv.weight);
      } else {
        for (auto [name, t] : {std::pair{"q", &lw.q.weight}, {"k", &lw.k.weight},
                               {"v", &lw.v.weight}}) {
          views.emplace_back(absl::StrCat("layer ", l, " ", name), t);
        }
      }
      if (lw.fused_gate_up) {
        copies.emplace_back(absl::StrCat("layer ", l, " gate_up"), &lw.gate_up.weight);
      } else {
        for (auto [name, t] : {std::pair{"gate", &lw.gate.weight}, {"up", &lw.up.weight}}) {
          views.emplace_back(absl::StrCat("layer ", l, " ", name), t);
        }
      }
      // Row-parallel: the whole tensor at tp 1, columns that cut every row otherwise.
      for (auto [name, t] : {std::pair{"o", &lw.o.weight}, {"down", &lw.down.weight}}) {
        (tp == 1 ? views : copies).emplace_back(absl::StrCat("layer ", l, " ", name), t);
      }
    }
    // Norm vectors: f32 ones (GGUF) are used in place; 16-bit ones become f32 copies.
    std::vector<const Tensor*> norms = {&w->final_norm};
    for (const LlamaLayerWeights& lw : w->layers) {
      norms.push_back(&lw.attn_norm);
      norms.push_back(&lw.mlp_norm);
    }
    for (const Tensor* t : norms) {
      if (inside(*t)) views.emplace_back("norm", t);
    }
    size_t view_pages = 0;
    for (const auto& [name, t] : views) {
      EXPECT_TRUE(inside(*t)) << name << " " << t->ShapeString()
                              << " was copied: expected a view of " << file_;
      const size_t pages = Pagemap::Inner(Addr(*t), Addr(*t) + t->nbytes());
      EXPECT_EQ(pagemap_.Present(Addr(*t), Addr(*t) + t->nbytes()),
                (Addr(*t) + t->nbytes() + kPage - 1) / kPage - Addr(*t) / kPage)
          << name << ": not all of its pages are mapped";
      view_pages += pages + 2;
    }
    for (const auto& [name, t] : copies) {
      EXPECT_FALSE(inside(*t)) << name << ": a column slice or a stacked projection should be "
                                          "an owned copy";
    }
    // Nothing else of the file stays mapped: not the copied tensors' pages, not the other ranks'
    // rows (a page at each end of a view may be shared with its neighbour; the header is read).
    EXPECT_LE(pagemap_.Present(map_begin, map_end), view_pages + 4)
        << "of " << (map_end - map_begin) / kPage << " pages of " << file_;
    for (const std::string& name : checkpoint_.weights->Names()) {
      if (name.find("o_proj") == std::string::npos && name.find("down_proj") == std::string::npos)
        continue;
      auto info = checkpoint_.weights->Info(name);
      ASSERT_TRUE(info.ok());
      const uintptr_t b = map_begin + info->offset;
      const uintptr_t e = b + info->size;
      if (tp == 1) {
        EXPECT_EQ(pagemap_.Present(b, e), (e + kPage - 1) / kPage - b / kPage) << name;
      } else {
        EXPECT_EQ(pagemap_.Present(b + kPage, e - kPage), 0u)
            << name << ": its pages stay mapped after the copy";
      }
    }
  }

  testing::TempDir dir_;
  Pagemap pagemap_;
  std::string path_, file_;
  OpenedCheckpoint checkpoint_;
};

TEST_P(ShardMemoryTest, OneRankUsesTheMappingInPlace) { LoadAndCheck(1, 0); }

TEST_P(ShardMemoryTest, TwoRanksHoldTheirRowsAndCopyOnlyColumnSlices) { LoadAndCheck(2, 0); }

TEST_P(ShardMemoryTest, SecondRankHoldsOnlyItsOwnRows) { LoadAndCheck(2, 1); }

INSTANTIATE_TEST_SUITE_P(Formats, ShardMemoryTest, ::testing::Values("safetensors", "gguf"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace shardlm
