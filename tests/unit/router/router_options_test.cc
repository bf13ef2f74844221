#include "router/router_options.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::router {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<RouterOptions> Parse(std::vector<std::string> words) {
  std::vector<char*> argv = {const_cast<char*>("tandem-router")};
  for (std::string& w : words) argv.push_back(w.data());
  absl::StatusOr<Args> args =
      Args::Parse(static_cast<int>(argv.size()), argv.data(), 1, RouterFlagSpecs());
  if (!args.ok()) return args.status();
  return RouterOptionsFromArgs(*args);
}

TEST(RouterOptionsTest, DefaultsFollowServingMd) {
  absl::StatusOr<RouterOptions> o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 50051);
  EXPECT_EQ(o->host, "0.0.0.0");
  EXPECT_EQ(o->model, "default");
  EXPECT_EQ(o->mode, RouterMode::kDisaggregated);
  EXPECT_EQ(o->prefill_policy, PrefillPolicy::kAffinity);
  EXPECT_EQ(o->max_queue, 256);
  EXPECT_EQ(o->heartbeat_interval, absl::Milliseconds(500));
  EXPECT_EQ(o->auto_local_max_tokens, 256);
  EXPECT_EQ(o->reservation_deadline, absl::Seconds(30));
  EXPECT_EQ(o->queue_timeout, absl::Seconds(60));
}

TEST(RouterOptionsTest, ParsesEveryFlag) {
  absl::StatusOr<RouterOptions> o = Parse(
      {"--port", "0", "--host", "127.0.0.1", "--model", "/m.gguf", "--mode=auto",
       "--prefill-policy", "round_robin", "--max-queue", "8", "--heartbeat-interval", "0.1",
       "--auto-local-max-tokens", "64", "--reservation-deadline", "5", "--queue-timeout", "2.5"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->port, 0);
  EXPECT_EQ(o->host, "127.0.0.1");
  EXPECT_EQ(o->model, "/m.gguf");
  EXPECT_EQ(o->mode, RouterMode::kAuto);
  EXPECT_EQ(o->prefill_policy, PrefillPolicy::kRoundRobin);
  EXPECT_EQ(o->max_queue, 8);
  EXPECT_EQ(o->heartbeat_interval, absl::Milliseconds(100));
  EXPECT_EQ(o->auto_local_max_tokens, 64);
  EXPECT_EQ(o->reservation_deadline, absl::Seconds(5));
  EXPECT_EQ(o->queue_timeout, absl::Milliseconds(2500));
}

TEST(RouterOptionsTest, BadValuesNameTheFlag) {
  const std::vector<std::vector<std::string>> bad = {
      {"--port", "70000"},
      {"--mode", "split"},
      {"--prefill-policy", "x"},
      {"--max-queue", "0"},
      {"--heartbeat-interval", "0"},
      {"--queue-timeout", "-1"},
      {"--reservation-deadline", "abc"},
      {"--auto-local-max-tokens", "-5"},
  };
  for (const auto& words : bad) {
    absl::StatusOr<RouterOptions> o = Parse(words);
    ASSERT_FALSE(o.ok()) << words[0];
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << o.status();
    EXPECT_THAT(std::string(o.status().message()), HasSubstr(words[0])) << o.status();
  }
}

TEST(RouterOptionsTest, RequestModeOverridesTheRouters) {
  EXPECT_EQ(ResolveMode(RouterMode::kAuto, v1::PREFILL_MODE_UNSPECIFIED), RouterMode::kAuto);
  EXPECT_EQ(ResolveMode(RouterMode::kAuto, v1::PREFILL_MODE_COLLOCATED), RouterMode::kCollocated);
  EXPECT_EQ(ResolveMode(RouterMode::kCollocated, v1::PREFILL_MODE_DISAGGREGATED),
            RouterMode::kDisaggregated);
  EXPECT_EQ(ResolveMode(RouterMode::kDisaggregated, v1::PREFILL_MODE_AUTO), RouterMode::kAuto);
}

}  // namespace
}  // namespace tandem::router
