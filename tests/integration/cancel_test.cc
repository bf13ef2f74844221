// A client that cancels, or whose deadline passes, frees the request's KV blocks on both the
// prefill and the decode worker within seconds. (Prompt blocks the prefill worker keeps in
// its prefix cache count as free: the engine's KvCacheManager defines them so.)
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"
#include "tests/integration/reference_model.h"

namespace tandem::integration {
namespace {

using tandem::v1::WorkerLoad;

constexpr char kPrompt[] =
    "Write a very long essay about the history of mathematics, from counting sticks and "
    "clay tablets to calculus, algebra, geometry and the computers of today.";

struct Loads {
  WorkerLoad prefill;
  WorkerLoad decode;
};

class CancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster_ = std::make_unique<Cluster>(WithWorkers(1, 1));
    ASSERT_OK(cluster_->Start());
    prefill_ = cluster_->prefill_workers()[0];
    decode_ = cluster_->decode_workers()[0];
  }

  absl::StatusOr<Loads> ReadLoads() {
    Loads loads;
    auto p = cluster_->Load(*prefill_);
    if (!p.ok()) return p.status();
    auto d = cluster_->Load(*decode_);
    if (!d.ok()) return d.status();
    loads.prefill = *p;
    loads.decode = *d;
    return loads;
  }

  // Polls until both workers' free blocks are back to `baseline` and nothing runs.
  void ExpectBlocksReturn(const Loads& baseline, const char* what) {
    Loads last;
    const absl::Time start = absl::Now();
    const bool back = PollUntil(absl::Seconds(5), [&] {
      auto now = ReadLoads();
      if (!now.ok()) return false;
      last = *now;
      return last.prefill.free_kv_blocks() == baseline.prefill.free_kv_blocks() &&
             last.decode.free_kv_blocks() == baseline.decode.free_kv_blocks() &&
             last.decode.running_sequences() == 0 && last.decode.waiting_sequences() == 0 &&
             last.prefill.running_sequences() == 0 && last.prefill.queued_prompt_tokens() == 0;
    });
    std::fprintf(stderr, "%s: blocks back after %s\n", what,
                 absl::FormatDuration(absl::Now() - start).c_str());
    EXPECT_TRUE(back) << what << ": after 5 s: prefill " << last.prefill.ShortDebugString()
                      << " (baseline " << baseline.prefill.ShortDebugString() << "); decode "
                      << last.decode.ShortDebugString() << " (baseline "
                      << baseline.decode.ShortDebugString() << ")";
  }

  std::unique_ptr<Cluster> cluster_;
  Worker* prefill_ = nullptr;
  Worker* decode_ = nullptr;
};

TEST_F(CancelTest, ClientCancelFreesBlocksOnBothWorkers) {
  ASSERT_OK_AND_ASSIGN(Loads baseline, ReadLoads());
  EXPECT_GT(baseline.prefill.total_kv_blocks(), 0);
  EXPECT_GT(baseline.decode.total_kv_blocks(), 0);
  EXPECT_EQ(baseline.decode.free_kv_blocks(), baseline.decode.total_kv_blocks())
      << baseline.decode.ShortDebugString();

  GenerateOptions options;
  options.cancel_after_tokens = 3;
  GenerateResult r = cluster_->Generate(GreedyChat(kPrompt, 1000, true), options);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << r.Describe();
  EXPECT_GE(r.token_ids.size(), 3u) << r.Describe();
  EXPECT_LT(r.token_ids.size(), 1000u) << r.Describe();
  ExpectBlocksReturn(baseline, "after the cancel");

  // The prefill worker also returns to its baseline after a request that completes (the
  // prompt's full blocks stay cached, and cached blocks count as free).
  GenerateResult done = cluster_->Generate(GreedyChat(kPrompt, 4, true));
  ASSERT_TRUE(done.ok()) << done.Describe();
  ExpectBlocksReturn(baseline, "after a completed request");
}

TEST_F(CancelTest, DeadlineExpiringMidStreamFreesBlocks) {
  ASSERT_OK_AND_ASSIGN(Loads baseline, ReadLoads());
  // Warm the path so that the first token comes well before the deadline.
  GenerateResult warm = cluster_->Generate(GreedyPrompt("Hello", 2));
  ASSERT_TRUE(warm.ok()) << warm.Describe();
  ExpectBlocksReturn(baseline, "after the warm-up");

  GenerateOptions options;
  options.deadline = absl::Seconds(3);
  GenerateResult r = cluster_->Generate(GreedyChat(kPrompt, 2000, true), options);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << r.Describe();
  EXPECT_GE(r.token_ids.size(), 1u)
      << "the deadline passed before the stream started: " << r.Describe();
  EXPECT_LT(r.elapsed, absl::Seconds(5)) << r.Describe();
  ExpectBlocksReturn(baseline, "after the deadline");

  // The router still serves.
  GenerateResult after = cluster_->Generate(GreedyPrompt("Hello", 2));
  EXPECT_TRUE(after.ok()) << after.Describe();
}

// Random ordinary token ids: a prompt no cache has seen.
std::vector<int32_t> RandomPrompt(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = 1000 + static_cast<int32_t>(rng() % 20000);
  return ids;
}

TEST_F(CancelTest, DeadlineDuringPrefillFreesBlocks) {
  constexpr int kPromptTokens = 600;
  // How long such a prefill takes here (a different prompt: this one gets cached).
  GenerateResult probe = cluster_->Generate(GreedyTokens(RandomPrompt(kPromptTokens, 1), 1));
  ASSERT_TRUE(probe.ok()) << probe.Describe();
  ASSERT_TRUE(probe.final.has_value());
  const absl::Duration prefill = absl::Seconds(probe.final->timings().prefill());
  EXPECT_GT(prefill, absl::Milliseconds(300))
      << "too fast to cut mid-prefill: " << probe.Describe();

  ASSERT_OK_AND_ASSIGN(Loads baseline, ReadLoads());
  GenerateResult r =
      cluster_->Generate(GreedyTokens(RandomPrompt(kPromptTokens, 2), 16),
                         WithDeadline(std::max(prefill / 3, absl::Milliseconds(100))));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << r.Describe();
  EXPECT_TRUE(r.token_ids.empty()) << r.Describe();
  ExpectBlocksReturn(baseline, "after the mid-prefill deadline");

  GenerateResult after = cluster_->Generate(GreedyPrompt("Hello", 2));
  EXPECT_TRUE(after.ok()) << after.Describe();
  ExpectBlocksReturn(baseline, "after a request");
}

}  // namespace
}  // namespace tandem::integration
