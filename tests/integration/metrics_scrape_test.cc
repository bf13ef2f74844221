// Each worker's GET /metrics (docs/SERVING.md, Metrics) after real requests through router +
// 1 prefill + 1 decode: token counters match what the client got, the prompt is counted once
// (on the prefill worker), the KV bytes sent equal those received, and the KV cache is empty
// again once the requests finished.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"

namespace tandem::integration {
namespace {

using ::testing::HasSubstr;

// The whole response (head and body) of one HTTP/1.0 GET on 127.0.0.1:port.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to port ", port));
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("write");
  }
  std::string response;
  char buffer[8192];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) response.append(buffer, n);
  close(fd);
  return response;
}

// The value of the sample `name` whose labels include every `k="v"` of `labels`; NaN when
// none.
double Value(const std::string& text, const std::string& name,
             const std::vector<std::string>& labels = {}) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (!absl::StartsWith(line, name + "{") && !absl::StartsWith(line, name + " ")) continue;
    bool match = true;
    for (const std::string& label : labels) match = match && absl::StrContains(line, label);
    if (!match) continue;
    double value = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &value)) return value;
  }
  return std::nan("");
}

TEST(MetricsScrapeTest, WorkersCountTokensAndKvTransfers) {
  Cluster cluster(WithWorkers(0, 0));
  ASSERT_OK(cluster.Start());
  const int prefill_port = PickFreePort();
  const int decode_port = PickFreePort();
  WorkerOptions prefill;
  prefill.flags = {"--metrics-port", std::to_string(prefill_port)};
  ASSERT_OK(cluster.AddPrefill(prefill).status());
  WorkerOptions decode;
  decode.flags = {"--metrics-port", std::to_string(decode_port)};
  ASSERT_OK(cluster.AddDecode(decode).status());
  ASSERT_OK(cluster.WaitForWorkers(1, 1));

  int64_t generated = 0;
  int64_t prompt = 0;
  const int kRequests = 3;
  for (int i = 0; i < kRequests; ++i) {
    GenerateResult r = cluster.Generate(
        GreedyPrompt(absl::StrCat("Request ", i, ": count from one to twenty."), 6 + i, true));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value());
    EXPECT_EQ(r.final->prefill_location(), v1::PREFILL_LOCATION_REMOTE);
    generated += static_cast<int64_t>(r.token_ids.size());
    prompt += r.final->prompt_tokens();
  }
  ASSERT_OK(cluster.WaitForIdle());

  absl::StatusOr<std::string> p = HttpGet(prefill_port, "/metrics");
  absl::StatusOr<std::string> d = HttpGet(decode_port, "/metrics");
  ASSERT_OK(p.status());
  ASSERT_OK(d.status());
  EXPECT_THAT(*p, HasSubstr(" 200 OK\r\n"));
  EXPECT_THAT(*p, HasSubstr("text/plain; version=0.0.4; charset=utf-8"));
  EXPECT_THAT(*d, HasSubstr("tandem:generation_tokens_total{model_name=\""));
  EXPECT_THAT(*d, HasSubstr("role=\"decode\""));
  EXPECT_THAT(*p, HasSubstr("role=\"prefill\""));

  // Tokens: generated ones where they are streamed, the prompt where it was prefilled.
  EXPECT_EQ(Value(*d, "tandem:generation_tokens_total"), generated);
  EXPECT_EQ(Value(*p, "tandem:generation_tokens_total"), 0);
  EXPECT_EQ(Value(*p, "tandem:prompt_tokens_total"), prompt);
  EXPECT_EQ(Value(*d, "tandem:prompt_tokens_total"), 0);

  // KV transfers: every byte sent arrived, each request once.
  const double sent = Value(*p, "tandem:kv_transfer_bytes_total", {"direction=\"sent\""});
  const double received = Value(*d, "tandem:kv_transfer_bytes_total", {"direction=\"received\""});
  EXPECT_GT(sent, 0);
  EXPECT_EQ(sent, received);
  EXPECT_EQ(Value(*p, "tandem:kv_transfers_total", {"outcome=\"ok\""}), kRequests);
  EXPECT_EQ(Value(*d, "tandem:kv_transfers_total", {"outcome=\"ok\""}), kRequests);
  EXPECT_EQ(Value(*p, "tandem:kv_transfers_total", {"outcome=\"failed\""}), 0);
  EXPECT_EQ(Value(*p, "tandem:kv_transfer_seconds_count"), kRequests);
  EXPECT_EQ(Value(*d, "tandem:kv_transfer_seconds_count"), kRequests);
  EXPECT_EQ(Value(*d, "tandem:reservations_total", {"outcome=\"ok\""}), kRequests);

  // Everything finished: nothing running or waiting, the KV cache empty again.
  for (const std::string* text : {&*p, &*d}) {
    EXPECT_EQ(Value(*text, "tandem:num_requests_running"), 0);
    EXPECT_EQ(Value(*text, "tandem:num_requests_waiting"), 0);
    EXPECT_EQ(Value(*text, "tandem:kv_cache_usage_perc"), 0);
    EXPECT_GT(Value(*text, "tandem:kv_cache_blocks", {"state=\"free\""}), 0);
    EXPECT_EQ(Value(*text, "tandem:kv_cache_blocks", {"state=\"used\""}), 0);
    EXPECT_GT(Value(*text, "tandem:engine_step_seconds_count"), 0);
  }
  EXPECT_GT(Value(*p, "tandem:prefix_cache_queries_total"), 0);

  absl::StatusOr<std::string> missing = HttpGet(decode_port, "/nope");
  ASSERT_OK(missing.status());
  EXPECT_THAT(*missing, HasSubstr(" 404 "));
}

}  // namespace
}  // namespace tandem::integration
