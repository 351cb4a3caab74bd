// GGUF reader and writer: round trips of every metadata type and of tensors, the writer's exact
// layout, and reading real files made by llama.cpp (skipped when absent).
#include "formats/gguf.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "formats/gguf_model.h"
#include "formats/gguf_writer.h"
#include "gguf_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "io_test_util.h"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::shardlm::testing::At;
using ::shardlm::testing::F32Bytes;
using ::shardlm::testing::GgufHeader;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::KvU32;
using ::shardlm::testing::MakeTensor;
using ::shardlm::testing::PadTo;
using ::shardlm::testing::ReadBytes;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::TensorInfoBytes;
using ::shardlm::testing::U32;
using ::shardlm::testing::U64;
using ::testing::ElementsAre;

// Field-by-field equality of two values, naming where they first differ.
::testing::AssertionResult SameValue(const GgufValue& a, const GgufValue& b,
                                     const std::string& where) {
  auto differ = [&](const std::string& what) {
    return ::testing::AssertionFailure() << where << ": " << what << " differs";
  };
  if (a.type != b.type) return differ("type");
  if (a.i != b.i) return differ("i");
  if (a.u != b.u) return differ("u");
  if (a.f != b.f) return differ("f");
  if (a.b != b.b) return differ("b");
  if (a.s != b.s) return differ("s");
  if (a.type == GgufType::kArray && a.array_type != b.array_type) return differ("array_type");
  if (a.array.size() != b.array.size()) return differ("array size");
  for (size_t k = 0; k < a.array.size(); ++k) {
    auto r = SameValue(a.array[k], b.array[k], where + "[" + std::to_string(k) + "]");
    if (!r) return r;
  }
  return ::testing::AssertionSuccess();
}

// Every value type, with values at the edges of their ranges.
std::vector<std::pair<std::string, GgufValue>> AllTypesMetadata() {
  std::vector<GgufValue> nested_ints = {
      GgufArray(GgufType::kInt32, {GgufInt(GgufType::kInt32, 1), GgufInt(GgufType::kInt32, -2)}),
      GgufArray(GgufType::kInt32, {}), GgufArray(GgufType::kInt32, {GgufInt(GgufType::kInt32, 3)})};
  std::vector<GgufValue> nested_strings = {GgufStringArray({"a", ""}), GgufStringArray({"bc"})};
  return {
      {"general.architecture", GgufString("llama")},
      {"t.u8", GgufInt(GgufType::kUint8, 255)},
      {"t.i8", GgufInt(GgufType::kInt8, -128)},
      {"t.u16", GgufInt(GgufType::kUint16, 65535)},
      {"t.i16", GgufInt(GgufType::kInt16, -32768)},
      {"t.u32", GgufInt(GgufType::kUint32, 4294967295LL)},
      {"t.i32", GgufInt(GgufType::kInt32, std::numeric_limits<int32_t>::min())},
      {"t.f32", GgufFloat(GgufType::kFloat32, 1e-5)},
      {"t.bool", GgufBool(true)},
      {"t.false", GgufBool(false)},
      {"t.string", GgufString("h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c\n\t")},
      {"t.empty_string", GgufString("")},
      {"t.u64", GgufUint64(std::numeric_limits<uint64_t>::max())},
      {"t.u64_small", GgufUint64(42)},
      {"t.i64", GgufInt(GgufType::kInt64, std::numeric_limits<int64_t>::min())},
      {"t.f64", GgufFloat(GgufType::kFloat64, 3.141592653589793)},
      {"t.array_u8",
       GgufArray(GgufType::kUint8, {GgufInt(GgufType::kUint8, 0), GgufInt(GgufType::kUint8, 200)})},
      {"t.array_f32", GgufArray(GgufType::kFloat32, {GgufFloat(GgufType::kFloat32, 0.5),
                                                     GgufFloat(GgufType::kFloat32, -0.1)})},
      {"t.array_i64", GgufArray(GgufType::kInt64, {GgufInt(GgufType::kInt64, -7)})},
      {"t.array_bool", GgufArray(GgufType::kBool, {GgufBool(true), GgufBool(false)})},
      {"t.array_strings", GgufStringArray({"<s>", "", "\xe2\x96\x81the"})},
      {"t.array_empty", GgufArray(GgufType::kFloat64, {})},
      {"t.array_of_arrays", GgufArray(GgufType::kArray, nested_ints)},
      {"t.array_of_string_arrays", GgufArray(GgufType::kArray, nested_strings)},
      {"t.array_u64", GgufArray(GgufType::kUint64, {GgufUint64(1), GgufUint64(1ULL << 63)})},
  };
}

