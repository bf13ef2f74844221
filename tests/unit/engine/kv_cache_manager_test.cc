#include "engine/kv_cache_manager.h"

#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

KvCacheOptions Options(int64_t num_blocks, bool prefix_caching = true) {
  KvCacheOptions options;
  options.num_blocks = num_blocks;
  options.block_size = 16;
  options.enable_prefix_caching = prefix_caching;
  return options;
}

// `n` tokens first, first+1, ...
std::vector<int32_t> Prompt(int n, int32_t first = 1000) {
  std::vector<int32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

// Admits `id` the way the scheduler does: cached prefix, allocation, full prefill, commit.
int64_t Prefill(KvCacheManager& kv, SeqId id, const std::vector<int32_t>& prompt) {
  const int64_t cached = kv.GetComputedPrefix(id, prompt);
  EXPECT_TRUE(kv.Allocate(id, static_cast<int64_t>(prompt.size())));
  kv.CommitTokens(id, prompt, static_cast<int64_t>(prompt.size()));
  return cached;
}

TEST(KvCacheManagerTest, AllocateGrowsTheTableByWholeBlocks) {
  KvCacheManager kv(Options(10));
  EXPECT_EQ(kv.num_total_blocks(), 10);
  EXPECT_EQ(kv.BlocksNeeded(1, 1), 1);
  EXPECT_EQ(kv.BlocksNeeded(1, 40), 3);

  ASSERT_TRUE(kv.Allocate(1, 1));
  EXPECT_THAT(kv.BlockTable(1), ElementsAre(0));
  EXPECT_EQ(kv.num_free_blocks(), 9);
  ASSERT_TRUE(kv.Allocate(1, 16));  // still fits in block 0
  EXPECT_EQ(kv.num_free_blocks(), 9);
  EXPECT_EQ(kv.BlocksNeeded(1, 40), 2);
  ASSERT_TRUE(kv.Allocate(1, 40));
  EXPECT_THAT(kv.BlockTable(1), ElementsAre(0, 1, 2));
  EXPECT_EQ(kv.num_free_blocks(), 7);
  ASSERT_TRUE(kv.Allocate(1, 20));  // shrinking is not a thing: no change
  EXPECT_EQ(kv.BlockTable(1).size(), 3u);
  EXPECT_DOUBLE_EQ(kv.usage(), 0.3);

  ASSERT_TRUE(kv.Allocate(2, 17));
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(3, 4));
  EXPECT_EQ(kv.num_free_blocks(), 5);
  EXPECT_EQ(kv.num_seqs(), 2);

  kv.Free(1);
  EXPECT_EQ(kv.num_free_blocks(), 8);
  EXPECT_FALSE(kv.Contains(1));
  kv.Free(2);
  EXPECT_EQ(kv.num_free_blocks(), 10);
  EXPECT_DOUBLE_EQ(kv.usage(), 0.0);
  kv.Free(2);  // unknown id: no-op
  EXPECT_EQ(kv.num_free_blocks(), 10);
}

TEST(KvCacheManagerTest, ExhaustionReturnsFalseAndLeavesStateUnchanged) {
  KvCacheManager kv(Options(4));
  ASSERT_TRUE(kv.Allocate(1, 48));  // 3 blocks
  EXPECT_FALSE(kv.CanAllocate(2, 33));
  EXPECT_FALSE(kv.Allocate(2, 33));  // needs 3, 1 free
  EXPECT_FALSE(kv.Contains(2));
  EXPECT_EQ(kv.num_free_blocks(), 1);
  EXPECT_THAT(kv.BlockTable(1), ElementsAre(0, 1, 2));

  EXPECT_FALSE(kv.Allocate(1, 65));  // an existing sequence growing by 2: also refused
  EXPECT_THAT(kv.BlockTable(1), ElementsAre(0, 1, 2));
  EXPECT_EQ(kv.num_free_blocks(), 1);

  EXPECT_TRUE(kv.CanAllocate(1, 64));
  ASSERT_TRUE(kv.Allocate(1, 64));
  EXPECT_THAT(kv.BlockTable(1), ElementsAre(0, 1, 2, 3));
  EXPECT_EQ(kv.num_free_blocks(), 0);
  EXPECT_DOUBLE_EQ(kv.usage(), 1.0);
}

