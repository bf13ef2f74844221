#include "engine/kv_cache_manager.h"

#include <algorithm>

#include "common/logging.h"

namespace tandem {

KvCacheManager::KvCacheManager(const KvCacheOptions& options)
    : options_(options), pool_(options.num_blocks, options.block_size) {}

int64_t KvCacheManager::BlocksFor(int64_t num_tokens) const {
  return (num_tokens + options_.block_size - 1) / options_.block_size;
}

int64_t KvCacheManager::GetComputedPrefix(SeqId id, absl::Span<const int32_t> prompt_tokens) {
  SeqState& seq = seqs_[id];
  CHECK(seq.blocks.empty()) << "GetComputedPrefix on sequence " << id << " that already holds "
                            << seq.blocks.size() << " blocks";
  if (!options_.enable_prefix_caching || prompt_tokens.empty()) return 0;

  const int bs = options_.block_size;
  // NOTE: the last prompt token is always recomputed: its logits are needed to sample.
  const int64_t max_blocks = (static_cast<int64_t>(prompt_tokens.size()) - 1) / bs;
  BlockHash parent = kRootBlockHash;
  for (int64_t i = 0; i < max_blocks; ++i) {
    const absl::Span<const int32_t> tokens = prompt_tokens.subspan(i * bs, bs);
    const BlockHash hash = HashBlockTokens(parent, tokens);
    const std::optional<int32_t> block = pool_.GetCachedBlock(hash, parent, tokens);
    if (!block.has_value()) break;
    pool_.Touch(*block);
    seq.blocks.push_back(*block);
    seq.hashes.push_back(hash);
    parent = hash;
  }
  const int64_t hit_tokens = static_cast<int64_t>(seq.blocks.size()) * bs;
  ++stats_.queries;
  stats_.query_tokens += static_cast<int64_t>(prompt_tokens.size());
  stats_.hit_tokens += hit_tokens;
  return hit_tokens;
}

int64_t KvCacheManager::BlocksNeeded(SeqId id, int64_t num_tokens_total) const {
  CHECK_GE(num_tokens_total, 0) << "sequence " << id;
  auto it = seqs_.find(id);
  const int64_t have = it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.blocks.size());
  return std::max<int64_t>(0, BlocksFor(num_tokens_total) - have);
}

bool KvCacheManager::CanAllocate(SeqId id, int64_t num_tokens_total) const {
  return BlocksNeeded(id, num_tokens_total) <= pool_.num_free_blocks();
}

bool KvCacheManager::Allocate(SeqId id, int64_t num_tokens_total) {
  const int64_t needed = BlocksNeeded(id, num_tokens_total);
  if (needed == 0) {
    seqs_.try_emplace(id);
    return true;
  }
  std::optional<std::vector<int32_t>> blocks = pool_.Allocate(needed);
  if (!blocks.has_value()) return false;
  std::vector<int32_t>& table = seqs_[id].blocks;
  table.insert(table.end(), blocks->begin(), blocks->end());
  return true;
}

void KvCacheManager::CommitTokens(SeqId id, absl::Span<const int32_t> all_tokens_so_far,
                                  int64_t num_computed) {
  auto it = seqs_.find(id);
  CHECK(it != seqs_.end()) << "CommitTokens on unknown sequence " << id;
  SeqState& seq = it->second;
  const int bs = options_.block_size;
  CHECK(num_computed >= 0 && num_computed <= static_cast<int64_t>(all_tokens_so_far.size()))
      << "sequence " << id << ": num_computed " << num_computed << " with "
      << all_tokens_so_far.size() << " tokens";
  CHECK_LE(num_computed, static_cast<int64_t>(seq.blocks.size()) * bs)
      << "sequence " << id << " has " << seq.blocks.size() << " blocks";
  if (!options_.enable_prefix_caching) return;

  const int64_t num_full = num_computed / bs;
  for (int64_t i = static_cast<int64_t>(seq.hashes.size()); i < num_full; ++i) {
    const BlockHash parent = i == 0 ? kRootBlockHash : seq.hashes[i - 1];
    const absl::Span<const int32_t> tokens = all_tokens_so_far.subspan(i * bs, bs);
    const BlockHash hash = HashBlockTokens(parent, tokens);
    // False when another block already caches this content; the chain goes on regardless.
    pool_.CacheBlock(seq.blocks[i], hash, parent, tokens);
    seq.hashes.push_back(hash);
  }
}

const std::vector<int32_t>& KvCacheManager::BlockTable(SeqId id) const {
  auto it = seqs_.find(id);
  CHECK(it != seqs_.end()) << "BlockTable of unknown sequence " << id;
  return it->second.blocks;
}

int64_t KvCacheManager::SlotFor(SeqId id, int64_t position) const {
  const std::vector<int32_t>& table = BlockTable(id);
  const int bs = options_.block_size;
  CHECK(position >= 0 && position < static_cast<int64_t>(table.size()) * bs)
      << "sequence " << id << ": position " << position << " outside its " << table.size()
      << " blocks of " << bs;
  return static_cast<int64_t>(table[position / bs]) * bs + position % bs;
}

void KvCacheManager::Free(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  std::vector<int32_t>& blocks = it->second.blocks;
  std::reverse(blocks.begin(), blocks.end());
  pool_.Free(blocks);
  seqs_.erase(it);
}

bool KvCacheManager::ResetPrefixCache() { return pool_.ResetPrefixCache(); }

double KvCacheManager::usage() const {
  if (pool_.num_total_blocks() == 0) return 0.0;
  return 1.0 - static_cast<double>(pool_.num_free_blocks()) / pool_.num_total_blocks();
}

}  // namespace tandem