class GgufRoundTripTest : public ::testing::TestWithParam<std::tuple<uint32_t, uint64_t>> {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  TempDir dir_;
  const std::string path_ = dir_.File("model.gguf");
};

TEST_P(GgufRoundTripTest, EveryMetadataType) {
  const auto [version, alignment] = GetParam();
  const auto metadata = AllTypesMetadata();
  ASSERT_TRUE(WriteGguf(path_, metadata, {}, version, alignment).ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->version(), version);
  EXPECT_EQ((*file)->alignment(), alignment);
  // The writer adds general.alignment when it is not the default.
  EXPECT_EQ((*file)->metadata().size(), metadata.size() + (alignment == 32 ? 0 : 1));
  for (const auto& [key, value] : metadata) {
    const GgufValue* got = (*file)->Find(key);
    ASSERT_NE(got, nullptr) << key;
    EXPECT_TRUE(SameValue(*got, value, key));
  }
  EXPECT_TRUE((*file)->Names().empty());
}

TEST_P(GgufRoundTripTest, TypedGetters) {
  const auto [version, alignment] = GetParam();
  ASSERT_TRUE(WriteGguf(path_, AllTypesMetadata(), {}, version, alignment).ok());
  auto file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetInt("t.u8"), 255);
  EXPECT_EQ(*f.GetInt("t.i8"), -128);
  EXPECT_EQ(*f.GetInt("t.u32"), 4294967295LL);
  EXPECT_EQ(*f.GetInt("t.u64_small"), 42);
  EXPECT_EQ(*f.GetInt("t.i64"), std::numeric_limits<int64_t>::min());
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat("t.f32")), 1e-5f);
  EXPECT_EQ(*f.GetFloat("t.f64"), 3.141592653589793);
  EXPECT_EQ(*f.GetFloat("t.i16"), -32768.0);  // integers convert to double
  EXPECT_TRUE(*f.GetBool("t.bool"));
  EXPECT_FALSE(*f.GetBool("t.false"));
  EXPECT_THAT(*f.GetStringArray("t.array_strings"), ElementsAre("<s>", "", "\xe2\x96\x81the"));
  EXPECT_THAT(*f.GetFloatArray("t.array_f32"), ElementsAre(0.5, static_cast<float>(-0.1)));
  EXPECT_THAT(*f.GetFloatArray("t.array_u8"), ElementsAre(0.0, 200.0));
  EXPECT_THAT(*f.GetIntArray("t.array_u8"), ElementsAre(0, 200));
  EXPECT_THAT(*f.GetIntArray("t.array_i64"), ElementsAre(-7));
  const GgufValue* nested = f.Find("t.array_of_arrays");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->array.size(), 3u);
  EXPECT_EQ(nested->array[0].array[1].i, -2);
  EXPECT_EQ(f.Find("t.array_of_string_arrays")->array[1].array[0].s, "bc");

  // A uint64 past INT64_MAX is a double but not an int64.
  EXPECT_EQ(*f.GetFloat("t.u64"), 18446744073709551615.0);
  EXPECT_TRUE(IsErrorWith(f.GetInt("t.u64").status(), StatusCode::kInvalidArgument,
                          {path_, "'t.u64'", "18446744073709551615", "does not fit in int64"}));
  EXPECT_TRUE(IsErrorWith(f.GetIntArray("t.array_u64").status(), StatusCode::kInvalidArgument,
                          {path_, "'t.array_u64'", "element 1"}));
  EXPECT_TRUE(IsErrorWith(f.GetBool("t.u8").status(), StatusCode::kInvalidArgument,
                          {path_, "'t.u8'", "expected bool", "got uint8"}));
  EXPECT_TRUE(
      IsErrorWith(f.GetStringArray("t.array_f32").status(), StatusCode::kInvalidArgument,
                  {path_, "'t.array_f32'", "expected array of string", "got array of float32"}));
  EXPECT_TRUE(IsErrorWith(f.GetIntArray("t.array_f32").status(), StatusCode::kInvalidArgument,
                          {path_, "expected array of integer", "got array of float32"}));
  EXPECT_TRUE(IsErrorWith(f.GetFloat("t.string").status(), StatusCode::kInvalidArgument,
                          {path_, "'t.string'", "got string"}));
}

