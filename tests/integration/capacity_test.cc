// Bounded resources: the router's in-flight bound answers RESOURCE_EXHAUSTED and is released
// by every way a call ends; a decode cache too small for all requests at once makes them
// wait their turn instead of failing.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"
#include "tests/integration/reference_model.h"

namespace tandem::integration {
namespace {

std::vector<int32_t> RandomPrompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = 1000 + static_cast<int32_t>(rng() % 20000);
  return ids;
}

TEST(CapacityTest, RouterBoundIsResourceExhaustedAndReleased) {
  ClusterOptions options = WithWorkers(1, 1);
  options.router_flags = {"--max-queue", "2"};
  Cluster cluster(options);
  ASSERT_OK(cluster.Start());

  // Six at once, two admitted.
  constexpr int kRequests = 6;
  std::vector<GenerateResult> results(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      results[i] = cluster.Generate(GreedyPrompt(absl::StrCat("Request ", i, " says"), 48, true));
    });
  }
  for (std::thread& t : threads) t.join();
  int ok = 0, exhausted = 0;
  for (const GenerateResult& r : results) {
    if (r.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << r.Describe();
      EXPECT_LT(r.elapsed, absl::Seconds(2)) << r.Describe();
      ++exhausted;
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_LE(ok, 2);
  EXPECT_GE(exhausted, kRequests - 2);

  // Calls that end every other way give their slot back.
  GenerateOptions cancel;
  cancel.cancel_after_tokens = 1;
  EXPECT_EQ(cluster.Generate(GreedyPrompt("Cancelled", 200, true), cancel).status.error_code(),
            grpc::StatusCode::CANCELLED);
  EXPECT_EQ(cluster.Generate(GreedyPrompt("", 8)).status.error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      cluster.Generate(GreedyPrompt("Deadline", 2000, true), WithDeadline(absl::Milliseconds(800)))
          .status.error_code(),
      grpc::StatusCode::DEADLINE_EXCEEDED);
  // Both slots free again: two concurrent calls are admitted (the router may need a moment
  // to notice a cancelled call).
  absl::SleepFor(absl::Milliseconds(500));
  std::vector<GenerateResult> pair(2);
  std::thread a([&] { pair[0] = cluster.Generate(GreedyPrompt("Slot one", 8)); });
  std::thread b([&] { pair[1] = cluster.Generate(GreedyPrompt("Slot two", 8)); });
  a.join();
  b.join();
  EXPECT_TRUE(pair[0].ok()) << pair[0].Describe();
  EXPECT_TRUE(pair[1].ok()) << pair[1].Describe();
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(CapacityTest, RequestsWaitForRoomInAFullDecodeCache) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  // With 8 MiB of KV (22 blocks of 16 tokens), a 240-token prompt takes 15 blocks on each
  // worker: one request at a time.
  constexpr int kRequests = 3;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<ReferenceOutput> references;
  for (int i = 0; i < kRequests; ++i) {
    prompts.push_back(RandomPrompt(240, 100 + i));
    ASSERT_OK_AND_ASSIGN(ReferenceOutput out, ref->Greedy(prompts.back(), 16, true));
    references.push_back(out);
  }

  ClusterOptions options = WithWorkers(1, 1);
  options.kv_cache_mb = 8;
  Cluster cluster(options);
  ASSERT_OK(cluster.Start());
  {
    ASSERT_OK_AND_ASSIGN(tandem::v1::WorkerLoad load, cluster.Load(*cluster.decode_workers()[0]));
    ASSERT_LT(load.total_kv_blocks(), 2 * (240 / 16 + 1)) << load.ShortDebugString();
  }
  std::vector<GenerateResult> results(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = cluster.Generate(GreedyTokens(prompts[i], 16, true)); });
  }
  for (std::thread& t : threads) t.join();
  double max_queued = 0;
  for (int i = 0; i < kRequests; ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(results[i].ok()) << results[i].Describe();
    ASSERT_TRUE(results[i].final.has_value()) << results[i].Describe();
    EXPECT_EQ(results[i].token_ids, references[i].tokens) << results[i].Describe();
    std::fprintf(stderr, "request %d: %s timings {%s}\n", i, results[i].Describe().c_str(),
                 results[i].final->timings().ShortDebugString().c_str());
    max_queued = std::max(max_queued, results[i].final->timings().queued());
  }
  // The premise: some request did wait for room.
  EXPECT_GT(max_queued, 0.05);
  auto health = cluster.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(health->serving());
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

}  // namespace
}  // namespace tandem::integration
