#include "formats/safetensors.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "io_test_util.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::shardlm::testing::At;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::Le64;
using ::shardlm::testing::MakeTensor;
using ::shardlm::testing::ReadBytes;
using ::shardlm::testing::SafetensorsBytes;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::WriteBytes;
using ::testing::ElementsAre;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  // Writes `bytes` to a file of the temp dir and opens it.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenBytes(const std::string& bytes) {
    WriteBytes(path_, bytes);
    return SafetensorsFile::Open(path_);
  }
  absl::Status OpenHeader(const std::string& header, const std::string& data) {
    return OpenBytes(SafetensorsBytes(header, data)).status();
  }

  TempDir dir_;
  const std::string path_ = dir_.File("model.safetensors");
};

// ---- Bad files: every error names the file and what is wrong with which tensor. ----

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const std::string path = dir_.File("absent.safetensors");
  EXPECT_TRUE(IsErrorWith(SafetensorsFile::Open(path).status(), StatusCode::kNotFound,
                          {path, "No such file"}));
}

TEST_F(SafetensorsTest, EmptyFile) {
  EXPECT_TRUE(IsErrorWith(OpenBytes("").status(), StatusCode::kInvalidArgument,
                          {path_, "0 bytes", "8-byte header length"}));
}

TEST_F(SafetensorsTest, FileShorterThanLengthPrefix) {
  EXPECT_TRUE(
      IsErrorWith(OpenBytes("abcde").status(), StatusCode::kInvalidArgument, {path_, "5 bytes"}));
}

TEST_F(SafetensorsTest, TruncatedDataSection) {
  Tensor w = MakeTensor({4, 4}, DType::kF32, [](int64_t i) { return static_cast<float>(i); });
  ASSERT_TRUE(WriteSafetensors(path_, {{"w", w}}).ok());
  ASSERT_TRUE(SafetensorsFile::Open(path_).ok()) << "the file is valid before truncation";
  const auto size = std::filesystem::file_size(path_);
  std::filesystem::resize_file(path_, size - 10);
  EXPECT_TRUE(
      IsErrorWith(SafetensorsFile::Open(path_).status(), StatusCode::kInvalidArgument,
                  {path_, "tensor 'w' data range [0, 64)", "(54 bytes)", "file truncated?"}));
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(Le64(1000) + "{}").status(), StatusCode::kInvalidArgument,
                          {path_, "header length 1000", "file size 10"}));
}

TEST_F(SafetensorsTest, HeaderLengthHugeDoesNotWrap) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(Le64(~uint64_t{0}) + "{}").status(),
                          StatusCode::kInvalidArgument, {path_, "header length", "file size 10"}));
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  EXPECT_TRUE(IsErrorWith(OpenHeader("{\"w\": {oops", ""), StatusCode::kInvalidArgument,
                          {path_, "not valid JSON", "parse error"}));
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  EXPECT_TRUE(IsErrorWith(OpenHeader("[1, 2]", ""), StatusCode::kInvalidArgument,
                          {path_, "expected a JSON object", "[1,2]"}));
}

TEST_F(SafetensorsTest, EntryNotAnObject) {
  EXPECT_TRUE(IsErrorWith(OpenHeader(R"({"w": 5})", ""), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "expected an object", "got 5"}));
}

class SafetensorsMissingFieldTest : public SafetensorsTest,
                                    public ::testing::WithParamInterface<const char*> {};

TEST_P(SafetensorsMissingFieldTest, EntryMissingField) {
  nlohmann::json entry = {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}};
  entry.erase(GetParam());
  nlohmann::json header = {{"w", entry}};
  EXPECT_TRUE(IsErrorWith(OpenHeader(header.dump(), std::string(8, '\0')),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", std::string("missing field '") + GetParam()}));
}

INSTANTIATE_TEST_SUITE_P(Fields, SafetensorsMissingFieldTest,
                         ::testing::Values("dtype", "shape", "data_offsets"));

TEST_F(SafetensorsTest, ShapeDisagreesWithByteRange) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}})";
  EXPECT_TRUE(
      IsErrorWith(OpenHeader(header, std::string(32, '\0')), StatusCode::kInvalidArgument,
                  {path_, "tensor 'w'", "[4, 4]", "F32", "needs 64 bytes", "hold 32 bytes"}));
}

TEST_F(SafetensorsTest, BeginAfterEnd) {
  const std::string header = R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, std::string(8, '\0')), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "[8, 4]", "begin is after end"}));
}

TEST_F(SafetensorsTest, NegativeShape) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [2, -2], "data_offsets": [0, 16]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, std::string(16, '\0')), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "'shape'", "dimension 1", "got -2"}));
}