// Raw quantized blocks: the reader must hand back exactly these bytes.
Tensor RandomBlocks(std::vector<int64_t> shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::Empty(std::move(shape), dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t k = 0; k < t.nbytes(); ++k) p[k] = static_cast<unsigned char>(rng());
  return t;
}

std::string Bytes(const Tensor& t) {
  return std::string(static_cast<const char*>(t.raw()), t.nbytes());
}

TEST_P(GgufRoundTripTest, Tensors) {
  const auto [version, alignment] = GetParam();
  auto iota = [](int64_t i) { return static_cast<float>(i) * 0.5f - 3.0f; };
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"f32", MakeTensor({3, 5}, DType::kF32, iota)},
      {"f16", MakeTensor({4, 8}, DType::kF16, iota)},
      {"bf16", MakeTensor({2, 3, 4}, DType::kBF16, iota)},
      {"norm", MakeTensor({7}, DType::kF32, iota)},
      {"q8_0", RandomBlocks({4, 64}, DType::kQ8_0, 1)},
      {"q4_k", RandomBlocks({3, 512}, DType::kQ4_K, 2)},
      {"q5_0", RandomBlocks({3, 96}, DType::kQ5_0, 3)},  // 22-byte blocks: 2-byte aligned
      {"q5_1", RandomBlocks({2, 64}, DType::kQ5_1, 4)},
  };
  ASSERT_TRUE(
      WriteGguf(path_, {{"general.architecture", GgufString("llama")}}, tensors, version, alignment)
          .ok());
  auto file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_THAT(f.Names(), ElementsAre("bf16", "f16", "f32", "norm", "q4_k", "q5_0", "q5_1", "q8_0"));
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    absl::StatusOr<TensorInfo> info = f.Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->shape, t.shape());
    EXPECT_EQ(info->dtype, t.dtype());
    EXPECT_EQ(info->size, t.nbytes());
    EXPECT_EQ(info->file, path_);
    EXPECT_EQ(info->offset % alignment, 0u);
    absl::StatusOr<Tensor> loaded = f.Load(name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->shape(), t.shape());
    EXPECT_EQ(loaded->dtype(), t.dtype());
    EXPECT_EQ(Bytes(*loaded), Bytes(t));
    // A view into the mapping: loading twice gives the same memory.
    EXPECT_EQ(f.Load(name)->raw(), loaded->raw());
  }

  // Rows: views at the right place, for float and quantized types.
  Tensor q8_all = *f.Load("q8_0");
  absl::StatusOr<Tensor> q8_rows = f.LoadRows("q8_0", 1, 3);
  ASSERT_TRUE(q8_rows.ok()) << q8_rows.status();
  EXPECT_EQ(q8_rows->shape(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(q8_rows->raw(), static_cast<char*>(q8_all.raw()) + 2 * 34);
  EXPECT_EQ(Bytes(*q8_rows), Bytes(tensors[4].second).substr(2 * 34, 2 * 2 * 34));
  Tensor q5_all = *f.Load("q5_0");
  absl::StatusOr<Tensor> q5_rows = f.LoadRows("q5_0", 1, 3);
  ASSERT_TRUE(q5_rows.ok()) << q5_rows.status();
  EXPECT_EQ(q5_rows->dtype(), DType::kQ5_0);
  EXPECT_EQ(q5_rows->raw(), static_cast<char*>(q5_all.raw()) + 66);  // 3 blocks of 22 per row
  EXPECT_EQ(Bytes(*q5_rows), Bytes(tensors[6].second).substr(66, 2 * 66));
  absl::StatusOr<Tensor> bf16_rows = f.LoadRows("bf16", 1, 2);
  ASSERT_TRUE(bf16_rows.ok());
  EXPECT_EQ(bf16_rows->shape(), (std::vector<int64_t>{1, 3, 4}));
  EXPECT_EQ(At(*bf16_rows, 0), iota(12));
  EXPECT_EQ(f.LoadRows("norm", 2, 2)->numel(), 0);

  // Columns: owned copies; any column for float types, block boundaries for quantized ones.
  absl::StatusOr<Tensor> f32_cols = f.LoadColumns("f32", 1, 4);
  ASSERT_TRUE(f32_cols.ok()) << f32_cols.status();
  EXPECT_EQ(f32_cols->shape(), (std::vector<int64_t>{3, 3}));
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(f32_cols->data<float>()[r * 3 + c], iota(r * 5 + c + 1));
  }
  absl::StatusOr<Tensor> f16_cols = f.LoadColumns("f16", 7, 8);
  ASSERT_TRUE(f16_cols.ok());
  EXPECT_EQ(At(*f16_cols, 3), iota(3 * 8 + 7));
  absl::StatusOr<Tensor> q8_cols = f.LoadColumns("q8_0", 32, 64);
  ASSERT_TRUE(q8_cols.ok()) << q8_cols.status();
  EXPECT_EQ(q8_cols->shape(), (std::vector<int64_t>{4, 32}));
  const std::string q8_bytes = Bytes(tensors[4].second);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(Bytes(*q8_cols).substr(r * 34, 34), q8_bytes.substr(r * 68 + 34, 34)) << r;
  }
  absl::StatusOr<Tensor> q4k_cols = f.LoadColumns("q4_k", 256, 512);
  ASSERT_TRUE(q4k_cols.ok()) << q4k_cols.status();
  const std::string q4k_bytes = Bytes(tensors[5].second);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(Bytes(*q4k_cols).substr(r * 144, 144), q4k_bytes.substr(r * 288 + 144, 144)) << r;
  }
  absl::StatusOr<Tensor> q5_cols = f.LoadColumns("q5_0", 32, 96);
  ASSERT_TRUE(q5_cols.ok()) << q5_cols.status();
  EXPECT_EQ(q5_cols->shape(), (std::vector<int64_t>{3, 64}));
  const std::string q5_bytes = Bytes(tensors[6].second);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(Bytes(*q5_cols).substr(r * 44, 44), q5_bytes.substr(r * 66 + 22, 44)) << r;
  }
  absl::StatusOr<Tensor> q51_cols = f.LoadColumns("q5_1", 0, 32);
  ASSERT_TRUE(q51_cols.ok()) << q51_cols.status();
  const std::string q51_bytes = Bytes(tensors[7].second);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(Bytes(*q51_cols).substr(r * 24, 24), q51_bytes.substr(r * 48, 24)) << r;
  }
  EXPECT_EQ(f.LoadColumns("q8_0", 0, 0)->numel(), 0);

  // Errors name the file, the tensor and the problem.
  EXPECT_TRUE(IsErrorWith(f.LoadColumns("q8_0", 1, 33).status(), StatusCode::kInvalidArgument,
                          {path_, "'q8_0'", "columns [1, 33)", "Q8_0 block", "32"}));
  EXPECT_TRUE(IsErrorWith(f.LoadColumns("q4_k", 0, 128).status(), StatusCode::kInvalidArgument,
                          {path_, "'q4_k'", "Q4_K block", "256"}));
  EXPECT_TRUE(IsErrorWith(f.LoadColumns("bf16", 0, 1).status(), StatusCode::kInvalidArgument,
                          {path_, "'bf16'", "need a 2-D tensor"}));
  EXPECT_TRUE(IsErrorWith(f.LoadColumns("f32", 2, 6).status(), StatusCode::kInvalidArgument,
                          {path_, "'f32'", "not within [0, 5)"}));
  EXPECT_TRUE(IsErrorWith(f.LoadRows("q8_0", 3, 5).status(), StatusCode::kInvalidArgument,
                          {path_, "'q8_0'", "rows [3, 5)", "not within [0, 4)"}));
  EXPECT_TRUE(IsErrorWith(f.LoadRows("q8_0", -1, 1).status(), StatusCode::kInvalidArgument,
                          {path_, "'q8_0'"}));
  EXPECT_TRUE(IsErrorWith(f.Load("absent").status(), StatusCode::kNotFound,
                          {path_, "no tensor named 'absent'"}));
}