TEST(KvCacheManagerTest, IdenticalPromptsShareTheirFullBlocks) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(40);

  EXPECT_EQ(Prefill(kv, 1, prompt), 0);
  const std::vector<int32_t> a = kv.BlockTable(1);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);  // the third block is not full

  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 32);
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(a[0], a[1]));
  EXPECT_EQ(kv.pool().ref_count(a[0]), 2);
  EXPECT_EQ(kv.pool().ref_count(a[1]), 2);
  EXPECT_EQ(kv.BlocksNeeded(2, 40), 1);
  ASSERT_TRUE(kv.Allocate(2, 40));
  const std::vector<int32_t> b = kv.BlockTable(2);
  ASSERT_EQ(b.size(), 3u);
  EXPECT_NE(b[2], a[2]);
  EXPECT_EQ(kv.pool().ref_count(a[2]), 1);
  EXPECT_EQ(kv.pool().ref_count(b[2]), 1);
  EXPECT_EQ(kv.num_free_blocks(), 10 - 4);

  const PrefixCacheStats& stats = kv.prefix_cache_stats();
  EXPECT_EQ(stats.queries, 2);
  EXPECT_EQ(stats.query_tokens, 80);
  EXPECT_EQ(stats.hit_tokens, 32);
  EXPECT_DOUBLE_EQ(stats.hit_rate(), 0.4);

  kv.Free(1);
  EXPECT_EQ(kv.pool().ref_count(a[0]), 1);
  EXPECT_EQ(kv.num_free_blocks(), 10 - 3);
  kv.Free(2);
  EXPECT_EQ(kv.num_free_blocks(), 10);
}

TEST(KvCacheManagerTest, PrefixStopsAtTheFirstDifferentBlock) {
  KvCacheManager kv(Options(10));
  std::vector<int32_t> prompt = Prompt(48);
  Prefill(kv, 1, prompt);
  prompt[20] = 7;  // second block differs: only the first is shared
  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 16);
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(kv.BlockTable(1)[0]));
}

TEST(KvCacheManagerTest, AtLeastOnePromptTokenIsLeftToCompute) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(32);
  Prefill(kv, 1, prompt);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
  // Both blocks are cached, but the last token must run through the model.
  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 16);
  EXPECT_EQ(kv.GetComputedPrefix(3, Prompt(33)), 32);
  EXPECT_EQ(kv.GetComputedPrefix(4, Prompt(1)), 0);
  EXPECT_EQ(kv.GetComputedPrefix(5, {}), 0);
}

TEST(KvCacheManagerTest, FreedSequenceBlocksAreReusedByALaterIdenticalPrompt) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(40);
  Prefill(kv, 1, prompt);
  const std::vector<int32_t> a = kv.BlockTable(1);
  kv.Free(1);
  EXPECT_EQ(kv.num_free_blocks(), 10);  // cached blocks count as free
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);

  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 32);
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(a[0], a[1]));
  EXPECT_EQ(kv.num_free_blocks(), 8);
  EXPECT_EQ(kv.pool().ref_count(a[0]), 1);
  ASSERT_TRUE(kv.Allocate(2, 40));
  EXPECT_EQ(kv.num_free_blocks(), 7);
}

TEST(KvCacheManagerTest, FullPoolEvictsTheOldestFreedBlockAndItsHash) {
  KvCacheManager kv(Options(2));
  const std::vector<int32_t> x = Prompt(16, 100);
  const std::vector<int32_t> y = Prompt(16, 200);
  Prefill(kv, 1, x);  // block 0
  Prefill(kv, 2, y);  // block 1
  ASSERT_THAT(kv.BlockTable(1), ElementsAre(0));
  ASSERT_THAT(kv.BlockTable(2), ElementsAre(1));
  kv.Free(1);  // oldest freed
  kv.Free(2);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
  EXPECT_EQ(kv.num_free_blocks(), 2);

  ASSERT_TRUE(kv.Allocate(3, 5));
  EXPECT_THAT(kv.BlockTable(3), ElementsAre(0));
  EXPECT_EQ(kv.pool().block_hash(0), std::nullopt);
  EXPECT_TRUE(kv.pool().block_hash(1).has_value());
  EXPECT_EQ(kv.pool().num_cached_blocks(), 1);
  EXPECT_EQ(kv.pool().num_evictions(), 1);

  std::vector<int32_t> x_longer = x;
  x_longer.push_back(1);
  std::vector<int32_t> y_longer = y;
  y_longer.push_back(1);
  EXPECT_EQ(kv.GetComputedPrefix(4, x_longer), 0);
  EXPECT_EQ(kv.GetComputedPrefix(5, y_longer), 16);
  EXPECT_THAT(kv.BlockTable(5), ElementsAre(1));
}

TEST(KvCacheManagerTest, FreeReleasesTheTailBeforeTheHead) {
  KvCacheManager kv(Options(4));
  Prefill(kv, 1, Prompt(48));  // blocks 0, 1, 2, all cached
  kv.Free(1);
  // Evicted in order 2, 1, 0: the shared head of the prompt survives longest.
  ASSERT_TRUE(kv.Allocate(2, 16 * 2));
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(3, 2));
  EXPECT_EQ(kv.GetComputedPrefix(3, Prompt(48)), 32);
  EXPECT_THAT(kv.BlockTable(3), ElementsAre(0, 1));
  EXPECT_EQ(kv.num_free_blocks(), 0);
  // The third block has nowhere to come from; the attached prefix stays as it was.
  EXPECT_FALSE(kv.Allocate(3, 48));
  EXPECT_THAT(kv.BlockTable(3), ElementsAre(0, 1));
  // Giving up on the sequence returns its prefix to the pool, still cached.
  kv.Free(3);
  EXPECT_EQ(kv.num_free_blocks(), 2);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
}

