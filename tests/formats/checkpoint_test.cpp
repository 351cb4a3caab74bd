#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "io_test_util.h"
#include "formats/safetensors.h"
#include "formats/weight_source.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::nlohmann::json;
using ::shardlm::testing::At;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::MakeTensor;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::WriteBytes;
using ::testing::ElementsAre;

Tensor Filled(std::vector<int64_t> shape, float base) {
  return MakeTensor(std::move(shape), DType::kF32,
                    [base](int64_t i) { return base + static_cast<float>(i); });
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  // Two shards: a and b in the first, c in the second, plus the index naming them.
  void WriteShardedCheckpoint() {
    ASSERT_TRUE(
        WriteSafetensors(dir_.File(kShard1), {{"a", Filled({2, 3}, 0)}, {"b", Filled({4}, 100)}})
            .ok());
    ASSERT_TRUE(WriteSafetensors(dir_.File(kShard2), {{"c", Filled({3, 2}, 200)}}).ok());
    WriteIndex({{"a", kShard1}, {"b", kShard1}, {"c", kShard2}});
  }
  void WriteIndex(const json& weight_map) {
    json index = {{"metadata", {{"total_size", 68}}}, {"weight_map", weight_map}};
    WriteBytes(index_path_, index.dump(2));
  }

  static constexpr char kShard1[] = "model-00001-of-00002.safetensors";
  static constexpr char kShard2[] = "model-00002-of-00002.safetensors";
  TempDir dir_;
  const std::string index_path_ = dir_.File("model.safetensors.index.json");
};

TEST_F(CheckpointTest, SingleFileInDirectory) {
  ASSERT_TRUE(WriteSafetensors(dir_.File("model.safetensors"), {{"w", Filled({2}, 7)}}).ok());
  auto source = OpenSafetensorsCheckpoint(dir_.path());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_THAT((*source)->Names(), ElementsAre("w"));
  EXPECT_THAT((*source)->Describe(), ::testing::HasSubstr(dir_.path()));
  EXPECT_EQ(At(*(*source)->Load("w"), 1), 8.0f);
}

TEST_F(CheckpointTest, SafetensorsFilePath) {
  const std::string path = dir_.File("weights.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", Filled({2}, 7)}}).ok());
  auto source = OpenSafetensorsCheckpoint(path);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->Describe(), path);
  EXPECT_EQ(At(*(*source)->Load("w"), 0), 7.0f);
}

TEST_F(CheckpointTest, ShardedViaIndex) {
  WriteShardedCheckpoint();
  auto source = OpenSafetensorsCheckpoint(dir_.path());
  ASSERT_TRUE(source.ok()) << source.status();
  const WeightSource& s = **source;
  EXPECT_EQ(s.Describe(), dir_.path());
  EXPECT_THAT(s.Names(), ElementsAre("a", "b", "c"));

  auto info = s.Info("c");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->file, dir_.File(kShard2));
  EXPECT_EQ(s.Info("a")->file, dir_.File(kShard1));

  EXPECT_EQ(At(*s.Load("a"), 5), 5.0f);
  EXPECT_EQ(At(*s.Load("b"), 3), 103.0f);
  EXPECT_EQ(At(*s.Load("c"), 0), 200.0f);
  auto rows = s.LoadRows("c", 1, 3);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(At(*rows, 0), 202.0f);
  auto cols = s.LoadColumns("a", 2, 3);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(cols->shape(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(At(*cols, 0), 2.0f);
  EXPECT_EQ(At(*cols, 1), 5.0f);

  EXPECT_TRUE(IsErrorWith(s.Load("nope").status(), StatusCode::kNotFound, {dir_.path(), "'nope'"}));
}

TEST_F(CheckpointTest, IndexFilePath) {
  WriteShardedCheckpoint();
  auto source = OpenSafetensorsCheckpoint(index_path_);
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_THAT((*source)->Names(), ElementsAre("a", "b", "c"));
}

TEST_F(CheckpointTest, IndexWinsOverSingleFile) {
  WriteShardedCheckpoint();
  ASSERT_TRUE(WriteSafetensors(dir_.File("model.safetensors"), {{"w", Filled({2}, 7)}}).ok());
  auto source = OpenSafetensorsCheckpoint(dir_.path());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_THAT((*source)->Names(), ElementsAre("a", "b", "c"));
}

TEST_F(CheckpointTest, IndexNamesMissingShard) {
  WriteShardedCheckpoint();
  std::filesystem::remove(dir_.File(kShard2));
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(), StatusCode::kNotFound,
                          {index_path_, kShard2, "'c'"}));
}

TEST_F(CheckpointTest, IndexNamesTensorMissingFromItsShard) {
  WriteShardedCheckpoint();
  WriteIndex({{"a", kShard1}, {"b", kShard1}, {"c", kShard1}});
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {index_path_, "'c'", kShard1}));
}

TEST_F(CheckpointTest, CorruptShardNamesShardAndIndex) {
  WriteShardedCheckpoint();
  WriteBytes(dir_.File(kShard2), "junk");
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {dir_.File(kShard2), index_path_}));
}

TEST_F(CheckpointTest, IndexNotJson) {
  WriteBytes(index_path_, "{\"weight_map\": ");
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {index_path_, "not valid JSON"}));
}

TEST_F(CheckpointTest, IndexWithoutWeightMap) {
  WriteBytes(index_path_, R"({"metadata": {}})");
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {index_path_, "'weight_map'"}));
}

TEST_F(CheckpointTest, IndexEntryNotAString) {
  WriteShardedCheckpoint();
  WriteIndex({{"a", kShard1}, {"b", 3}});
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(),
                          StatusCode::kInvalidArgument, {index_path_, "'b'", "got 3"}));
}

TEST_F(CheckpointTest, EmptyDirectoryNamesBothFiles) {
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(dir_.path()).status(), StatusCode::kNotFound,
                          {dir_.path(), "model.safetensors.index.json", "model.safetensors"}));
}

TEST_F(CheckpointTest, MissingPath) {
  const std::string path = dir_.File("nothing-here");
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(path).status(), StatusCode::kNotFound, {path}));
}

TEST_F(CheckpointTest, OtherFileIsRejected) {
  const std::string path = dir_.File("weights.bin");
  WriteBytes(path, "x");
  EXPECT_TRUE(IsErrorWith(OpenSafetensorsCheckpoint(path).status(), StatusCode::kInvalidArgument,
                          {path, ".safetensors"}));
}

}  // namespace
}  // namespace shardlm