INSTANTIATE_TEST_SUITE_P(VersionsAndAlignments, GgufRoundTripTest,
                         ::testing::Combine(::testing::Values(2u, 3u),
                                            ::testing::Values(uint64_t{32}, uint64_t{64})),
                         [](const auto& info) {
                           return "v" + std::to_string(std::get<0>(info.param)) + "_align" +
                                  std::to_string(std::get<1>(info.param));
                         });

// GgufHfView lists the HF names that its Info and Load accept (it listed the GGUF names, which
// every look-up refused: found by tests/fuzz/gguf_fuzz.cpp). GGUF tensors without an HF name
// (rope_freqs.weight, a layer number not written as GgufTensorName writes it) are left out.
TEST(GgufHfViewTest, NamesAreTheHfNamesItLoads) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("hf.gguf");
  Tensor w = Tensor::Empty({2, 4}, DType::kF32);
  ASSERT_TRUE(WriteGguf(path, {},
                        {{"token_embd.weight", w},
                         {"output.weight", w},
                         {"blk.0.attn_q.weight", w},
                         {"blk.12.ffn_down.weight", w},
                         {"blk.01.attn_k.weight", w},
                         {"blk.0.unknown.weight", w},
                         {"rope_freqs.weight", w}})
                  .ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufHfView view(**file);
  EXPECT_THAT(view.Names(), ::testing::ElementsAre("lm_head.weight", "model.embed_tokens.weight",
                                                   "model.layers.0.self_attn.q_proj.weight",
                                                   "model.layers.12.mlp.down_proj.weight"));
  for (const std::string& name : view.Names()) {
    absl::StatusOr<TensorInfo> info = view.Info(name);
    ASSERT_TRUE(info.ok()) << name << ": " << info.status();
    EXPECT_EQ(info->shape, (std::vector<int64_t>{2, 4})) << name;
    EXPECT_TRUE(view.Load(name).ok()) << name;
  }
  EXPECT_EQ(HfTensorName("blk.3.ffn_up.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(HfTensorName("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(HfTensorName("blk.x.ffn_up.weight"), "");
  EXPECT_EQ(HfTensorName("blk.3"), "");
}

// A 1-D quantized tensor's "rows" are single elements: they can only be cut on block boundaries.
TEST(GgufRowsTest, OneDimensionalQuantized) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.File("q.gguf");
  Tensor q = RandomBlocks({96}, DType::kQ8_0, 5);
  ASSERT_TRUE(WriteGguf(path, {}, {{"q", q}}).ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<Tensor> rows = (*file)->LoadRows("q", 32, 96);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape(), (std::vector<int64_t>{64}));
  EXPECT_EQ(Bytes(*rows), Bytes(q).substr(34));
  EXPECT_TRUE(IsErrorWith((*file)->LoadRows("q", 1, 33).status(), StatusCode::kInvalidArgument,
                          {path, "tensor 'q'", "rows [1, 33)", "Q8_0 block boundaries"}));
}

class GgufWriterTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  TempDir dir_;
  const std::string path_ = dir_.File("model.gguf");
};

