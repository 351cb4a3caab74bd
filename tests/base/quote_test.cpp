// Quote: short values whole, long ones cut at 100 bytes on a character boundary with their size.
#include "base/quote.h"

#include <gtest/gtest.h>

#include <string>

namespace shardlm {
namespace {

TEST(QuoteTest, ShortValueIsQuotedWhole) {
  EXPECT_EQ(Quote("user"), "'user'");
  EXPECT_EQ(Quote(""), "''");
  EXPECT_EQ(Quote(std::string(100, 'a')), "'" + std::string(100, 'a') + "'");
}

TEST(QuoteTest, LongValueIsCutAndItsSizeGiven) {
  const std::string big(1 << 20, 'r');
  const std::string q = Quote(big);
  EXPECT_EQ(q, "'" + std::string(100, 'r') + "'... (1048576 bytes)");
  EXPECT_LT(q.size(), 130u);
}

TEST(QuoteTest, CutNeverSplitsACharacter) {
  // 99 ASCII bytes then a 3-byte character (U+20AC) across the 100-byte limit.
  const std::string v = std::string(99, 'x') + "\xE2\x82\xAC" + "tail";
  EXPECT_EQ(Quote(v), "'" + std::string(99, 'x') + "'... (106 bytes)");
}

}  // namespace
}  // namespace shardlm
