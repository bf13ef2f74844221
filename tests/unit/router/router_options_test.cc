#include "router/router_options.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
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
  EXPECT_EQ(o->max_queue, 4096);
  EXPECT_EQ(o->heartbeat_interval, absl::Milliseconds(500));
  EXPECT_EQ(o->auto_local_max_tokens, 256);
  EXPECT_EQ(o->reservation_deadline, absl::Seconds(30));
  EXPECT_EQ(o->prefill_timeout, absl::Seconds(300));
  EXPECT_EQ(o->queue_timeout, absl::Seconds(60));
}

TEST(RouterOptionsTest, ParsesEveryFlag) {
  absl::StatusOr<RouterOptions> o = Parse(
      {"--port", "0", "--host", "127.0.0.1", "--model", "/m.gguf", "--mode=auto",
       "--prefill-policy", "round_robin", "--max-queue", "8", "--heartbeat-interval", "0.1",
       "--auto-local-max-tokens", "64", "--reservation-deadline", "5", "--queue-timeout", "2.5",
       "--prefill-timeout", "90"});
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
  EXPECT_EQ(o->prefill_timeout, absl::Seconds(90));
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
      {"--prefill-timeout", "0"},
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

TEST(RouterOptionsTest, HttpFlags) {
  absl::StatusOr<RouterOptions> o = Parse({"--host", "127.0.0.1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->http_host, "127.0.0.1") << "--http-host defaults to --host";
  EXPECT_EQ(o->http_port, 8000);
  EXPECT_EQ(o->http_threads, 1);
  o = Parse({"--http-host", "::1", "--http-port", "-1", "--http-threads", "4"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->http_host, "::1");
  EXPECT_EQ(o->http_port, -1);
  EXPECT_EQ(o->http_threads, 4);
  o = Parse({"--http-port", "0"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->http_port, 0);
  for (const auto& words : std::vector<std::vector<std::string>>{
           {"--http-port", "-2"}, {"--http-port", "65536"}, {"--http-threads", "0"}}) {
    absl::StatusOr<RouterOptions> bad = Parse(words);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << words[0];
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(words[0])) << bad.status();
  }
}

TEST(RouterOptionsTest, ApiKeysFromFlagsFileOrEnvironment) {
  ::unsetenv(kApiKeyEnv);
  absl::StatusOr<RouterOptions> o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->api_keys.enabled());

  o = Parse({"--api-key", "k1,k2", "--api-key=k3"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->api_keys.size(), 3);
  EXPECT_TRUE(o->api_keys.Check("Bearer k3", "").ok());

  const std::string file = ::testing::TempDir() + "/router_options_test_keys";
  std::ofstream(file) << "f1\n# c\nf2\n";
  o = Parse({"--api-key-file", file});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->api_keys.size(), 2);
  std::remove(file.c_str());

  ::setenv(kApiKeyEnv, "from-env", 1);
  o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->api_keys.Check("", "from-env").ok());
  o = Parse({"--api-key", "flag"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FALSE(o->api_keys.Check("", "from-env").ok()) << "the flag replaces the environment";
  ::unsetenv(kApiKeyEnv);

  o = Parse({"--api-key-file", "/nonexistent/keys"});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kNotFound) << o.status();
  EXPECT_THAT(std::string(o.status().message()), HasSubstr("--api-key-file"));
  o = Parse({"--api-key", "a,,b"});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument) << o.status();
}

TEST(RouterOptionsTest, TlsFlags) {
  absl::StatusOr<RouterOptions> o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->tls.empty());
  o = Parse({"--tls-cert", "r.pem", "--tls-key", "r.key", "--tls-ca", "ca.pem"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->tls.cert, "r.pem");
  EXPECT_EQ(o->tls.key, "r.key");
  EXPECT_EQ(o->tls.ca, "ca.pem");
  o = Parse({"--tls-cert", "r.pem", "--tls-key", "r.key"});
  ASSERT_TRUE(o.ok()) << o.status() << ": TLS for clients only needs no CA";
  EXPECT_TRUE(o->tls.ca.empty());
  for (const auto& words : std::vector<std::vector<std::string>>{
           {"--tls-cert", "r.pem"}, {"--tls-key", "r.key"}, {"--tls-ca", "ca.pem"}}) {
    absl::StatusOr<RouterOptions> bad = Parse(words);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << words[0];
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(words[0])) << bad.status();
  }
}

}  // namespace
}  // namespace tandem::router
