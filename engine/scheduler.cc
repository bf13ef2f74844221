#include "engine/scheduler.h"

#include <algorithm>
#include <utility>

#include "common/logging.h"

namespace tandem {

Scheduler::Scheduler(const SchedulerOptions& options, KvCacheManager& kv_cache)
    : options_(options), kv_cache_(kv_cache) {
  CHECK_GT(options_.max_batch_tokens, 0);
  CHECK_GT(options_.max_num_seqs, 0);
}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  CHECK(seq != nullptr);
  CHECK(!seq->tokens.empty());
  Sequence* raw = seq.get();
  const bool inserted = sequences_.emplace(raw->id, std::move(seq)).second;
  CHECK(inserted) << "duplicate request id " << raw->id;
  waiting_.push_back(raw);
}

void Scheduler::AddPrefilled(std::unique_ptr<Sequence> seq) {
  CHECK(seq != nullptr);
  CHECK_EQ(seq->num_computed + 1, static_cast<int32_t>(seq->tokens.size()))
      << "request " << seq->id << " must have every token but the last computed";
  Sequence* raw = seq.get();
  raw->prefix_looked_up = true;
  const bool inserted = sequences_.emplace(raw->id, std::move(seq)).second;
  CHECK(inserted) << "duplicate request id " << raw->id;
  running_.push_back(raw);
}

void Scheduler::Preempt(Sequence* seq) {
  kv_cache_.Free(seq->id);
  seq->num_computed = 0;
  seq->prefix_looked_up = false;
  ++seq->num_preemptions;
  ++num_preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  waiting_.push_front(seq);
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  int32_t budget = options_.max_batch_tokens;

  // Running sequences first, oldest first: a decode token each, or their next prompt chunk.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int32_t pending = static_cast<int32_t>(seq->tokens.size()) - seq->num_computed;
    CHECK_GT(pending, 0) << "request " << seq->id << " has nothing to compute";
    const int32_t n = std::min(pending, budget);
    bool preempted_self = false;
    while (!kv_cache_.Allocate(seq->id, seq->num_computed + n)) {
      // Out of blocks: preempt the newest running sequence, which may be this one.
      Sequence* victim = running_.back();
      out.preempted.push_back(victim->id);
      Preempt(victim);
      if (victim == seq) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;
    out.seqs.push_back({seq, seq->num_computed, n, seq->num_computed + n ==
                                                       static_cast<int32_t>(seq->tokens.size())});
    budget -= n;
    out.num_tokens += n;
    ++i;
  }

  // Admit waiting sequences while nothing was preempted this step (as vLLM does: a full
  // cache should drain before new work joins).
  while (out.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    if (!seq->prefix_looked_up) {
      const int64_t cached = kv_cache_.GetComputedPrefix(seq->id, seq->tokens);
      seq->num_computed = static_cast<int32_t>(cached);
      seq->prefix_looked_up = true;
      if (seq->num_preemptions == 0) {
        seq->num_cached_prompt_tokens = static_cast<int32_t>(cached);
      }
    }
    const int32_t pending = static_cast<int32_t>(seq->tokens.size()) - seq->num_computed;
    const int32_t n = std::min(pending, budget);
    if (!kv_cache_.Allocate(seq->id, seq->num_computed + n)) {
      // Leave it waiting; release the prefix blocks it holds so they stay evictable.
      kv_cache_.Free(seq->id);
      seq->num_computed = 0;
      seq->prefix_looked_up = false;
      break;
    }
    waiting_.pop_front();
    running_.push_back(seq);
    out.seqs.push_back({seq, seq->num_computed, n,
                        seq->num_computed + n == static_cast<int32_t>(seq->tokens.size())});
    budget -= n;
    out.num_tokens += n;
  }
  return out;
}

void Scheduler::OnStepDone(const SchedulerOutput& output) {
  for (const ScheduledSeq& s : output.seqs) {
    Sequence* seq = s.seq;
    CHECK_EQ(seq->num_computed, s.start_pos) << "request " << seq->id;
    seq->num_computed += s.num_tokens;
    kv_cache_.CommitTokens(seq->id, seq->tokens, seq->num_computed);
  }
}

std::unique_ptr<Sequence> Scheduler::Remove(RequestId id, bool keep_blocks) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return nullptr;
  std::unique_ptr<Sequence> seq = std::move(it->second);
  sequences_.erase(it);
  if (auto r = std::find(running_.begin(), running_.end(), seq.get()); r != running_.end()) {
    running_.erase(r);
  }
  if (auto w = std::find(waiting_.begin(), waiting_.end(), seq.get()); w != waiting_.end()) {
    waiting_.erase(w);
  }
  if (!keep_blocks) kv_cache_.Free(id);
  return seq;
}

Sequence* Scheduler::Find(RequestId id) const {
  auto it = sequences_.find(id);
  return it == sequences_.end() ? nullptr : it->second.get();
}

}  // namespace tandem
