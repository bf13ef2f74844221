#include "engine/scheduler.h"

#include <memory>
#include <numeric>

#include "gtest/gtest.h"

namespace tandem {
namespace {

std::unique_ptr<Sequence> MakeSeq(RequestId id, int n_prompt) {
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  seq->tokens.resize(n_prompt);
  std::iota(seq->tokens.begin(), seq->tokens.end(), static_cast<int32_t>(id * 100));
  seq->num_prompt_tokens = n_prompt;
  return seq;
}

KvCacheOptions KvOptions(int64_t blocks, int block_size) {
  KvCacheOptions o;
  o.num_blocks = blocks;
  o.block_size = block_size;
  o.enable_prefix_caching = false;
  return o;
}

// Feeds a sampled token to every sequence that reached its last token.
void FinishStep(Scheduler& sched, const SchedulerOutput& out, int32_t token = 7) {
  sched.OnStepDone(out);
  for (const ScheduledSeq& s : out.seqs) {
    if (s.sample) s.seq->tokens.push_back(token);
  }
}

TEST(SchedulerTest, ChunksPromptsUnderTheTokenBudget) {
  KvCacheManager kv(KvOptions(64, 4));
  Scheduler sched({.max_batch_tokens = 10, .max_num_seqs = 8}, kv);
  sched.Add(MakeSeq(1, 7));
  sched.Add(MakeSeq(2, 6));

  SchedulerOutput out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(out.num_tokens, 10);
  EXPECT_EQ(out.seqs[0].seq->id, 1);
  EXPECT_EQ(out.seqs[0].num_tokens, 7);
  EXPECT_TRUE(out.seqs[0].sample);
  EXPECT_EQ(out.seqs[1].seq->id, 2);
  EXPECT_EQ(out.seqs[1].start_pos, 0);
  EXPECT_EQ(out.seqs[1].num_tokens, 3);  // the first chunk of its prompt
  EXPECT_FALSE(out.seqs[1].sample);
  FinishStep(sched, out);

  out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(out.seqs[0].num_tokens, 1);  // decode
  EXPECT_EQ(out.seqs[0].start_pos, 7);
  EXPECT_TRUE(out.seqs[0].sample);
  EXPECT_EQ(out.seqs[1].start_pos, 3);
  EXPECT_EQ(out.seqs[1].num_tokens, 3);  // the rest of the prompt
  EXPECT_TRUE(out.seqs[1].sample);
  FinishStep(sched, out);
  EXPECT_EQ(kv.BlockTable(1).size(), 2u);  // 8 tokens in blocks of 4
  EXPECT_EQ(kv.BlockTable(2).size(), 2u);
}

TEST(SchedulerTest, RespectsTheSequenceLimit) {
  KvCacheManager kv(KvOptions(64, 4));
  Scheduler sched({.max_batch_tokens = 100, .max_num_seqs = 2}, kv);
  for (int i = 1; i <= 3; ++i) sched.Add(MakeSeq(i, 3));
  SchedulerOutput out = sched.Schedule();
  EXPECT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(sched.num_running(), 2);
  EXPECT_EQ(sched.num_waiting(), 1);
  FinishStep(sched, out);
  sched.Remove(1);  // a finished sequence makes room
  out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(out.seqs[1].seq->id, 3);
}

TEST(SchedulerTest, WaitsWhenTheCacheIsFull) {
  KvCacheManager kv(KvOptions(3, 4));
  Scheduler sched({.max_batch_tokens = 100, .max_num_seqs = 8}, kv);
  sched.Add(MakeSeq(1, 8));  // 2 blocks
  sched.Add(MakeSeq(2, 8));  // 2 more: does not fit
  SchedulerOutput out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(sched.num_waiting(), 1);
  EXPECT_EQ(kv.num_free_blocks(), 1);
}

TEST(SchedulerTest, PreemptsTheNewestSequenceAndRecomputesIt) {
  KvCacheManager kv(KvOptions(4, 4));
  Scheduler sched({.max_batch_tokens = 100, .max_num_seqs = 8}, kv);
  sched.Add(MakeSeq(1, 8));  // exactly 2 blocks
  sched.Add(MakeSeq(2, 8));  // exactly 2 blocks
  SchedulerOutput out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 2u);
  EXPECT_EQ(kv.num_free_blocks(), 0);
  FinishStep(sched, out);

  // Both now need a third block for their 9th token: the newest one is preempted.
  out = sched.Schedule();
  ASSERT_EQ(out.preempted.size(), 1u);
  EXPECT_EQ(out.preempted[0], 2);
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].seq->id, 1);
  Sequence* preempted = sched.Find(2);
  ASSERT_NE(preempted, nullptr);
  EXPECT_EQ(preempted->num_computed, 0);
  EXPECT_EQ(preempted->tokens.size(), 9u);  // its sampled token is kept
  FinishStep(sched, out);

  sched.Remove(1);
  out = sched.Schedule();
  ASSERT_EQ(out.seqs.size(), 1u);
  EXPECT_EQ(out.seqs[0].seq->id, 2);
  EXPECT_EQ(out.seqs[0].start_pos, 0);
  EXPECT_EQ(out.seqs[0].num_tokens, 9);  // prompt and sampled token recomputed together
  EXPECT_TRUE(out.seqs[0].sample);
}

TEST(SchedulerTest, RemoveFreesBlocks) {
  KvCacheManager kv(KvOptions(8, 4));
  Scheduler sched({.max_batch_tokens = 100, .max_num_seqs = 8}, kv);
  sched.Add(MakeSeq(1, 10));
  SchedulerOutput out = sched.Schedule();
  EXPECT_EQ(kv.num_free_blocks(), 5);
  sched.Remove(1);
  EXPECT_EQ(kv.num_free_blocks(), 8);
  EXPECT_FALSE(sched.HasWork());
}

}  // namespace
}  // namespace tandem