TEST_F(SafetensorsTest, ShapeOverflowIsRejected) {
  const std::string header =
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, ""), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "more than 2^64"}));
}

TEST_F(SafetensorsTest, OverlappingRanges) {
  const std::string header = R"({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},)"
                             R"( "b": {"dtype": "F32", "shape": [16], "data_offsets": [32, 96]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, std::string(96, '\0')), StatusCode::kInvalidArgument,
                          {path_, "'a' [0, 64)", "'b' [32, 96)", "overlap"}));
}

TEST_F(SafetensorsTest, RangeInsideAnotherOverlaps) {
  // 'b' ends before 'c' starts, but 'c' lies inside 'a': the check must remember 'a'.
  const std::string header = R"({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},)"
                             R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},)"
                             R"( "c": {"dtype": "F32", "shape": [1], "data_offsets": [40, 44]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, std::string(64, '\0')), StatusCode::kInvalidArgument,
                          {path_, "'a' [0, 64)", "'b' [4, 8)", "overlap"}));
}

TEST_F(SafetensorsTest, UnknownDtype) {
  const std::string header =
      R"({"w": {"dtype": "NOT_A_DTYPE", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, std::string(8, '\0')), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "NOT_A_DTYPE", "F32"}));
}

TEST_F(SafetensorsTest, MetadataMustBeStrings) {
  const std::string header = R"({"__metadata__": {"format": 3}})";
  EXPECT_TRUE(IsErrorWith(OpenHeader(header, ""), StatusCode::kInvalidArgument,
                          {path_, "__metadata__", "'format'", "expected a string", "got 3"}));
}

// ---- Writing and reading back. ----

std::vector<std::pair<std::string, Tensor>> SampleTensors() {
  // Given out of name order, so the test can tell "data in the order given" from "sorted".
  return {
      {"z.f32", MakeTensor({2, 3}, DType::kF32, [](int64_t i) { return 0.5f * i - 1.0f; })},
      {"a.bf16", MakeTensor({4}, DType::kBF16, [](int64_t i) { return 1.0f + i; })},
      {"m.f16", MakeTensor({2, 2}, DType::kF16, [](int64_t i) { return -0.25f * i; })},
      {"empty", MakeTensor({0, 5}, DType::kF32, [](int64_t) { return 0.0f; })},
      {"scalar", MakeTensor({}, DType::kF32, [](int64_t) { return 42.0f; })},
  };
}

TEST_F(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  const auto tensors = SampleTensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "x y"}};
  ASSERT_TRUE(WriteSafetensors(path_, tensors, metadata).ok());

  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  EXPECT_EQ((*file)->Describe(), path_);
  EXPECT_THAT((*file)->Names(), ElementsAre("a.bf16", "empty", "m.f16", "scalar", "z.f32"));
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    auto info = (*file)->Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->name, name);
    EXPECT_EQ(info->file, path_);
    EXPECT_EQ(info->dtype, expected.dtype());
    EXPECT_EQ(info->shape, expected.shape());
    EXPECT_EQ(info->size, expected.nbytes());
    auto loaded = (*file)->Load(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->dtype(), expected.dtype());
    EXPECT_EQ(loaded->shape(), expected.shape());
    ASSERT_EQ(loaded->nbytes(), expected.nbytes());
    EXPECT_EQ(std::memcmp(loaded->raw(), expected.raw(), expected.nbytes()), 0);
  }
  // Values decode as written (bf16/f16 hold these exactly).
  EXPECT_EQ(At(*(*file)->Load("a.bf16"), 3), 4.0f);
  EXPECT_EQ(At(*(*file)->Load("m.f16"), 3), -0.75f);
  EXPECT_EQ(At(*(*file)->Load("scalar"), 0), 42.0f);
}

