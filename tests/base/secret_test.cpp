// ReadSecretFile and SecretsEqual: what a secret file may hold, the errors naming the flag and
// the file, the warning for a file others may read.
#include "base/secret.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shardlm {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class SecretFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("secret-test-" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string Write(const std::string& name, const std::string& bytes, mode_t mode = 0600) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    chmod(path.c_str(), mode);
    return path;
  }
  fs::path dir_;
};

TEST_F(SecretFileTest, ReadsTheSecretLessOneTrailingNewline) {
  std::string warning = "stale";
  auto s = ReadSecretFile("--worker-secret-file", Write("a", "0123456789abcdef\n"), &warning);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "0123456789abcdef");
  EXPECT_EQ(warning, "");
  s = ReadSecretFile("--worker-secret-file", Write("b", "0123456789abcdef\r\n"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "0123456789abcdef");
  // Only one newline goes; the rest is part of the secret.
  s = ReadSecretFile("--worker-secret-file", Write("c", "0123456789abcdef\n\n"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "0123456789abcdef\n");
  s = ReadSecretFile("--worker-secret-file", Write("d", "0123456789abcdef"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(*s, "0123456789abcdef");
}

TEST_F(SecretFileTest, MissingEmptyOrShortSecretsAreRefusedByName) {
  auto error = [](const absl::StatusOr<std::string>& s) {
    EXPECT_FALSE(s.ok());
    return std::string(s.status().message());
  };
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", "")),
              HasSubstr("--worker-secret-file is required"));
  const std::string missing = (dir_ / "missing").string();
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", missing)),
              HasSubstr("--worker-secret-file " + missing + ": cannot read it"));
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", Write("empty", ""))),
              HasSubstr("the file is empty"));
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", Write("nl", "\n"))),
              HasSubstr("the file is empty"));
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", Write("short", "short\n"))),
              HasSubstr("the secret is 5 bytes, expected at least 16"));
  EXPECT_THAT(error(ReadSecretFile("--worker-secret-file", dir_.string())),
              HasSubstr("not a regular file"));
}

TEST_F(SecretFileTest, WarnsWhenGroupOrOthersMayReadIt) {
  std::string warning;
  ASSERT_TRUE(
      ReadSecretFile("--worker-secret-file", Write("g", "0123456789abcdef", 0640), &warning).ok());
  EXPECT_THAT(warning, HasSubstr("may be read by its group (mode 640)"));
  ASSERT_TRUE(
      ReadSecretFile("--worker-secret-file", Write("o", "0123456789abcdef", 0644), &warning).ok());
  EXPECT_THAT(warning, HasSubstr("may be read by every user (mode 644)"));
  ASSERT_TRUE(
      ReadSecretFile("--worker-secret-file", Write("u", "0123456789abcdef", 0400), &warning).ok());
  EXPECT_EQ(warning, "");
}

TEST(SecretsEqualTest, ComparesWholeStrings) {
  EXPECT_TRUE(SecretsEqual("0123456789abcdef", "0123456789abcdef"));
  EXPECT_FALSE(SecretsEqual("0123456789abcdef", "0123456789abcdeF"));
  EXPECT_FALSE(SecretsEqual("0123456789abcdef", "0123456789abcde"));
  EXPECT_FALSE(SecretsEqual("0123456789abcdef", "0123456789abcdef0"));
  EXPECT_FALSE(SecretsEqual("", "x"));
  EXPECT_TRUE(SecretsEqual("", ""));
  // A prefix padded with zero bytes is still not equal.
  EXPECT_FALSE(SecretsEqual(std::string("ab\0", 3), "ab"));
}

}  // namespace
}  // namespace shardlm
