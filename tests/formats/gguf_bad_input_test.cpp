// Bad GGUF files: each is refused with an error naming the file and the key/tensor at fault, and
// no lying count or size makes the reader allocate or read past the end of the file.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gguf_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "io_test_util.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"

namespace shardlm {
namespace {

using absl::StatusCode;
using ::shardlm::testing::GgufHeader;
using ::shardlm::testing::IsErrorWith;
using ::shardlm::testing::Kv;
using ::shardlm::testing::KvString;
using ::shardlm::testing::KvU32;
using ::shardlm::testing::MakeTensor;
using ::shardlm::testing::PadTo;
using ::shardlm::testing::ReadBytes;
using ::shardlm::testing::Str;
using ::shardlm::testing::TempDir;
using ::shardlm::testing::TensorInfoBytes;
using ::shardlm::testing::U32;
using ::shardlm::testing::U64;
using ::shardlm::testing::WriteBytes;

constexpr uint32_t kF32 = 0, kQ8_0 = 8, kQ8_1 = 9;  // Q8_1: a type the reader does not load

class GgufBadInputTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }

  absl::Status OpenBytes(const std::string& bytes) {
    WriteBytes(path_, bytes);
    return GgufFile::Open(path_).status();
  }
  // A header with these metadata entries and tensor infos, padded to 32, then `data`.
  absl::Status OpenParts(uint64_t tensor_count, const std::vector<std::string>& kvs,
                         const std::vector<std::string>& infos, const std::string& data) {
    std::string bytes = GgufHeader(tensor_count, kvs.size());
    for (const std::string& kv : kvs) bytes += kv;
    for (const std::string& info : infos) bytes += info;
    return OpenBytes(PadTo(bytes, 32) + data);
  }

  // A valid file: metadata "general.architecture" and "general.name", tensors "a" [2, 8] and
  // "b" [4, 8], both f32. Returns the file's bytes.
  std::string WriteValid() {
    auto iota = [](int64_t i) { return static_cast<float>(i); };
    absl::Status s = WriteGguf(path_,
                               {{"general.architecture", GgufString("llama")},
                                {"general.name", GgufString("a model with a fairly long name")}},
                               {{"a", MakeTensor({2, 8}, DType::kF32, iota)},
                                {"b", MakeTensor({4, 8}, DType::kF32, iota)}});
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_TRUE(GgufFile::Open(path_).ok()) << "the file is valid before it is broken";
    return ReadBytes(path_);
  }

  TempDir dir_;
  const std::string path_ = dir_.File("model.gguf");
};

// ---- Truncation, at each part of the file.

TEST_F(GgufBadInputTest, TruncatedInMetadata) {
  const std::string bytes = WriteValid();
  const size_t cut = bytes.find("fairly");  // inside the value of general.name
  ASSERT_NE(cut, std::string::npos);
  EXPECT_TRUE(IsErrorWith(OpenBytes(bytes.substr(0, cut)), StatusCode::kInvalidArgument,
                          {path_, "metadata key 'general.name'", "string length 31",
                           "kv_count 2 but the file ends after 1 metadata entries"}));
}

TEST_F(GgufBadInputTest, TruncatedInMetadataKey) {
  const std::string bytes = WriteValid();
  const size_t cut = bytes.find("general.name") + 3;
  EXPECT_TRUE(IsErrorWith(
      OpenBytes(bytes.substr(0, cut)), StatusCode::kInvalidArgument,
      {path_, "metadata entry 1 of 2", "after key 'general.architecture'", "key length 12"}));
}

TEST_F(GgufBadInputTest, TruncatedInTensorInfos) {
  const std::string bytes = WriteValid();
  // Just after the name of the second tensor: its n_dims is missing.
  const size_t cut = bytes.find(Str("b")) + Str("b").size() + 2;
  EXPECT_TRUE(IsErrorWith(OpenBytes(bytes.substr(0, cut)), StatusCode::kInvalidArgument,
                          {path_, "tensor 'b'", "n_dims needs 4 bytes",
                           "tensor_count 2 but the file ends after 1 tensor infos"}));
}