TEST_F(SafetensorsTest, WrittenLayoutIsPaddedSortedAndInGivenOrder) {
  const auto tensors = SampleTensors();
  ASSERT_TRUE(WriteSafetensors(path_, tensors, {{"format", "pt"}}).ok());
  const std::string bytes = ReadBytes(path_);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) {
    header_len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  }
  EXPECT_EQ(header_len % 8, 0u);
  const std::string header = bytes.substr(8, header_len);
  const size_t last = header.find_last_not_of(' ');
  ASSERT_NE(last, std::string::npos);
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u) << "padding is less than 8 spaces";
  // Keys sorted, metadata included.
  EXPECT_LT(header.find("\"__metadata__\""), header.find("\"a.bf16\""));
  EXPECT_LT(header.find("\"a.bf16\""), header.find("\"z.f32\""));
  // Data offsets follow the order given: z.f32 (written first) starts at 0.
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Info("z.f32")->offset, 8 + header_len);
  EXPECT_EQ((*file)->Info("a.bf16")->offset, 8 + header_len + 24);
  EXPECT_EQ((*file)->Info("m.f16")->offset, 8 + header_len + 24 + 8);
  EXPECT_EQ(bytes.size(), 8 + header_len + 24 + 8 + 8 + 0 + 4);

  // A pure function of the inputs, and no temporary file is left behind.
  const std::string other = dir_.File("again.safetensors");
  ASSERT_TRUE(WriteSafetensors(other, tensors, {{"format", "pt"}}).ok());
  EXPECT_EQ(ReadBytes(other), bytes);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 2);
}

TEST_F(SafetensorsTest, WriteReplacesExistingFile) {
  WriteBytes(path_, "old contents");
  ASSERT_TRUE(WriteSafetensors(path_, SampleTensors()).ok());
  EXPECT_TRUE(SafetensorsFile::Open(path_).ok());
}

TEST_F(SafetensorsTest, WriteErrorsNameThePath) {
  const std::string bad = dir_.File("no/such/dir/model.safetensors");
  EXPECT_TRUE(IsErrorWith(WriteSafetensors(bad, SampleTensors()), StatusCode::kNotFound, {bad}));
  Tensor t = MakeTensor({1}, DType::kF32, [](int64_t) { return 1.0f; });
  EXPECT_TRUE(IsErrorWith(WriteSafetensors(path_, {{"w", t}, {"w", t}}),
                          StatusCode::kInvalidArgument, {path_, "tensor 'w'", "twice"}));
  EXPECT_FALSE(std::filesystem::exists(path_));
}

TEST_F(SafetensorsTest, LoadIsAViewIntoOneMapping) {
  ASSERT_TRUE(WriteSafetensors(path_, SampleTensors()).ok());
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  Tensor z = *(*file)->Load("z.f32");
  Tensor a = *(*file)->Load("a.bf16");
  // Two loads are placed exactly as far apart as their file offsets: both point into the map.
  EXPECT_EQ(
      static_cast<const char*>(a.raw()) - static_cast<const char*>(z.raw()),
      static_cast<ptrdiff_t>((*file)->Info("a.bf16")->offset - (*file)->Info("z.f32")->offset));
  EXPECT_EQ(z.holder().get(), a.holder().get()) << "both hold the same mapping";
  EXPECT_EQ(reinterpret_cast<uintptr_t>(z.raw()) % 4, 0u) << "f32 data is aligned";
}

TEST_F(SafetensorsTest, LoadRowsIsAViewOfThoseRows) {
  Tensor w = MakeTensor({5, 3}, DType::kF32, [](int64_t i) { return static_cast<float>(i); });
  ASSERT_TRUE(WriteSafetensors(path_, {{"w", w}}).ok());
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  Tensor full = *(*file)->Load("w");
  auto rows = (*file)->LoadRows("w", 1, 4);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape(), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(rows->data<float>(), full.data<float>() + 3) << "row 1 starts 3 floats in: no copy";
  EXPECT_EQ(rows->holder().get(), full.holder().get());
  EXPECT_EQ(At(*rows, 0), 3.0f);
  EXPECT_EQ(At(*rows, 8), 11.0f);

  auto empty = (*file)->LoadRows("w", 5, 5);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->shape(), (std::vector<int64_t>{0, 3}));
}

TEST_F(SafetensorsTest, LoadRowsOfAVectorAreElements) {
  Tensor v = MakeTensor({6}, DType::kBF16, [](int64_t i) { return static_cast<float>(i); });
  ASSERT_TRUE(WriteSafetensors(path_, {{"v", v}}).ok());
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  auto rows = (*file)->LoadRows("v", 2, 5);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape(), (std::vector<int64_t>{3}));
  EXPECT_EQ(rows->data<uint16_t>(), (*file)->Load("v")->data<uint16_t>() + 2);
  EXPECT_EQ(At(*rows, 0), 2.0f);
  EXPECT_EQ(At(*rows, 2), 4.0f);
}

