// BlockPool: the bookkeeping of the paged KV cache's physical blocks, as in vLLM v1's
// block_pool.py. The pool owns no memory: the backend holds the KV tensors and indexes them
// by block id. The pool tracks, per block, a reference count and an optional content hash,
// keeps the free blocks in an LRU queue, and maps the hashes of cached full blocks to
// their block so that a later request with the same prefix can reuse them.
//
// A free block (ref count 0) may still be cached: it keeps its hash and content until it
// is handed out again, at which point it is evicted (its hash is dropped). Freed blocks
// go to the tail of the queue and allocation takes from the head, so cached blocks are
// evicted oldest-freed first.
//
// Thread contract: engine thread only (no internal locking).
#ifndef TANDEM_ENGINE_BLOCK_POOL_H_
#define TANDEM_ENGINE_BLOCK_POOL_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace tandem {

// Chained content hash of one full block: H(parent block's hash, tokens of the block).
// Deterministic across processes and builds (no per-process seed), so that hashes may be
// compared between workers.
using BlockHash = uint64_t;

// The parent hash of a sequence's first block.
inline constexpr BlockHash kRootBlockHash = 0x9e3779b97f4a7c15ULL;

// hash(block i) = HashBlockTokens(hash(block i-1), tokens of block i).
BlockHash HashBlockTokens(BlockHash parent, absl::Span<const int32_t> tokens);

class BlockPool {
 public:
  // Blocks get ids 0..num_blocks-1, each holding `block_size` tokens.
  BlockPool(int64_t num_blocks, int block_size);

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Takes `n` blocks from the head of the free queue, each with ref count 1 and no hash.
  // Cached blocks among them are evicted. All or nothing: std::nullopt (and no change)
  // when fewer than `n` blocks are free.
  std::optional<std::vector<int32_t>> Allocate(int64_t n);

  // The cached block holding `tokens` (a full block) after the prefix whose hash is
  // `parent`, if any. `hash` must be HashBlockTokens(parent, tokens). The stored parent
  // hash and tokens are compared too, so a 64-bit hash collision is a miss, not a wrong
  // block. Does not change ref counts: Touch() the block to use it.
  std::optional<int32_t> GetCachedBlock(BlockHash hash, BlockHash parent,
                                        absl::Span<const int32_t> tokens) const;

  // Adds a reference to `block`; a free (cached) block leaves the free queue.
  void Touch(int32_t block);

  // Drops one reference from each block, in order; a block reaching ref count 0 joins the
  // tail of the free queue and stays cached if it has a hash. CHECK-fails on a block whose
  // ref count is already 0 (double free).
  void Free(absl::Span<const int32_t> blocks);

  // Registers `block` (ref count > 0, full, KV computed) as holding `tokens` after the
  // prefix `parent`, under `hash` = HashBlockTokens(parent, tokens). Returns false (and
  // leaves the block unhashed) when another block already caches that hash — e.g. two
  // sequences computed the same prefix at once — or when the block already has a hash.
  bool CacheBlock(int32_t block, BlockHash hash, BlockHash parent,
                  absl::Span<const int32_t> tokens);

  // Drops every hash, when no block is in use. Returns false (and does nothing) when some
  // block has a non-zero ref count.
  bool ResetPrefixCache();

  // Blocks with ref count 0, cached ones included (they can be evicted).
  int64_t num_free_blocks() const { return num_free_; }
  int64_t num_total_blocks() const { return num_blocks_; }
  int64_t num_cached_blocks() const { return static_cast<int64_t>(cached_.size()); }
  // Cached blocks evicted by Allocate since construction.
  int64_t num_evictions() const { return num_evictions_; }
  int block_size() const { return block_size_; }

  int32_t ref_count(int32_t block) const;
  std::optional<BlockHash> block_hash(int32_t block) const;

 private:
  static constexpr int32_t kNone = -1;

  void CheckBlock(int32_t block) const;
  void PushFreeTail(int32_t block);
  void RemoveFree(int32_t block);
  void Evict(int32_t block);

  const int64_t num_blocks_;
  const int block_size_;

  std::vector<int32_t> ref_count_;      // [num_blocks]
  std::vector<uint8_t> has_hash_;       // [num_blocks]
  std::vector<BlockHash> hash_;         // [num_blocks], valid where has_hash_
  std::vector<BlockHash> parent_hash_;  // [num_blocks], valid where has_hash_
  std::vector<int32_t> tokens_;         // [num_blocks, block_size], valid where has_hash_

  // Free queue: an intrusive doubly linked list over block ids, so that reviving a cached
  // block from the middle is O(1) (vLLM's FreeKVCacheBlockQueue).
  std::vector<int32_t> prev_;           // [num_blocks], kNone at the head or when not free
  std::vector<int32_t> next_;           // [num_blocks], kNone at the tail or when not free
  std::vector<uint8_t> in_free_queue_;  // [num_blocks]
  int32_t head_ = kNone;
  int32_t tail_ = kNone;
  int64_t num_free_ = 0;

  absl::flat_hash_map<BlockHash, int32_t> cached_;  // hash -> block holding it
  int64_t num_evictions_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_BLOCK_POOL_H_