TEST(KvCacheManagerTest, DecodedTokensBecomeShareableAsBlocksFill) {
  KvCacheManager kv(Options(10));
  std::vector<int32_t> tokens = Prompt(20);
  Prefill(kv, 1, tokens);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 1);
  // Decode 12 tokens: the token sampled at step t gets its KV in step t+1.
  for (int step = 0; step < 12; ++step) {
    tokens.push_back(5000 + step);
    ASSERT_TRUE(kv.Allocate(1, static_cast<int64_t>(tokens.size())));
    kv.CommitTokens(1, tokens, static_cast<int64_t>(tokens.size()));
  }
  EXPECT_EQ(tokens.size(), 32u);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
  std::vector<int32_t> follow_up = tokens;
  follow_up.push_back(9);
  EXPECT_EQ(kv.GetComputedPrefix(2, follow_up), 32);
  EXPECT_THAT(kv.BlockTable(2), ElementsAre(kv.BlockTable(1)[0], kv.BlockTable(1)[1]));
}

TEST(KvCacheManagerTest, ChunkedPrefillCommitsOnlyComputedFullBlocks) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(40);
  ASSERT_TRUE(kv.Allocate(1, 40));
  kv.CommitTokens(1, prompt, 15);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 0);
  kv.CommitTokens(1, prompt, 30);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 1);
  kv.CommitTokens(1, prompt, 40);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
  kv.CommitTokens(1, prompt, 40);  // idempotent
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
}

TEST(KvCacheManagerTest, ConcurrentIdenticalPrefillsKeepOneCachedCopy) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(33);
  // Both admitted before either committed: no sharing, both compute the prompt.
  EXPECT_EQ(kv.GetComputedPrefix(1, prompt), 0);
  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 0);
  ASSERT_TRUE(kv.Allocate(1, 33));
  ASSERT_TRUE(kv.Allocate(2, 33));
  kv.CommitTokens(1, prompt, 33);
  kv.CommitTokens(2, prompt, 33);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 2);
  const std::vector<int32_t> a = kv.BlockTable(1);
  kv.Free(1);
  kv.Free(2);
  EXPECT_EQ(kv.GetComputedPrefix(3, prompt), 32);
  EXPECT_THAT(kv.BlockTable(3), ElementsAre(a[0], a[1]));
}

TEST(KvCacheManagerTest, PrefixCachingOffNeverShares) {
  KvCacheManager kv(Options(10, /*prefix_caching=*/false));
  const std::vector<int32_t> prompt = Prompt(40);
  EXPECT_EQ(Prefill(kv, 1, prompt), 0);
  EXPECT_EQ(kv.pool().num_cached_blocks(), 0);
  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 0);
  EXPECT_TRUE(kv.BlockTable(2).empty());
  EXPECT_EQ(kv.prefix_cache_stats().queries, 0);
}

TEST(KvCacheManagerTest, SlotForMapsPositionsThroughTheBlockTable) {
  KvCacheManager kv(Options(10));
  ASSERT_TRUE(kv.Allocate(1, 16));  // block 0
  ASSERT_TRUE(kv.Allocate(2, 40));  // blocks 1, 2, 3
  EXPECT_EQ(kv.SlotFor(1, 0), 0);
  EXPECT_EQ(kv.SlotFor(1, 15), 15);
  EXPECT_EQ(kv.SlotFor(2, 0), 16);
  EXPECT_EQ(kv.SlotFor(2, 17), 33);
  EXPECT_EQ(kv.SlotFor(2, 39), 55);
  EXPECT_EQ(kv.SlotFor(2, 47), 63);  // allocated, not yet used
}

TEST(KvCacheManagerTest, ResetPrefixCacheWaitsForAllSequences) {
  KvCacheManager kv(Options(10));
  const std::vector<int32_t> prompt = Prompt(40);
  Prefill(kv, 1, prompt);
  EXPECT_FALSE(kv.ResetPrefixCache());
  kv.Free(1);
  EXPECT_TRUE(kv.ResetPrefixCache());
  EXPECT_EQ(kv.GetComputedPrefix(2, prompt), 0);
  kv.ResetPrefixCacheStats();
  EXPECT_EQ(kv.prefix_cache_stats().queries, 0);
}

TEST(KvCacheManagerDeathTest, MisuseNamesTheValues) {
  KvCacheManager kv(Options(10));
  ASSERT_TRUE(kv.Allocate(1, 40));
  EXPECT_DEATH(kv.SlotFor(1, 48), "position 48 outside its 3 blocks");
  EXPECT_DEATH(kv.BlockTable(9), "unknown sequence 9");
  EXPECT_DEATH(kv.GetComputedPrefix(1, Prompt(40)), "sequence 1 that already holds 3 blocks");
  EXPECT_DEATH(kv.CommitTokens(1, Prompt(60), 60), "sequence 1 has 3 blocks");
}

}  // namespace
}  // namespace tandem