// The writer's bytes against the format spelled out by hand: catches a writer and reader that
// agree with each other but not with GGUF.
TEST_F(GgufWriterTest, ExactLayout) {
  Tensor w = MakeTensor({2, 3}, DType::kF32, [](int64_t i) { return static_cast<float>(i); });
  Tensor n = MakeTensor({2}, DType::kF32, [](int64_t i) { return 10.0f + i; });
  ASSERT_TRUE(
      WriteGguf(path_, {{"a.n", GgufInt(GgufType::kUint32, 7)}}, {{"w", w}, {"n", n}}).ok());
  std::string expected = GgufHeader(2, 1) + KvU32("a.n", 7) + TensorInfoBytes("w", {3, 2}, 0, 0) +
                         TensorInfoBytes("n", {2}, 0, 32);
  expected = PadTo(expected, 32);
  std::string data;
  for (int i = 0; i < 6; ++i) data += F32Bytes(static_cast<float>(i));
  expected += PadTo(data, 32) + PadTo(F32Bytes(10) + F32Bytes(11), 32);
  EXPECT_EQ(ReadBytes(path_), expected);
}

TEST_F(GgufWriterTest, DeterministicAndOverwrites) {
  const auto metadata = AllTypesMetadata();
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"q", RandomBlocks({2, 32}, DType::kQ8_0, 3)}};
  ASSERT_TRUE(WriteGguf(path_, metadata, tensors).ok());
  const std::string first = ReadBytes(path_);
  ASSERT_TRUE(WriteGguf(path_, metadata, tensors).ok());
  EXPECT_EQ(ReadBytes(path_), first);
  // Nothing but the file itself is left behind.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path()))
    entries += !e.is_directory();
  EXPECT_EQ(entries, 1);
}

