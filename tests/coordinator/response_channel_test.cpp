// ResponseChannel: the listener the Generate reactor is woken by (called after each Push and
// Close that changed something, outside the channel's lock, so it may Take at once), the
// non-blocking Take, and the blocking Wait the HTTP server uses.
#include "coordinator/response_channel.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;

v1::GenerateResponse Token(int32_t id) {
  v1::GenerateResponse m;
  m.add_token_ids(id);
  return m;
}

TEST(ResponseChannelTest, TheListenerMayTakeAtOnceAndHearsEachChange) {
  ResponseChannel channel;
  std::vector<int32_t> seen;
  std::optional<absl::Status> final;
  int calls = 0;
  channel.SetListener([&] {
    ++calls;
    std::vector<v1::GenerateResponse> messages;
    channel.Take(&messages, &final);  // would deadlock if called under the channel's lock
    for (const auto& m : messages)
      seen.insert(seen.end(), m.token_ids().begin(), m.token_ids().end());
  });
  channel.Push(Token(1));
  channel.Push(Token(2));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(seen, (std::vector<int32_t>{1, 2}));
  EXPECT_FALSE(final.has_value());
  channel.Close(absl::CancelledError("gone"));
  EXPECT_EQ(calls, 3);
  ASSERT_TRUE(final.has_value());
  EXPECT_TRUE(absl::IsCancelled(*final));
  // After the end nothing changes, and nobody is woken for it.
  channel.Push(Token(3));
  channel.Close(absl::OkStatus());
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(seen, (std::vector<int32_t>{1, 2}));
}

TEST(ResponseChannelTest, TakeNeverBlocksAndTheFinalComesWithTheLastMessages) {
  ResponseChannel channel;
  std::vector<v1::GenerateResponse> messages;
  std::optional<absl::Status> final;
  channel.Take(&messages, &final);
  EXPECT_TRUE(messages.empty());
  EXPECT_FALSE(final.has_value());
  channel.Push(Token(7));
  channel.Push(Token(8));
  channel.Close(absl::OkStatus());
  channel.Take(&messages, &final);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[1].token_ids(0), 8);
  ASSERT_TRUE(final.has_value());
  EXPECT_TRUE(final->ok());
  EXPECT_TRUE(channel.closed());
}

TEST(ResponseChannelTest, ARemovedListenerIsNotCalled) {
  ResponseChannel channel;
  std::atomic<int> calls{0};
  channel.SetListener([&] { ++calls; });
  channel.Push(Token(1));
  channel.SetListener(nullptr);
  channel.Push(Token(2));
  channel.Close(absl::OkStatus());
  EXPECT_EQ(calls, 1);
}

TEST(ResponseChannelTest, WaitWakesOnAPushFromAnotherThreadAndTimesOutOtherwise) {
  ResponseChannel channel;
  std::vector<v1::GenerateResponse> messages;
  std::optional<absl::Status> final;
  const auto start = std::chrono::steady_clock::now();
  channel.Wait(start + 30ms, &messages, &final);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  EXPECT_TRUE(messages.empty());
  EXPECT_FALSE(final.has_value());

  std::thread producer([&] {
    std::this_thread::sleep_for(20ms);
    channel.Push(Token(5));
  });
  channel.Wait(std::chrono::steady_clock::now() + 10s, &messages, &final);
  producer.join();
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0].token_ids(0), 5);
  EXPECT_FALSE(final.has_value());
}

}  // namespace
}  // namespace shardlm::coordinator