TEST_F(GgufBadInputTest, TruncatedInData) {
  const std::string bytes = WriteValid();
  EXPECT_TRUE(IsErrorWith(
      OpenBytes(bytes.substr(0, bytes.size() - 10)), StatusCode::kInvalidArgument,
      {path_, "tensor 'b'", "128 bytes", "extends past the end of the file", "file truncated?"}));
}

TEST_F(GgufBadInputTest, TruncatedHeader) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 0).substr(0, 12)), StatusCode::kInvalidArgument,
                          {path_, "header", "tensor_count"}));
}

TEST_F(GgufBadInputTest, EmptyFile) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(""), StatusCode::kInvalidArgument,
                          {path_, "0-byte file", "not a GGUF file"}));
}

TEST_F(GgufBadInputTest, MissingFileIsNotFound) {
  const std::string path = dir_.File("absent.gguf");
  EXPECT_TRUE(
      IsErrorWith(GgufFile::Open(path).status(), StatusCode::kNotFound, {path, "No such file"}));
}

// ---- Header.

TEST_F(GgufBadInputTest, BadMagic) {
  std::string bytes = GgufHeader(0, 0);
  bytes.replace(0, 4, "GGML");
  EXPECT_TRUE(IsErrorWith(OpenBytes(bytes), StatusCode::kInvalidArgument,
                          {path_, "bad magic 'GGML'", "expected 'GGUF'"}));
}

TEST_F(GgufBadInputTest, Version1) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 0, 1)), StatusCode::kInvalidArgument,
                          {path_, "GGUF version 1 is not supported"}));
}

TEST_F(GgufBadInputTest, UnknownVersion) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 0, 4)), StatusCode::kInvalidArgument,
                          {path_, "unknown GGUF version 4"}));
}

TEST_F(GgufBadInputTest, BigEndian) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 0, 0x03000000)), StatusCode::kInvalidArgument,
                          {path_, "version 50331648", "big-endian"}));
}

// ---- Metadata.

TEST_F(GgufBadInputTest, StringLengthLies) {
  // The value of "general.name" claims 2^62 bytes.
  EXPECT_TRUE(IsErrorWith(
      OpenParts(0, {Kv("general.name", 8, U64(uint64_t{1} << 62) + "abc")}, {}, ""),
      StatusCode::kInvalidArgument,
      {path_, "metadata key 'general.name'", "string length 4611686018427387904", "exceeds the"}));
}

TEST_F(GgufBadInputTest, KeyLengthLies) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 1) + U64(~uint64_t{0}) + "key"),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata entry 0 of 1", "key length 18446744073709551615"}));
}

TEST_F(GgufBadInputTest, ArrayCountLies) {
  // 2^60 strings would need ~10^20 bytes as GgufValues: the count must be refused before any
  // allocation (an attempt would throw std::bad_alloc through Open and end the test binary).
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(IsErrorWith(
      OpenParts(0, {Kv("tokenizer.ggml.tokens", 9, U32(8) + U64(uint64_t{1} << 60) + Str("a"))}, {},
                ""),
      StatusCode::kInvalidArgument,
      {path_, "metadata key 'tokenizer.ggml.tokens'", "array count 1152921504606846976 of string",
       "bytes are left"}));
  // A count that the bytes left could almost hold but not quite: 100 u32 in 396 bytes.
  EXPECT_TRUE(IsErrorWith(
      OpenBytes(GgufHeader(0, 1) +
                Kv("tokenizer.ggml.token_type", 9, U32(4) + U64(100) + std::string(396, 'x'))),
      StatusCode::kInvalidArgument,
      {path_, "metadata key 'tokenizer.ggml.token_type'", "array count 100 of uint32"}));
  // Nested: the inner count lies.
  EXPECT_TRUE(IsErrorWith(
      OpenParts(0, {Kv("nested", 9, U32(9) + U64(1) + U32(0) + U64(uint64_t{1} << 40))}, {}, ""),
      StatusCode::kInvalidArgument,
      {path_, "metadata key 'nested'", "element 0 of 1", "array count 1099511627776 of uint8"}));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

TEST_F(GgufBadInputTest, KvCountLies) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(0, 1000) + KvU32("a.b", 1)),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata entry 1 of 1000", "after key 'a.b'",
                           "kv_count 1000 but the file ends after 1 metadata entries"}));
}

