#include "coordinator/stop_matcher.h"

#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

// Feeds the pieces, returning everything emitted (and whether a stop string matched).
std::pair<std::string, bool> Feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) {
    StopMatcher::Result r = m.Push(p);
    out += r.text;
    if (r.matched) return {out, true};
  }
  return {out + m.Flush(), false};
}

TEST(StopMatcherTest, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.Push("abc").text, "abc");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, CutsBeforeAMatchInsideOnePiece) {
  StopMatcher m({"STOP"});
  StopMatcher::Result r = m.Push("hello STOP world");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "hello ");
  EXPECT_TRUE(m.Push("more").text.empty());  // nothing after the end
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, HoldsBackAPossibleStartAcrossPieces) {
  StopMatcher m({"</s>"});
  StopMatcher::Result r = m.Push("abc<");
  EXPECT_EQ(r.text, "abc");  // "<" may start "</s>"
  r = m.Push("/");
  EXPECT_EQ(r.text, "");
  r = m.Push("s>tail");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "");
}

TEST(StopMatcherTest, ReleasesHeldTextThatTurnsOutNotToMatch) {
  StopMatcher m({"</s>"});
  EXPECT_EQ(m.Push("a</").text, "a");
  EXPECT_EQ(m.Push("b").text, "</b");
  EXPECT_EQ(m.Push("<").text, "");
  EXPECT_EQ(m.Flush(), "<");  // the stream ended: held text is output
}

TEST(StopMatcherTest, EarliestOfSeveralStopsWins) {
  StopMatcher m({"world", "lo w", "xyz"});
  auto [text, matched] = Feed(m, {"hel", "lo", " wor", "ld"});
  EXPECT_TRUE(matched);
  EXPECT_EQ(text, "hel");
}

TEST(StopMatcherTest, OverlappingPrefixesAreHeldByTheLongest) {
  // "aab": after "aa", both "a" and "aa" could start it.
  StopMatcher m({"aab"});
  auto [text, matched] = Feed(m, {"xa", "a", "a", "b"});
  EXPECT_TRUE(matched);
  EXPECT_EQ(text, "xa");
  StopMatcher n({"aab"});
  auto [text2, matched2] = Feed(n, {"xa", "a", "a", "c"});
  EXPECT_FALSE(matched2);
  EXPECT_EQ(text2, "xaaac");
}

TEST(StopMatcherTest, MultiByteCharactersAreNeverSplit) {
  StopMatcher m({"é!"});  // U+00E9 = C3 A9
  StopMatcher::Result r = m.Push("café");
  EXPECT_EQ(r.text, "caf");  // "é" held whole
  r = m.Push("?");
  EXPECT_EQ(r.text, "é?");
  r = m.Push("né!");
  EXPECT_TRUE(r.matched);
  EXPECT_EQ(r.text, "n");
}

TEST(StopMatcherTest, EmptyStopStringsAreIgnored) {
  StopMatcher m({""});
  EXPECT_EQ(m.Push("abc").text, "abc");
  EXPECT_FALSE(m.matched());
}

}  // namespace
}  // namespace shardlm::coordinator
