#include "router/placement.h"

#include <algorithm>
#include <tuple>
#include <utility>

#include "common/strings.h"
#include "kvtransfer/transport.h"

namespace tandem::router {
namespace {

bool Eligible(const WorkerView& w, v1::WorkerRole role,
              const absl::flat_hash_set<std::string>& exclude) {
  return w.role == role && !w.draining && !exclude.contains(w.id);
}

// Free blocks once the router's reservations the heartbeats have not reported yet are
// taken off.
int64_t EffectiveFreeBlocks(const WorkerView& w) {
  return w.load.free_kv_blocks() - w.unreported_blocks;
}

// Least loaded first: router-side queued tokens, then requests, then the id for a stable
// order.
bool PrefillLess(const WorkerView& a, const WorkerView& b) {
  return std::tie(a.inflight_prompt_tokens, a.inflight_requests, a.id) <
         std::tie(b.inflight_prompt_tokens, b.inflight_requests, b.id);
}

// splitmix64's finalizer: a cheap, well-mixed, process-independent 64-bit mix.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<PrefillPolicy> ParsePrefillPolicy(std::string_view name) {
  if (name == "affinity") return PrefillPolicy::kAffinity;
  if (name == "round_robin") return PrefillPolicy::kRoundRobin;
  if (name == "least_loaded") return PrefillPolicy::kLeastLoaded;
  return absl::InvalidArgumentError(
      Cat("--prefill-policy must be affinity, round_robin or least_loaded, got '", name, "'"));
}

std::string_view PrefillPolicyName(PrefillPolicy policy) {
  switch (policy) {
    case PrefillPolicy::kAffinity:
      return "affinity";
    case PrefillPolicy::kRoundRobin:
      return "round_robin";
    case PrefillPolicy::kLeastLoaded:
      return "least_loaded";
  }
  return "unknown";
}

void Placement::BlockLru::Touch(uint64_t hash) {
  auto it = index_.find(hash);
  if (it != index_.end()) {
    order_.splice(order_.begin(), order_, it->second);
    return;
  }
  order_.push_front(hash);
  index_[hash] = order_.begin();
  if (order_.size() > capacity_) {
    index_.erase(order_.back());
    order_.pop_back();
  }
}

Placement::Placement(PlacementOptions options) : options_(std::move(options)) {}

std::vector<WorkerView> Placement::RankDecode(
    absl::Span<const WorkerView> workers, const absl::flat_hash_set<std::string>& exclude) const {
  std::vector<WorkerView> ranked;
  for (const WorkerView& w : workers) {
    if (Eligible(w, v1::WORKER_ROLE_DECODE, exclude)) ranked.push_back(w);
  }
  std::sort(ranked.begin(), ranked.end(), [](const WorkerView& a, const WorkerView& b) {
    const int64_t fa = EffectiveFreeBlocks(a);
    const int64_t fb = EffectiveFreeBlocks(b);
    if (fa != fb) return fa > fb;
    return std::tie(a.inflight_requests, a.id) < std::tie(b.inflight_requests, b.id);
  });
  return ranked;
}

std::vector<uint64_t> Placement::PrefixBlockHashes(absl::Span<const int32_t> tokens,
                                                   int block_tokens) {
  std::vector<uint64_t> hashes;
  if (block_tokens <= 0) return hashes;
  const size_t n_blocks = tokens.size() / static_cast<size_t>(block_tokens);
  hashes.reserve(n_blocks);
  uint64_t h = Mix(static_cast<uint64_t>(block_tokens));
  for (size_t b = 0; b < n_blocks; ++b) {
    for (int i = 0; i < block_tokens; ++i) {
      h = Mix(h ^ static_cast<uint32_t>(tokens[b * block_tokens + i]));
    }
    hashes.push_back(h);
  }
  return hashes;
}

int Placement::MatchedBlocksLocked(const std::string& worker_id,
                                   absl::Span<const uint64_t> hashes) const {
  auto it = prefixes_.find(worker_id);
  if (it == prefixes_.end()) return 0;
  int matched = 0;
  for (uint64_t h : hashes) {
    if (!it->second.Contains(h)) break;
    ++matched;
  }
  return matched;
}

int Placement::MatchedBlocks(const std::string& worker_id, absl::Span<const int32_t> prompt) const {
  const std::vector<uint64_t> hashes = PrefixBlockHashes(prompt, options_.affinity_block_tokens);
  absl::ReaderMutexLock lock(&mu_);
  return MatchedBlocksLocked(worker_id, hashes);
}

std::optional<WorkerView> Placement::ChoosePrefill(
    absl::Span<const WorkerView> workers, absl::Span<const int32_t> prompt,
    const absl::flat_hash_set<std::string>& exclude,
    absl::Span<const std::string> decode_transports, std::string_view decode_device) {
  // A prefill worker opens one transport (its first); the decode worker must accept it,
  // and nccl needs two GPUs.
  auto speaks = [&](const WorkerView& w) {
    if (w.transports.empty()) return true;
    if (w.transports.front() == TransportKindName(TransportKind::kNccl) &&
        !CheckNcclPeers(w.device_uuid, decode_device).ok()) {
      return false;
    }
    return decode_transports.empty() ||
           std::find(decode_transports.begin(), decode_transports.end(), w.transports.front()) !=
               decode_transports.end();
  };
  std::vector<const WorkerView*> eligible;
  for (const WorkerView& w : workers) {
    if (Eligible(w, v1::WORKER_ROLE_PREFILL, exclude) && speaks(w)) eligible.push_back(&w);
  }
  absl::MutexLock lock(&mu_);
  // Forget workers that left.
  for (auto it = prefixes_.begin(); it != prefixes_.end();) {
    const bool present = std::any_of(workers.begin(), workers.end(),
                                     [&](const WorkerView& w) { return w.id == it->first; });
    if (present) {
      ++it;
    } else {
      prefixes_.erase(it++);
    }
  }
  if (eligible.empty()) return std::nullopt;

  const WorkerView* chosen = nullptr;
  switch (options_.prefill_policy) {
    case PrefillPolicy::kRoundRobin: {
      std::sort(eligible.begin(), eligible.end(),
                [](const WorkerView* a, const WorkerView* b) { return a->id < b->id; });
      chosen = eligible[round_robin_next_++ % eligible.size()];
      break;
    }
    case PrefillPolicy::kLeastLoaded:
    case PrefillPolicy::kAffinity: {
      const WorkerView* least = *std::min_element(
          eligible.begin(), eligible.end(),
          [](const WorkerView* a, const WorkerView* b) { return PrefillLess(*a, *b); });
      chosen = least;
      if (options_.prefill_policy == PrefillPolicy::kAffinity) {
        const std::vector<uint64_t> hashes =
            PrefixBlockHashes(prompt, options_.affinity_block_tokens);
        int best_matched = 0;
        for (const WorkerView* w : eligible) {
          if (w->inflight_prompt_tokens >
              least->inflight_prompt_tokens + options_.affinity_max_extra_tokens) {
            continue;
          }
          const int matched = MatchedBlocksLocked(w->id, hashes);
          if (matched > best_matched ||
              (matched == best_matched && matched > 0 && PrefillLess(*w, *chosen))) {
            best_matched = matched;
            chosen = w;
          }
        }
        BlockLru& lru =
            prefixes_.try_emplace(chosen->id, BlockLru(options_.affinity_entries_per_worker))
                .first->second;
        // Last block first, so the prompt's leading blocks are the most recent: an LRU
        // that overflows drops the tails of prefixes, never their heads.
        for (auto h = hashes.rbegin(); h != hashes.rend(); ++h) lru.Touch(*h);
      }
      break;
    }
  }
  return *chosen;
}

}  // namespace tandem::router