TEST_F(GgufBadInputTest, UnknownValueType) {
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {Kv("a.b", 13, U32(0))}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata key 'a.b'", "value type 13", "not a GGUF value type"}));
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {Kv("a.c", 9, U32(77) + U64(0))}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata key 'a.c'", "array element type 77"}));
}

TEST_F(GgufBadInputTest, ArraysNestedTooDeep) {
  std::string value;
  for (int d = 0; d < 20; ++d) value += U32(9) + U64(1);  // [[[[...]]]]
  value += U32(0) + U64(0);
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {Kv("deep", 9, value)}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata key 'deep'", "nested more than 16 deep"}));
}

TEST_F(GgufBadInputTest, DuplicateKey) {
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {KvU32("a.b", 1), KvU32("a.b", 2)}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "metadata key 'a.b'", "appears twice"}));
}

TEST_F(GgufBadInputTest, MissingKeyViaGetString) {
  WriteValid();
  auto file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(IsErrorWith((*file)->GetString("general.nope").status(), StatusCode::kNotFound,
                          {path_, "no metadata key 'general.nope'"}));
}

TEST_F(GgufBadInputTest, WrongTypedKeyViaGetInt) {
  WriteValid();
  auto file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok());
  EXPECT_TRUE(
      IsErrorWith((*file)->GetInt("general.name").status(), StatusCode::kInvalidArgument,
                  {path_, "metadata key 'general.name'", "expected an integer", "got string"}));
}

TEST_F(GgufBadInputTest, AlignmentNotAPowerOfTwo) {
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {KvU32("general.alignment", 48)}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "general.alignment", "48 is not a power of two"}));
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {KvU32("general.alignment", 0)}, {}, ""),
                          StatusCode::kInvalidArgument, {path_, "general.alignment", "0 is not"}));
}

TEST_F(GgufBadInputTest, AlignmentOfWrongType) {
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {Kv("general.alignment", 10, U64(32))}, {}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "general.alignment", "expected uint32, got uint64"}));
}

// ---- Tensor infos.

TEST_F(GgufBadInputTest, OffsetPastEndOfFile) {
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("w", {8, 2}, kF32, uint64_t{1} << 40)}, std::string(64, 0)),
      StatusCode::kInvalidArgument,
      {path_, "tensor 'w'", "offset 1099511627776", "extends past the end of the file"}));
  // An offset so large that offset + size wraps around 2^64.
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("w", {8, 2}, kF32, ~uint64_t{31})}, std::string(64, 0)),
      StatusCode::kInvalidArgument, {path_, "tensor 'w'", "extends past the end of the file"}));
}

TEST_F(GgufBadInputTest, UnknownTensorType) {
  EXPECT_TRUE(
      IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("blk.0.attn_q.weight", {32, 2}, kQ8_1, 0)},
                            std::string(64, 0)),
                  StatusCode::kInvalidArgument,
                  {path_, "tensor 'blk.0.attn_q.weight'", "ggml type 9 (Q8_1) is not supported"}));
  EXPECT_TRUE(
      IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("w", {256}, 16, 0)}, std::string(256, 0)),
                  StatusCode::kInvalidArgument, {path_, "tensor 'w'", "ggml type 16 (IQ2_XXS)"}));
  EXPECT_TRUE(IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("w", {32}, 99, 0)}, std::string(64, 0)),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "ggml type 99 (unknown)"}));
}

