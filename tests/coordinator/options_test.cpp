#include "coordinator/options.h"

#include <chrono>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

using ::testing::HasSubstr;

// Options that pass ValidateOptions: the defaults plus a model and a worker secret.
CoordinatorOptions ValidOptions() {
  CoordinatorOptions o;
  o.model = "m";
  o.worker_secret = "0123456789abcdef";
  return o;
}

// ValidateOptions' message for ValidOptions() changed by `spoil`.
template <typename Spoil>
std::string ErrorAfter(Spoil spoil) {
  CoordinatorOptions bad = ValidOptions();
  spoil(bad);
  return std::string(ValidateOptions(bad).message());
}

TEST(OptionsTest, ParsesByteSizes) {
  EXPECT_EQ(ParseByteSize("256MiB").value(), 256ull << 20);
  EXPECT_EQ(ParseByteSize("1GiB").value(), 1ull << 30);
  EXPECT_EQ(ParseByteSize("1.5g").value(), 3ull << 29);
  EXPECT_EQ(ParseByteSize("64KB").value(), 64ull << 10);
  EXPECT_EQ(ParseByteSize("4096").value(), 4096u);
  EXPECT_EQ(ParseByteSize(" 2 M ").value(), 2ull << 20);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("MiB").ok());
  EXPECT_FALSE(ParseByteSize("12 parsecs").ok());
  EXPECT_FALSE(ParseByteSize("1e30").ok());
}

// No address defaults to all interfaces: serving other hosts is given explicitly.
TEST(OptionsTest, ListensOnLoopbackByDefault) {
  EXPECT_EQ(CoordinatorOptions().listen, "127.0.0.1:50051");
  EXPECT_EQ(CoordinatorOptions().worker_listen, "127.0.0.1:50052");
  EXPECT_EQ(CoordinatorOptions().worker_hello_timeout, std::chrono::seconds(5));
}

TEST(OptionsTest, TheWorkerAttachNeedsItsOwnAddressAndASecret) {
  const CoordinatorOptions o = ValidOptions();
  EXPECT_TRUE(ValidateOptions(o).ok());
  EXPECT_THAT(ErrorAfter([](auto& b) { b.worker_secret = ""; }),
              HasSubstr("--worker-secret-file is required"));
  EXPECT_THAT(
      ErrorAfter([](auto& b) { b.worker_secret = "short"; }),
      HasSubstr("--worker-secret-file: expected a secret of at least 16 bytes, got 5 bytes"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.worker_listen = "nocolon"; }),
              HasSubstr("--worker-listen: expected HOST:PORT, got 'nocolon'"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.worker_listen = b.listen; }),
              HasSubstr("--worker-listen: expected an address other than --listen's"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.worker_hello_timeout = std::chrono::milliseconds(0); }),
              HasSubstr("worker_hello_timeout"));
  // Both on free ports is fine (tests).
  CoordinatorOptions free_ports = o;
  free_ports.listen = free_ports.worker_listen = "127.0.0.1:0";
  EXPECT_TRUE(ValidateOptions(free_ports).ok());
}

TEST(OptionsTest, ValidatesFlagsByName) {
  const CoordinatorOptions o = ValidOptions();
  EXPECT_TRUE(ValidateOptions(o).ok());
  EXPECT_THAT(ErrorAfter([](auto& b) { b.tp = 0; }), HasSubstr("--tp"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.listen = "nocolon"; }), HasSubstr("--listen"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.model = ""; }), HasSubstr("--model"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.kv_block_size = 0; }), HasSubstr("--kv-block-size"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.max_running = 0; }), HasSubstr("--max-running"));
  CoordinatorOptions many = o;
  many.max_running = 600;
  EXPECT_TRUE(ValidateOptions(many).ok());
  EXPECT_EQ(EffectiveMaxRunning(many), 512);
  EXPECT_THAT(ErrorAfter([](auto& b) { b.pp_layers = "3"; }), HasSubstr("pp - 1 = 0"));
  EXPECT_THAT(ErrorAfter([](auto& b) {
                b.pp = 3;
                b.pp_layers = "5,4";
              }),
              HasSubstr("element 1"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.step_timeout_s = -1; }), HasSubstr("--step-timeout"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.requeue_timeout_s = -0.5; }), HasSubstr("--requeue-timeout"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.requeue_timeout_s = 1e9; }), HasSubstr("[0, 86400]"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.step_time_ratio = 0.5; }),
              HasSubstr("--step-time-ratio: expected 0 (off) or a ratio in [1, 1000], got 0.5"));
  EXPECT_THAT(ErrorAfter([](auto& b) { b.max_step_time_ms = -1; }),
              HasSubstr("--max-step-time-ms"));
  CoordinatorOptions off = o;
  off.step_time_ratio = 0;
  off.max_step_time_ms = 250;
  EXPECT_TRUE(ValidateOptions(off).ok());
  CoordinatorOptions pp = o;
  pp.pp = 3;
  pp.pp_layers = "4, 9";
  EXPECT_TRUE(ValidateOptions(pp).ok());
}

// Steps get an automatic deadline and lost jobs' requests wait a minute unless told otherwise.
TEST(OptionsTest, StepAndRequeueTimeoutDefaults) {
  EXPECT_EQ(CoordinatorOptions().step_timeout_s, 0);
  EXPECT_EQ(CoordinatorOptions().requeue_timeout_s, 60);
}

TEST(OptionsTest, ContextLength) {
  EXPECT_EQ(ContextLength(8192, 0), 8192);
  EXPECT_EQ(ContextLength(8192, 1000), 1000);
  EXPECT_EQ(ContextLength(0, 0), kDefaultContextLength);
  EXPECT_EQ(ContextLength(0, 100), 100);
  EXPECT_EQ(ContextLength(512, 4096), 512);
}

}  // namespace
}  // namespace shardlm::coordinator
