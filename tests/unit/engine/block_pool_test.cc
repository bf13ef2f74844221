#include "engine/block_pool.h"

#include <numeric>
#include <optional>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

constexpr int kBlockSize = 4;

std::vector<int32_t> Tokens(int32_t first) {
  std::vector<int32_t> tokens(kBlockSize);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

TEST(BlockPoolTest, AllocateAndFreeReturnExactCounts) {
  BlockPool pool(10, kBlockSize);
  EXPECT_EQ(pool.num_total_blocks(), 10);
  EXPECT_EQ(pool.num_free_blocks(), 10);

  std::optional<std::vector<int32_t>> a = pool.Allocate(3);
  ASSERT_TRUE(a.has_value());
  EXPECT_THAT(*a, ElementsAre(0, 1, 2));
  EXPECT_EQ(pool.num_free_blocks(), 7);
  for (int32_t b : *a) EXPECT_EQ(pool.ref_count(b), 1);

  std::optional<std::vector<int32_t>> b = pool.Allocate(7);
  ASSERT_TRUE(b.has_value());
  EXPECT_THAT(*b, ElementsAre(3, 4, 5, 6, 7, 8, 9));
  EXPECT_EQ(pool.num_free_blocks(), 0);

  pool.Free(*a);
  EXPECT_EQ(pool.num_free_blocks(), 3);
  for (int32_t block : *a) EXPECT_EQ(pool.ref_count(block), 0);
  pool.Free(*b);
  EXPECT_EQ(pool.num_free_blocks(), 10);

  std::optional<std::vector<int32_t>> none = pool.Allocate(0);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(pool.num_free_blocks(), 10);
}

TEST(BlockPoolTest, ExhaustionReturnsNulloptAndLeavesStateUnchanged) {
  BlockPool pool(4, kBlockSize);
  ASSERT_TRUE(pool.Allocate(3).has_value());
  EXPECT_EQ(pool.Allocate(2), std::nullopt);
  EXPECT_EQ(pool.num_free_blocks(), 1);
  EXPECT_EQ(pool.ref_count(3), 0);
  // The one free block is still the one handed out next.
  EXPECT_THAT(pool.Allocate(1), Optional(ElementsAre(3)));
  EXPECT_EQ(pool.Allocate(1), std::nullopt);
}

TEST(BlockPoolTest, FreedBlocksAreReallocatedInFreeOrder) {
  BlockPool pool(4, kBlockSize);
  ASSERT_TRUE(pool.Allocate(4).has_value());
  pool.Free({2});
  pool.Free({0});
  pool.Free({3});
  pool.Free({1});
  EXPECT_THAT(pool.Allocate(4), Optional(ElementsAre(2, 0, 3, 1)));
}

TEST(BlockPoolTest, TouchSharesABlockAndRefCountsAddUp) {
  BlockPool pool(3, kBlockSize);
  std::vector<int32_t> blocks = *pool.Allocate(1);
  pool.Touch(blocks[0]);
  EXPECT_EQ(pool.ref_count(blocks[0]), 2);
  pool.Free(blocks);
  EXPECT_EQ(pool.ref_count(blocks[0]), 1);
  EXPECT_EQ(pool.num_free_blocks(), 2);
  pool.Free(blocks);
  EXPECT_EQ(pool.ref_count(blocks[0]), 0);
  EXPECT_EQ(pool.num_free_blocks(), 3);
}

TEST(BlockPoolTest, FreedCachedBlockIsFreeAndCanBeRevived) {
  BlockPool pool(3, kBlockSize);
  const int32_t block = (*pool.Allocate(1))[0];
  const std::vector<int32_t> tokens = Tokens(100);
  const BlockHash hash = HashBlockTokens(kRootBlockHash, tokens);
  ASSERT_TRUE(pool.CacheBlock(block, hash, kRootBlockHash, tokens));
  EXPECT_THAT(pool.block_hash(block), Optional(hash));
  EXPECT_EQ(pool.num_cached_blocks(), 1);

  pool.Free({block});
  EXPECT_EQ(pool.num_free_blocks(), 3);  // cached blocks count as free
  EXPECT_THAT(pool.GetCachedBlock(hash, kRootBlockHash, tokens), Optional(block));

  pool.Touch(block);  // revive from the middle of the free queue
  EXPECT_EQ(pool.ref_count(block), 1);
  EXPECT_EQ(pool.num_free_blocks(), 2);
  EXPECT_THAT(pool.block_hash(block), Optional(hash));
  // The revived block is not handed out again.
  std::optional<std::vector<int32_t>> rest = pool.Allocate(2);
  ASSERT_TRUE(rest.has_value());
  EXPECT_THAT(*rest, ::testing::Not(::testing::Contains(block)));
  EXPECT_EQ(pool.num_evictions(), 0);
}

TEST(BlockPoolTest, ReallocatingACachedBlockEvictsItsHash) {
  BlockPool pool(2, kBlockSize);
  const std::vector<int32_t> blocks = *pool.Allocate(2);  // {0, 1}
  const std::vector<int32_t> tokens = Tokens(7);
  const BlockHash hash = HashBlockTokens(kRootBlockHash, tokens);
  ASSERT_TRUE(pool.CacheBlock(blocks[0], hash, kRootBlockHash, tokens));
  pool.Free({blocks[0]});  // cached block 0 freed first: it is the oldest
  pool.Free({blocks[1]});

  EXPECT_THAT(pool.Allocate(1), Optional(ElementsAre(0)));
  EXPECT_EQ(pool.block_hash(0), std::nullopt);
  EXPECT_EQ(pool.GetCachedBlock(hash, kRootBlockHash, tokens), std::nullopt);
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  EXPECT_EQ(pool.num_evictions(), 1);
}

TEST(BlockPoolTest, LookupChecksTokensAndParentNotJustTheHash) {
  BlockPool pool(2, kBlockSize);
  const int32_t block = (*pool.Allocate(1))[0];
  const std::vector<int32_t> tokens = Tokens(1);
  const BlockHash hash = HashBlockTokens(kRootBlockHash, tokens);
  ASSERT_TRUE(pool.CacheBlock(block, hash, kRootBlockHash, tokens));
  // Same hash presented with other content (a simulated 64-bit collision): a miss.
  EXPECT_EQ(pool.GetCachedBlock(hash, kRootBlockHash, Tokens(2)), std::nullopt);
  EXPECT_EQ(pool.GetCachedBlock(hash, kRootBlockHash + 1, tokens), std::nullopt);
  EXPECT_THAT(pool.GetCachedBlock(hash, kRootBlockHash, tokens), Optional(block));
}

TEST(BlockPoolTest, SecondBlockWithTheSameHashIsNotCached) {
  BlockPool pool(2, kBlockSize);
  const std::vector<int32_t> blocks = *pool.Allocate(2);
  const std::vector<int32_t> tokens = Tokens(5);
  const BlockHash hash = HashBlockTokens(kRootBlockHash, tokens);
  EXPECT_TRUE(pool.CacheBlock(blocks[0], hash, kRootBlockHash, tokens));
  EXPECT_FALSE(pool.CacheBlock(blocks[1], hash, kRootBlockHash, tokens));
  EXPECT_FALSE(pool.CacheBlock(blocks[0], hash, kRootBlockHash, tokens));
  EXPECT_EQ(pool.block_hash(blocks[1]), std::nullopt);
  EXPECT_EQ(pool.num_cached_blocks(), 1);
  // Evicting the unhashed duplicate leaves the cached one in place.
  pool.Free({blocks[1]});
  ASSERT_TRUE(pool.Allocate(1).has_value());
  EXPECT_THAT(pool.GetCachedBlock(hash, kRootBlockHash, tokens), Optional(blocks[0]));
}

TEST(BlockPoolTest, ResetPrefixCacheOnlyWhenNothingIsInUse) {
  BlockPool pool(2, kBlockSize);
  const int32_t block = (*pool.Allocate(1))[0];
  const std::vector<int32_t> tokens = Tokens(3);
  const BlockHash hash = HashBlockTokens(kRootBlockHash, tokens);
  ASSERT_TRUE(pool.CacheBlock(block, hash, kRootBlockHash, tokens));
  EXPECT_FALSE(pool.ResetPrefixCache());
  EXPECT_EQ(pool.num_cached_blocks(), 1);
  pool.Free({block});
  EXPECT_TRUE(pool.ResetPrefixCache());
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  EXPECT_EQ(pool.block_hash(block), std::nullopt);
  EXPECT_EQ(pool.GetCachedBlock(hash, kRootBlockHash, tokens), std::nullopt);
}

TEST(BlockPoolTest, HashIsChainedDeterministicAndOrderSensitive) {
  const std::vector<int32_t> a = {1, 2, 3, 4};
  const std::vector<int32_t> b = {2, 1, 3, 4};
  const BlockHash ha = HashBlockTokens(kRootBlockHash, a);
  EXPECT_EQ(ha, HashBlockTokens(kRootBlockHash, a));
  EXPECT_NE(ha, HashBlockTokens(kRootBlockHash, b));
  EXPECT_NE(ha, HashBlockTokens(ha, a));
  EXPECT_NE(HashBlockTokens(kRootBlockHash, {1, 2, 3}),
            HashBlockTokens(kRootBlockHash, {1, 2, 3, 0}));
  // Pinned: the hash carries no per-process seed, so workers can compare hashes.
  EXPECT_EQ(ha, 0xa59f6526933c6289ULL) << std::hex << ha;
}

TEST(BlockPoolDeathTest, DoubleFreeNamesTheBlock) {
  BlockPool pool(2, kBlockSize);
  const std::vector<int32_t> blocks = *pool.Allocate(1);
  pool.Free(blocks);
  EXPECT_DEATH(pool.Free(blocks), "block 0 freed with ref count 0");
}

TEST(BlockPoolDeathTest, OutOfRangeBlockNamesTheId) {
  BlockPool pool(2, kBlockSize);
  EXPECT_DEATH(pool.Touch(5), "block id 5 out of range");
}

}  // namespace
}  // namespace tandem