TEST_F(SafetensorsTest, LoadColumnsCopiesThoseColumns) {
  // w[r][c] = 10 r + c
  Tensor w = MakeTensor({3, 4}, DType::kF32,
                        [](int64_t i) { return static_cast<float>(10 * (i / 4) + i % 4); });
  ASSERT_TRUE(WriteSafetensors(path_, {{"w", w}}).ok());
  auto file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  auto cols = (*file)->LoadColumns("w", 1, 3);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(cols->shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(cols->dtype(), DType::kF32);
  std::vector<float> got(cols->data<float>(), cols->data<float>() + 6);
  EXPECT_THAT(got, ElementsAre(1, 2, 11, 12, 21, 22));
  EXPECT_NE(cols->holder().get(), (*file)->Load("w")->holder().get()) << "an owned copy";

  Tensor h = MakeTensor({2, 3}, DType::kF16, [](int64_t i) { return static_cast<float>(i); });
  ASSERT_TRUE(WriteSafetensors(path_, {{"h", h}}).ok());
  file = SafetensorsFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  auto last = (*file)->LoadColumns("h", 2, 3);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->shape(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(At(*last, 0), 2.0f);
  EXPECT_EQ(At(*last, 1), 5.0f);
}

TEST_F(SafetensorsTest, TensorsOutliveTheFileObject) {
  ASSERT_TRUE(WriteSafetensors(path_, SampleTensors()).ok());
  Tensor z;
  {
    auto file = SafetensorsFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    z = *(*file)->LoadRows("z.f32", 1, 2);
  }
  EXPECT_EQ(At(z, 0), 0.5f);  // element 3 of z.f32
}

TEST_F(SafetensorsTest, MisalignedDataIsCopiedToAlignedMemory) {
  // A hand-made file whose unpadded header length puts the f32 data at an odd address.
  float values[2] = {1.5f, -2.0f};
  std::string data(8, '\0');
  std::memcpy(data.data(), values, 8);
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  ASSERT_NE((8 + header.size()) % 4, 0u) << "the data must start misaligned";
  auto file = OpenBytes(SafetensorsBytes(header, data));
  ASSERT_TRUE(file.ok()) << file.status();
  auto w = (*file)->Load("w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w->raw()) % 4, 0u);
  EXPECT_EQ(At(*w, 0), 1.5f);
  EXPECT_EQ(At(*w, 1), -2.0f);
}

// ---- Bad requests on a good file. ----

class SafetensorsLoadErrorTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    ASSERT_TRUE(WriteSafetensors(path_, SampleTensors()).ok());
    auto file = SafetensorsFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = *std::move(file);
  }
  std::unique_ptr<SafetensorsFile> file_;
};

TEST_F(SafetensorsLoadErrorTest, UnknownNameIsNotFound) {
  EXPECT_TRUE(IsErrorWith(file_->Load("nope").status(), StatusCode::kNotFound, {path_, "'nope'"}));
  EXPECT_TRUE(IsErrorWith(file_->Info("nope").status(), StatusCode::kNotFound, {path_, "'nope'"}));
  EXPECT_TRUE(
      IsErrorWith(file_->LoadRows("nope", 0, 1).status(), StatusCode::kNotFound, {"'nope'"}));
  EXPECT_TRUE(
      IsErrorWith(file_->LoadColumns("nope", 0, 1).status(), StatusCode::kNotFound, {"'nope'"}));
}

TEST_F(SafetensorsLoadErrorTest, RowsOutOfRange) {
  EXPECT_TRUE(IsErrorWith(file_->LoadRows("z.f32", 1, 3).status(), StatusCode::kInvalidArgument,
                          {path_, "'z.f32'", "[1, 3)", "[0, 2)"}));
  EXPECT_TRUE(IsErrorWith(file_->LoadRows("z.f32", -1, 1).status(), StatusCode::kInvalidArgument,
                          {"'z.f32'", "[-1, 1)"}));
  EXPECT_TRUE(IsErrorWith(file_->LoadRows("z.f32", 2, 1).status(), StatusCode::kInvalidArgument,
                          {"'z.f32'", "[2, 1)"}));
  EXPECT_TRUE(IsErrorWith(file_->LoadRows("scalar", 0, 1).status(), StatusCode::kInvalidArgument,
                          {path_, "'scalar'", "no rows"}));
}

TEST_F(SafetensorsLoadErrorTest, ColumnsOutOfRangeOrNot2D) {
  EXPECT_TRUE(IsErrorWith(file_->LoadColumns("z.f32", 2, 4).status(), StatusCode::kInvalidArgument,
                          {path_, "'z.f32'", "[2, 4)", "[0, 3)"}));
  EXPECT_TRUE(IsErrorWith(file_->LoadColumns("a.bf16", 0, 1).status(), StatusCode::kInvalidArgument,
                          {path_, "'a.bf16'", "[4]", "2-D"}));
}

}  // namespace
}  // namespace shardlm