TEST_F(GgufWriterTest, RejectsBadInput) {
  Tensor w = MakeTensor({2, 3}, DType::kF32, [](int64_t) { return 0.0f; });
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {}, {{"w", w}, {"w", w}}), StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "given twice"}));
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {{"k", GgufBool(true)}, {"k", GgufBool(false)}}, {}),
                          StatusCode::kInvalidArgument, {path_, "metadata key 'k'", "twice"}));
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {{"k", GgufInt(GgufType::kUint8, 256)}}, {}),
                          StatusCode::kInvalidArgument, {path_, "'k'", "256", "uint8"}));
  EXPECT_TRUE(
      IsErrorWith(WriteGguf(path_, {{"k", GgufArray(GgufType::kInt32, {GgufString("x")})}}, {}),
                  StatusCode::kInvalidArgument, {path_, "'k'", "element 0", "string", "int32"}));
  GgufValue only_i;  // a uint64 built by setting only `i`
  only_i.type = GgufType::kUint64;
  only_i.i = 5;
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {{"k", only_i}}, {}), StatusCode::kInvalidArgument,
                          {path_, "'k'", "uint64"}));
  EXPECT_TRUE(IsErrorWith(
      WriteGguf(path_, {}, {{"q", RandomBlocks({2, 32}, DType::kQ8_0, 0).Reshape({4, 16})}}),
      StatusCode::kInvalidArgument, {path_, "tensor 'q'", "block size 32"}));
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {}, {{"w", w}}, 1), StatusCode::kInvalidArgument,
                          {path_, "version 1"}));
  EXPECT_TRUE(IsErrorWith(WriteGguf(path_, {}, {{"w", w}}, 3, 48), StatusCode::kInvalidArgument,
                          {path_, "alignment 48"}));
  EXPECT_TRUE(IsErrorWith(
      WriteGguf(path_, {{"general.alignment", GgufInt(GgufType::kUint32, 64)}}, {}, 3, 32),
      StatusCode::kInvalidArgument, {path_, "general.alignment", "32"}));
  EXPECT_FALSE(std::filesystem::exists(path_));
}

// ---- Real files written by llama.cpp's gguf-py (skipped when the assets are absent).

std::string AssetsDir() {
  if (const char* env = std::getenv("SHARDLM_ASSETS"); env != nullptr && *env != '\0') return env;
  return SHARDLM_ASSETS_DEFAULT;
}

struct VocabCase {
  const char* name;
  const char* model;  // tokenizer.ggml.model
  size_t tokens;      // from the assets README
  bool has_merges;
};

class GgufVocabFileTest : public ::testing::TestWithParam<VocabCase> {};

