// KvCacheManager: per-sequence block tables over a BlockPool, with prefix caching, as in
// vLLM v1's kv_cache_manager.py. Pure bookkeeping: the KV tensors live in the backend and
// are indexed by the block ids (and slots) handed out here.
//
// Life of a sequence:
//   1. GetComputedPrefix(id, prompt) attaches the longest cached prefix of full blocks
//      and says how many prompt tokens need no compute (optional; skip it for a sequence
//      whose KV arrives from elsewhere and should not be shared).
//   2. Allocate(id, n) before each step grows the table to cover n tokens; false means
//      "not now" (not enough free blocks), a normal scheduling outcome. A scheduler that
//      gives up on admitting the sequence calls Free(id) to drop the attached prefix.
//   3. CommitTokens(id, tokens, num_computed) after each step registers the blocks that
//      became full and computed, so later requests can share them.
//   4. Free(id) when the sequence finishes or is preempted/cancelled. Its hashed blocks
//      stay cached (and count as free) until the pool evicts them.
//
// Thread contract: engine thread only (no internal locking).
#ifndef TANDEM_ENGINE_KV_CACHE_MANAGER_H_
#define TANDEM_ENGINE_KV_CACHE_MANAGER_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"
#include "engine/block_pool.h"

namespace tandem {

using SeqId = int64_t;

struct KvCacheOptions {
  int64_t num_blocks = 0;
  int block_size = 16;
  bool enable_prefix_caching = true;
};

// Prefix-cache counters since construction (or the last ResetPrefixCacheStats()).
struct PrefixCacheStats {
  int64_t queries = 0;       // GetComputedPrefix calls with prefix caching on
  int64_t query_tokens = 0;  // prompt tokens looked up
  int64_t hit_tokens = 0;    // prompt tokens served from the cache
  double hit_rate() const {
    return query_tokens == 0 ? 0.0 : static_cast<double>(hit_tokens) / query_tokens;
  }
};

class KvCacheManager {
 public:
  explicit KvCacheManager(const KvCacheOptions& options);

  KvCacheManager(const KvCacheManager&) = delete;
  KvCacheManager& operator=(const KvCacheManager&) = delete;

  // Attaches to a new sequence `id` (one with no blocks yet) the longest run of cached
  // full blocks that prefixes `prompt_tokens` (ref count +1 each) and returns the number
  // of prompt tokens they cover, a multiple of block_size. At least one prompt token is
  // always left to compute (the model needs it to produce logits), so the result is
  // < prompt_tokens.size(). Returns 0 when prefix caching is off.
  int64_t GetComputedPrefix(SeqId id, absl::Span<const int32_t> prompt_tokens);

  // Grows the block table of `id` (created if unknown) to cover `num_tokens_total`
  // tokens. All or nothing: false, with no change, when the pool has too few free blocks.
  // Free cached blocks may be evicted to satisfy it.
  bool Allocate(SeqId id, int64_t num_tokens_total);

  // Blocks Allocate(id, num_tokens_total) would take from the pool (0 if it needs none).
  int64_t BlocksNeeded(SeqId id, int64_t num_tokens_total) const;
  bool CanAllocate(SeqId id, int64_t num_tokens_total) const;

  // Registers the hashes of the blocks of `id` that are full and computed:
  // `all_tokens_so_far` are the sequence's tokens (prompt, then output), the first
  // `num_computed` of which have KV in the cache. No-op when prefix caching is off.
  void CommitTokens(SeqId id, absl::Span<const int32_t> all_tokens_so_far, int64_t num_computed);

  // Block ids of `id`, in token order. CHECK-fails for an unknown sequence.
  const std::vector<int32_t>& BlockTable(SeqId id) const;

  // The KV slot of token `position` of `id`: block_table[pos / bs] * bs + pos % bs.
  int64_t SlotFor(SeqId id, int64_t position) const;

  // Drops the sequence and one reference to each of its blocks (last block first, so a
  // sequence's tail is evicted before its more shareable head). Unknown ids are a no-op.
  void Free(SeqId id);

  bool Contains(SeqId id) const { return seqs_.contains(id); }
  int64_t num_seqs() const { return static_cast<int64_t>(seqs_.size()); }

  // Drops every cached hash; false (no change) while any sequence holds blocks.
  bool ResetPrefixCache();

  int64_t num_free_blocks() const { return pool_.num_free_blocks(); }
  int64_t num_total_blocks() const { return pool_.num_total_blocks(); }
  // Fraction of blocks in use (ref count > 0), in [0, 1].
  double usage() const;
  int block_size() const { return options_.block_size; }
  bool prefix_caching_enabled() const { return options_.enable_prefix_caching; }

  const PrefixCacheStats& prefix_cache_stats() const { return stats_; }
  void ResetPrefixCacheStats() { stats_ = PrefixCacheStats(); }

  // For tests and metrics.
  const BlockPool& pool() const { return pool_; }

 private:
  struct SeqState {
    std::vector<int32_t> blocks;
    // Chained hashes of blocks[0..hashes.size()), the blocks already committed.
    std::vector<BlockHash> hashes;
  };

  int64_t BlocksFor(int64_t num_tokens) const;

  const KvCacheOptions options_;
  BlockPool pool_;
  absl::flat_hash_map<SeqId, SeqState> seqs_;
  PrefixCacheStats stats_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_KV_CACHE_MANAGER_H_
