#include "engine/block_pool.h"

#include <algorithm>
#include <limits>

#include "common/logging.h"

namespace tandem {
namespace {

// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
inline uint64_t Fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Validates the constructor's arguments before any vector is sized from them.
int64_t CheckedNumBlocks(int64_t num_blocks, int block_size) {
  CHECK_GE(num_blocks, 0);
  CHECK_LE(num_blocks, std::numeric_limits<int32_t>::max());
  CHECK_GT(block_size, 0);
  return num_blocks;
}

}  // namespace

BlockHash HashBlockTokens(BlockHash parent, absl::Span<const int32_t> tokens) {
  constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ULL;
  constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4FULL;
  uint64_t h = Fmix64(parent ^ (static_cast<uint64_t>(tokens.size()) * kPrime1));
  // Two tokens per 64-bit word; each step is a bijection of h for a fixed word.
  size_t i = 0;
  for (; i + 1 < tokens.size(); i += 2) {
    const uint64_t word = static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) |
                          (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i + 1])) << 32);
    h = Fmix64(h ^ (word * kPrime2 + kPrime1));
  }
  if (i < tokens.size()) {
    h = Fmix64(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])) * kPrime1 + kPrime2));
  }
  return h;
}

BlockPool::BlockPool(int64_t num_blocks, int block_size)
    : num_blocks_(CheckedNumBlocks(num_blocks, block_size)),
      block_size_(block_size),
      ref_count_(num_blocks, 0),
      has_hash_(num_blocks, 0),
      hash_(num_blocks, 0),
      parent_hash_(num_blocks, 0),
      tokens_(num_blocks * static_cast<int64_t>(block_size), 0),
      prev_(num_blocks, kNone),
      next_(num_blocks, kNone),
      in_free_queue_(num_blocks, 0) {
  for (int32_t b = 0; b < num_blocks; ++b) PushFreeTail(b);
}

void BlockPool::CheckBlock(int32_t block) const {
  CHECK(block >= 0 && block < num_blocks_)
      << "block id " << block << " out of range [0, " << num_blocks_ << ")";
}

void BlockPool::PushFreeTail(int32_t block) {
  CHECK(!in_free_queue_[block]) << "block " << block << " already in the free queue";
  prev_[block] = tail_;
  next_[block] = kNone;
  if (tail_ != kNone) {
    next_[tail_] = block;
  } else {
    head_ = block;
  }
  tail_ = block;
  in_free_queue_[block] = 1;
  ++num_free_;
}

void BlockPool::RemoveFree(int32_t block) {
  CHECK(in_free_queue_[block]) << "block " << block << " is not in the free queue";
  const int32_t p = prev_[block];
  const int32_t n = next_[block];
  if (p != kNone) {
    next_[p] = n;
  } else {
    head_ = n;
  }
  if (n != kNone) {
    prev_[n] = p;
  } else {
    tail_ = p;
  }
  prev_[block] = kNone;
  next_[block] = kNone;
  in_free_queue_[block] = 0;
  --num_free_;
}

void BlockPool::Evict(int32_t block) {
  if (!has_hash_[block]) return;
  auto it = cached_.find(hash_[block]);
  if (it != cached_.end() && it->second == block) cached_.erase(it);
  has_hash_[block] = 0;
  ++num_evictions_;
}

std::optional<std::vector<int32_t>> BlockPool::Allocate(int64_t n) {
  CHECK_GE(n, 0);
  if (n > num_free_) return std::nullopt;
  std::vector<int32_t> blocks;
  blocks.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t block = head_;
    RemoveFree(block);
    Evict(block);
    CHECK_EQ(ref_count_[block], 0) << "free block " << block << " has references";
    ref_count_[block] = 1;
    blocks.push_back(block);
  }
  return blocks;
}

std::optional<int32_t> BlockPool::GetCachedBlock(BlockHash hash, BlockHash parent,
                                                 absl::Span<const int32_t> tokens) const {
  CHECK_EQ(static_cast<int64_t>(tokens.size()), block_size_);
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  const int32_t block = it->second;
  if (parent_hash_[block] != parent) return std::nullopt;
  const int32_t* stored = tokens_.data() + static_cast<int64_t>(block) * block_size_;
  if (!std::equal(tokens.begin(), tokens.end(), stored)) return std::nullopt;
  return block;
}

void BlockPool::Touch(int32_t block) {
  CheckBlock(block);
  if (ref_count_[block] == 0) RemoveFree(block);
  ++ref_count_[block];
}

void BlockPool::Free(absl::Span<const int32_t> blocks) {
  for (const int32_t block : blocks) {
    CheckBlock(block);
    CHECK_GT(ref_count_[block], 0) << "block " << block << " freed with ref count 0 (double free)";
    if (--ref_count_[block] == 0) PushFreeTail(block);
  }
}

bool BlockPool::CacheBlock(int32_t block, BlockHash hash, BlockHash parent,
                           absl::Span<const int32_t> tokens) {
  CheckBlock(block);
  CHECK_GT(ref_count_[block], 0) << "caching block " << block << " that is not in use";
  CHECK_EQ(static_cast<int64_t>(tokens.size()), block_size_);
  if (has_hash_[block]) return false;
  if (!cached_.try_emplace(hash, block).second) return false;
  has_hash_[block] = 1;
  hash_[block] = hash;
  parent_hash_[block] = parent;
  std::copy(tokens.begin(), tokens.end(),
            tokens_.begin() + static_cast<int64_t>(block) * block_size_);
  return true;
}

bool BlockPool::ResetPrefixCache() {
  if (num_free_ != num_blocks_) return false;
  cached_.clear();
  std::fill(has_hash_.begin(), has_hash_.end(), 0);
  return true;
}

int32_t BlockPool::ref_count(int32_t block) const {
  CheckBlock(block);
  return ref_count_[block];
}

std::optional<BlockHash> BlockPool::block_hash(int32_t block) const {
  CheckBlock(block);
  if (!has_hash_[block]) return std::nullopt;
  return hash_[block];
}

}  // namespace tandem