TEST_P(GgufVocabFileTest, ReadsTokenizerMetadata) {
  const VocabCase& c = GetParam();
  const std::string path = AssetsDir() + "/tokenizer-vectors/ggml-vocab-" + c.name + ".gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent (set SHARDLM_ASSETS to the shared assets folder)";
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_TRUE(f.Names().empty());
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), c.model);
  absl::StatusOr<std::vector<std::string>> tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ(tokens->size(), c.tokens);
  absl::StatusOr<std::vector<int64_t>> types = f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok()) << types.status();
  EXPECT_EQ(types->size(), c.tokens);
  EXPECT_EQ(f.Find("tokenizer.ggml.merges") != nullptr, c.has_merges);
  if (!c.has_merges) {
    EXPECT_EQ(f.GetFloatArray("tokenizer.ggml.scores")->size(), c.tokens);
    EXPECT_EQ((*tokens)[1], "<s>");
  }
  EXPECT_TRUE(f.GetInt("tokenizer.ggml.bos_token_id").ok());
  EXPECT_TRUE(f.GetString("general.architecture").ok());
}

INSTANTIATE_TEST_SUITE_P(Assets, GgufVocabFileTest,
                         ::testing::Values(VocabCase{"gpt-2", "gpt2", 50257, true},
                                           VocabCase{"llama-spm", "llama", 32000, false},
                                           VocabCase{"phi-3", "llama", 32064, false},
                                           VocabCase{"deepseek-llm", "gpt2", 102400, true}),
                         [](const auto& info) {
                           std::string name = info.param.name;
                           for (char& ch : name) ch = ch == '-' ? '_' : ch;
                           return name;
                         });

// The default real model (CI fetches it with scripts/get-model.sh). Expected values from its
// model card (SmolLM2-135M: 30 layers, 9 heads, 3 KV heads, width 576, vocabulary 49152).
TEST(GgufRealModelTest, SmolLM2) {
  const std::string path =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent (scripts/get-model.sh fetches it)";
  }
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetInt("llama.block_count"), 30);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count"), 9);
  EXPECT_EQ(*f.GetInt("llama.attention.head_count_kv"), 3);
  EXPECT_EQ(*f.GetInt("llama.embedding_length"), 576);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), 49152u);
  // 9 tensors per layer, plus token_embd and output_norm (the output matrix is tied).
  EXPECT_EQ(f.Names().size(), 30u * 9 + 2);

  absl::StatusOr<TensorInfo> embd = f.Info("token_embd.weight");
  ASSERT_TRUE(embd.ok()) << embd.status();
  EXPECT_EQ(embd->shape, (std::vector<int64_t>{49152, 576}));
  absl::StatusOr<TensorInfo> q = f.Info("blk.0.attn_q.weight");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->shape, (std::vector<int64_t>{576, 576}));
  EXPECT_EQ(f.Info("blk.0.attn_k.weight")->shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(f.Info("blk.0.ffn_down.weight")->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(f.Info("output_norm.weight")->shape, (std::vector<int64_t>{576}));

  std::map<std::string, int> types;
  for (const std::string& name : f.Names()) ++types[DTypeName(f.Info(name)->dtype)];
  std::cout << "SmolLM2 tensor types:";
  for (const auto& [type, count] : types) std::cout << " " << type << " x" << count;
  std::cout << "\n";
  // Counted independently by a Python dump of the header.
  EXPECT_EQ(types, (std::map<std::string, int>{{"F32", 61}, {"Q4_1", 210}, {"Q8_0", 1}}));

  // Slices of the quantized tensors agree with the whole.
  Tensor all = *f.Load("token_embd.weight");
  absl::StatusOr<Tensor> rows = f.LoadRows("token_embd.weight", 100, 102);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->raw(), static_cast<char*>(all.raw()) + 100 * DTypeBytes(DType::kQ8_0, 576));
  absl::StatusOr<Tensor> cols = f.LoadColumns("blk.0.attn_q.weight", 64, 128);
  ASSERT_TRUE(cols.ok()) << cols.status();
  Tensor wq = *f.Load("blk.0.attn_q.weight");
  const size_t row_bytes = DTypeBytes(DType::kQ4_1, 576);
  const size_t slice_bytes = DTypeBytes(DType::kQ4_1, 64);
  EXPECT_EQ(Bytes(*cols).substr(5 * slice_bytes, slice_bytes),
            Bytes(wq).substr(5 * row_bytes + DTypeBytes(DType::kQ4_1, 64), slice_bytes));
}

}  // namespace
}  // namespace shardlm