// OpenMetadata reads the header and the metadata only: tensor infos it could not load (here an
// unsupported type) do not stop it, and tensors cannot be read through it.
TEST_F(GgufBadInputTest, MetadataOnlyIgnoresTensorInfos) {
  ASSERT_FALSE(OpenParts(1, {Kv("general.architecture", 8, Str("phi3"))},
                         {TensorInfoBytes("blk.0.attn_q.weight", {32, 2}, kQ8_1, 0)},
                         std::string(64, 0))
                   .ok());
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::OpenMetadata(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*(*file)->GetString("general.architecture"), "phi3");
  EXPECT_TRUE((*file)->Names().empty());
  EXPECT_TRUE(IsErrorWith((*file)->Info("blk.0.attn_q.weight").status(),
                          StatusCode::kFailedPrecondition,
                          {path_, "metadata only", "blk.0.attn_q.weight"}));
  EXPECT_FALSE((*file)->Load("blk.0.attn_q.weight").ok());
  // The header and metadata are still checked.
  EXPECT_TRUE(IsErrorWith(OpenParts(0, {Kv("a.b", 13, U32(0))}, {}, ""),
                          StatusCode::kInvalidArgument, {path_}));
  EXPECT_FALSE(GgufFile::OpenMetadata(path_).ok());
}

TEST_F(GgufBadInputTest, TensorCountLies) {
  const std::string infos =
      TensorInfoBytes("a", {8}, kF32, 0) + TensorInfoBytes("b", {8}, kF32, 32);
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(5, 0) + infos), StatusCode::kInvalidArgument,
                          {path_, "tensor info 2 of 5", "after tensor 'b'",
                           "tensor_count 5 but the file ends after 2 tensor infos"}));
}

TEST_F(GgufBadInputTest, MisalignedTensorOffset) {
  EXPECT_TRUE(
      IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("w", {4}, kF32, 16)}, std::string(64, 0)),
                  StatusCode::kInvalidArgument,
                  {path_, "tensor 'w'", "offset 16 is not a multiple of general.alignment 32"}));
  // With general.alignment 64, 32 is misaligned too.
  EXPECT_TRUE(IsErrorWith(OpenParts(1, {KvU32("general.alignment", 64)},
                                    {TensorInfoBytes("w", {4}, kF32, 32)}, std::string(128, 0)),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "not a multiple of general.alignment 64"}));
}

TEST_F(GgufBadInputTest, OverlappingTensors) {
  // "a" covers [0, 64); "b" starts at 32.
  EXPECT_TRUE(IsErrorWith(
      OpenParts(2, {}, {TensorInfoBytes("a", {16}, kF32, 0), TensorInfoBytes("b", {8}, kF32, 32)},
                std::string(96, 0)),
      StatusCode::kInvalidArgument, {path_, "tensors 'a' [0, 64) and 'b' [32, 64) overlap"}));
}

TEST_F(GgufBadInputTest, Ne0NotMultipleOfBlockSize) {
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("q", {48, 2}, kQ8_0, 0)}, std::string(128, 0)),
      StatusCode::kInvalidArgument, {path_, "tensor 'q'", "ne[0] = 48", "Q8_0 block size 32"}));
}

TEST_F(GgufBadInputTest, TooManyDims) {
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("w", {1, 1, 1, 1, 1}, kF32, 0)}, std::string(32, 0)),
      StatusCode::kInvalidArgument, {path_, "tensor 'w'", "n_dims 5"}));
}

