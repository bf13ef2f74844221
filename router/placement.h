// Placement: which decode worker and which prefill worker take a request. No I/O: the
// caller passes a snapshot of the workers (WorkerRegistry::Snapshot()) and acts on the
// answer, so every policy is unit-tested without a process.
//
// Decode: not draining; the most free KV blocks once the router's own unreported
// reservations are taken off; ties go to the fewest requests in flight (router-side).
// Prefill, by policy:
//   least_loaded  the fewest prompt tokens the router has in flight on the worker;
//   affinity      the worker that prefilled the longest prefix of this prompt (16-token
//                 blocks, chained hashes, an LRU set per worker), unless its queue is more
//                 than `affinity_max_extra_tokens` above the least loaded one's; no match
//                 falls back to least_loaded;
//   round_robin   the baseline.
//
// Thread-safe: the affinity sets and the round-robin cursor sit behind a mutex.
#ifndef TANDEM_ROUTER_PLACEMENT_H_
#define TANDEM_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "router/worker_view.h"

namespace tandem::router {

enum class PrefillPolicy { kLeastLoaded, kAffinity, kRoundRobin };

// "least_loaded" | "affinity" | "round_robin"; INVALID_ARGUMENT naming the choices.
absl::StatusOr<PrefillPolicy> ParsePrefillPolicy(std::string_view name);
std::string_view PrefillPolicyName(PrefillPolicy policy);

struct PlacementOptions {
  PrefillPolicy prefill_policy = PrefillPolicy::kAffinity;
  int affinity_block_tokens = 16;
  size_t affinity_entries_per_worker = 4096;  // block hashes remembered per prefill worker
  // A prefix match wins only while the holder's in-flight prompt tokens are at most the
  // least loaded worker's plus this.
  int64_t affinity_max_extra_tokens = 2048;
};

class Placement {
 public:
  explicit Placement(PlacementOptions options = {});
  Placement(const Placement&) = delete;
  Placement& operator=(const Placement&) = delete;

  // Decode workers to try, best first: role decode, not draining, not in `exclude`.
  std::vector<WorkerView> RankDecode(absl::Span<const WorkerView> workers,
                                     const absl::flat_hash_set<std::string>& exclude) const;

  // The prefill worker for `prompt` (role prefill, not draining, not in `exclude`, opening
  // a KV transport in `decode_transports` when that is not empty, and not opening nccl on
  // `decode_device`, the decode worker's GPU: NCCL cannot put two ranks on one GPU), or
  // nullopt when there is none. With affinity, the prompt's blocks are remembered as
  // prefilled on the chosen worker. Workers absent from `workers` are forgotten.
  std::optional<WorkerView> ChoosePrefill(absl::Span<const WorkerView> workers,
                                          absl::Span<const int32_t> prompt,
                                          const absl::flat_hash_set<std::string>& exclude,
                                          absl::Span<const std::string> decode_transports = {},
                                          std::string_view decode_device = {});

  // The chained hashes of `tokens`' full blocks of `block_tokens`: hash i covers tokens
  // [0, (i + 1) * block_tokens). Stable across processes.
  static std::vector<uint64_t> PrefixBlockHashes(absl::Span<const int32_t> tokens,
                                                 int block_tokens);

  // For tests and logs: how many leading blocks of `prompt` `worker_id` is known to hold.
  int MatchedBlocks(const std::string& worker_id, absl::Span<const int32_t> prompt) const;

  const PlacementOptions& options() const { return options_; }

 private:
  // An LRU set of block hashes.
  class BlockLru {
   public:
    explicit BlockLru(size_t capacity) : capacity_(capacity) {}
    bool Contains(uint64_t hash) const { return index_.contains(hash); }
    void Touch(uint64_t hash);

   private:
    size_t capacity_;
    std::list<uint64_t> order_;  // most recent first
    absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> index_;
  };

  int MatchedBlocksLocked(const std::string& worker_id, absl::Span<const uint64_t> hashes) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const PlacementOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, BlockLru> prefixes_ ABSL_GUARDED_BY(mu_);  // by worker id
  uint64_t round_robin_next_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PLACEMENT_H_
