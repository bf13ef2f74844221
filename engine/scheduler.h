// Continuous batching with a token budget per step, as in vLLM v1: every running sequence
// gets the tokens it needs (one to decode, or the next chunk of its prompt), waiting
// sequences are admitted while the budget, the sequence limit and the free KV blocks allow,
// and when the cache runs out the newest running sequence is preempted (its blocks freed, its
// tokens kept) and later recomputed. Running out of blocks is a normal outcome, not an error.
//
// Engine thread only.
#ifndef TANDEM_ENGINE_SCHEDULER_H_
#define TANDEM_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/kv_cache_manager.h"
#include "engine/sequence.h"

namespace tandem {

struct SchedulerOptions {
  int32_t max_batch_tokens = 512;  // tokens fed to the model in one step
  int32_t max_num_seqs = 64;       // sequences in one step
};

struct ScheduledSeq {
  Sequence* seq = nullptr;
  int32_t start_pos = 0;   // == seq->num_computed when scheduled
  int32_t num_tokens = 0;  // tokens [start_pos, start_pos + num_tokens) are fed
  bool sample = false;     // the chunk reaches the last token: sample the next one
};

struct SchedulerOutput {
  std::vector<ScheduledSeq> seqs;
  std::vector<RequestId> preempted;
  int32_t num_tokens = 0;
  bool empty() const { return seqs.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvCacheManager& kv_cache);

  void Add(std::unique_ptr<Sequence> seq);
  // Adds a sequence whose prompt KV is already in its blocks (prefilled elsewhere and moved
  // in); it joins the running batch at the next step to decode its last token.
  void AddPrefilled(std::unique_ptr<Sequence> seq);
  SchedulerOutput Schedule();
  // Marks the scheduled tokens as computed and registers newly full blocks for prefix
  // sharing. Call after the forward pass and before appending sampled tokens.
  void OnStepDone(const SchedulerOutput& output);
  // Removes a sequence (finished or aborted) and frees its blocks unless `keep_blocks`
  // (a prefill worker holds them until they have been sent); null if unknown.
  std::unique_ptr<Sequence> Remove(RequestId id, bool keep_blocks = false);

  Sequence* Find(RequestId id) const;
  bool HasWork() const { return !waiting_.empty() || !running_.empty(); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }

 private:
  void Preempt(Sequence* seq);

  SchedulerOptions options_;
  KvCacheManager& kv_cache_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Sequence>> sequences_;
  std::deque<Sequence*> waiting_;  // FIFO; preempted sequences go back to the front
  std::vector<Sequence*> running_;  // admission order
  int64_t num_preemptions_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_SCHEDULER_H_