TEST_F(GgufBadInputTest, ZeroOrNegativeDim) {
  EXPECT_TRUE(IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("w", {4, 0}, kF32, 0)}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "ne [4, 0]", "dimension 1 is 0"}));
  EXPECT_TRUE(IsErrorWith(OpenParts(1, {}, {TensorInfoBytes("w", {~uint64_t{0}}, kF32, 0)}, ""),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor 'w'", "negative as int64"}));
}

TEST_F(GgufBadInputTest, ElementCountOverflow) {
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("w", {uint64_t{1} << 32, uint64_t{1} << 32}, kF32, 0)}, ""),
      StatusCode::kInvalidArgument, {path_, "tensor 'w'", "element count overflows"}));
  // Fits int64 as elements but not as f32 bytes.
  EXPECT_TRUE(IsErrorWith(
      OpenParts(1, {}, {TensorInfoBytes("w", {uint64_t{1} << 31, uint64_t{1} << 31}, kF32, 0)}, ""),
      StatusCode::kInvalidArgument, {path_, "tensor 'w'", "byte size overflows"}));
}

TEST_F(GgufBadInputTest, DuplicateTensorName) {
  EXPECT_TRUE(IsErrorWith(
      OpenParts(2, {}, {TensorInfoBytes("w", {8}, kF32, 0), TensorInfoBytes("w", {8}, kF32, 32)},
                std::string(64, 0)),
      StatusCode::kInvalidArgument, {path_, "tensor 'w'", "appears twice"}));
}

TEST_F(GgufBadInputTest, TensorNameLengthLies) {
  EXPECT_TRUE(IsErrorWith(OpenBytes(GgufHeader(1, 0) + U64(uint64_t{1} << 50) + "w"),
                          StatusCode::kInvalidArgument,
                          {path_, "tensor info 0 of 1", "name length 1125899906842624",
                           "tensor_count 1 but the file ends after 0 tensor infos"}));
}

// Random corruption of a valid file's header and truncation at every length: Open either
// succeeds or returns an error naming the file; it never crashes, hangs or reads out of bounds
// (run under ASan to see the last part).
TEST_F(GgufBadInputTest, CorruptedFilesNeverCrash) {
  const std::string good = WriteValid();
  // The file ends with the data of "a" (64 bytes) and "b" (128 bytes); before them is header.
  const size_t header_end = good.size() - 64 - 128;
  std::mt19937 rng(42);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % header_end;
      bytes[at] = static_cast<char>(rng() % 3 == 0 ? 0xff : rng());
    }
    WriteBytes(path_, bytes);
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path_);
    if (!file.ok()) {
      EXPECT_THAT(std::string(file.status().message()), ::testing::StartsWith(path_ + ": "));
      continue;
    }
    for (const std::string& name : (*file)->Names()) {
      absl::StatusOr<Tensor> t = (*file)->Load(name);
      ASSERT_TRUE(t.ok()) << t.status();
      volatile char sink = 0;
      if (t->nbytes() > 0) sink = static_cast<const char*>(t->raw())[t->nbytes() - 1];
      (void)sink;
    }
  }
  for (size_t len = 0; len < good.size(); ++len) {
    EXPECT_FALSE(OpenBytes(good.substr(0, len)).ok()) << len;
  }
}

// A misaligned float tensor (general.alignment 1) is still readable: it comes back as a copy.
TEST_F(GgufBadInputTest, AlignmentOneGivesCopiesWhereNeeded) {
  std::string head =
      GgufHeader(1, 1) + KvU32("general.alignment", 1) + TensorInfoBytes("w", {2}, kF32, 1);
  std::string data = std::string(1, '\0') + ::shardlm::testing::F32Bytes(1.5f) +
                     ::shardlm::testing::F32Bytes(-2.0f);
  WriteBytes(path_, head + data);
  auto file = GgufFile::Open(path_);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<Tensor> w = (*file)->Load("w");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w->raw()) % 4, 0u);
  EXPECT_EQ(w->data<float>()[0], 1.5f);
  EXPECT_EQ(w->data<float>()[1], -2.0f);
}

}  // namespace
}  // namespace shardlm
