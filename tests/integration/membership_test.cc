// Workers join a running cluster and get traffic; a decode worker told to stop (SIGTERM)
// drains: it finishes what it holds, takes nothing new, and exits 0.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"
#include "tests/integration/reference_model.h"

namespace tandem::integration {
namespace {

using tandem::v1::GenerateRequest;

bool AnyIs(const std::set<std::string>& names, const Worker& w) {
  for (const std::string& n : names) {
    if (w.Is(n)) return true;
  }
  return false;
}

TEST(MembershipTest, WorkersStartedLaterGetTraffic) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  constexpr int kPerRound = 6;
  constexpr int kRounds = 3;
  std::vector<GenerateRequest> requests;
  std::vector<ReferenceOutput> references;
  for (int i = 0; i < kPerRound * kRounds; ++i) {
    const std::string text = absl::StrCat("Count from ", i, " to ", i + 5, ":");
    std::vector<int32_t> ids = ref->TokenizePrompt(text);
    ASSERT_OK_AND_ASSIGN(ReferenceOutput out, ref->Greedy(ids, 16));
    requests.push_back(GreedyTokens(ids, 16));
    references.push_back(out);
  }

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());
  {
    GenerateResult warm = cluster.Generate(requests[0]);
    ASSERT_TRUE(warm.ok()) << warm.Describe();
    EXPECT_EQ(warm.token_ids, references[0].tokens);
  }
  ASSERT_OK_AND_ASSIGN(Worker * late_decode, cluster.AddDecode());
  ASSERT_OK_AND_ASSIGN(Worker * late_prefill, cluster.AddPrefill());
  ASSERT_OK(cluster.WaitForWorkers(2, 2));

  // Rounds of concurrent requests until both late workers have served some (placement may
  // follow load reports, which lag by a heartbeat).
  std::set<std::string> prefill_seen, decode_seen;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<GenerateResult> results(kPerRound);
    std::vector<std::thread> threads;
    for (int i = 0; i < kPerRound; ++i) {
      threads.emplace_back(
          [&, i] { results[i] = cluster.Generate(requests[round * kPerRound + i]); });
    }
    for (std::thread& t : threads) t.join();
    for (int i = 0; i < kPerRound; ++i) {
      const GenerateResult& r = results[i];
      ASSERT_TRUE(r.ok()) << r.Describe();
      ASSERT_TRUE(r.final.has_value()) << r.Describe();
      EXPECT_EQ(r.token_ids, references[round * kPerRound + i].tokens) << r.Describe();
      prefill_seen.insert(r.final->prefill_worker());
      decode_seen.insert(r.final->decode_worker());
    }
    if (AnyIs(prefill_seen, *late_prefill) && AnyIs(decode_seen, *late_decode)) break;
  }
  const std::string seen = absl::StrCat("prefill seen {", absl::StrJoin(prefill_seen, ", "),
                                        "}, decode seen {", absl::StrJoin(decode_seen, ", "), "}");
  EXPECT_TRUE(AnyIs(prefill_seen, *late_prefill))
      << "late prefill worker " << late_prefill->address << " got nothing; " << seen;
  EXPECT_TRUE(AnyIs(decode_seen, *late_decode))
      << "late decode worker " << late_decode->address << " got nothing; " << seen;
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(MembershipTest, SigtermedDecodeWorkerDrains) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  constexpr int kLongTokens = 200;
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> long_ids,
                       ref->TokenizeUserChat("Tell me a long story about a dragon and a knight."));
  ASSERT_OK_AND_ASSIGN(ReferenceOutput long_ref, ref->Greedy(long_ids, kLongTokens, true));
  std::vector<std::vector<int32_t>> short_ids;
  std::vector<ReferenceOutput> short_refs;
  for (int i = 0; i < 3; ++i) {
    short_ids.push_back(ref->TokenizePrompt(absl::StrCat("Short request number ", i, ":")));
    ASSERT_OK_AND_ASSIGN(ReferenceOutput out, ref->Greedy(short_ids.back(), 16));
    short_refs.push_back(out);
  }

  Cluster cluster(WithWorkers(1, 2));
  ASSERT_OK(cluster.Start());
  const std::vector<Worker*> decoders = cluster.decode_workers();

  std::atomic<int> long_tokens{0};
  GenerateResult long_result;
  GenerateOptions long_options;
  long_options.on_response = [&](const GenerateResult& so_far) {
    long_tokens.store(static_cast<int>(so_far.token_ids.size()));
  };
  std::thread long_thread([&] {
    long_result = cluster.Generate(GreedyTokens(long_ids, kLongTokens, true), long_options);
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{long_thread};

  ASSERT_TRUE(PollUntil(absl::Seconds(60), [&] { return long_tokens.load() >= 1; }))
      << "the long request produced no token";
  // The decode worker running it, by its own Load.
  Worker* busy = nullptr;
  Worker* other = nullptr;
  ASSERT_TRUE(PollUntil(absl::Seconds(5), [&] {
    for (Worker* w : decoders) {
      auto load = cluster.Load(*w);
      if (load.ok() && load->running_sequences() > 0) {
        busy = w;
        other = w == decoders[0] ? decoders[1] : decoders[0];
        return true;
      }
    }
    return false;
  })) << "no decode worker reports a running sequence";
  const int tokens_at_sigterm = long_tokens.load();
  busy->process->Signal(SIGTERM);
  std::fprintf(stderr, "SIGTERM to %s after %d of %d tokens\n", busy->address.c_str(),
               tokens_at_sigterm, kLongTokens);

  // The router shows it draining (or already gone) and counts one decode worker.
  tandem::v1::HealthResponse health;
  EXPECT_TRUE(PollUntil(absl::Seconds(5),
                        [&] {
                          auto h = cluster.Health();
                          if (!h.ok()) return false;
                          health = *h;
                          auto st = cluster.StatusOf(*busy);
                          return h->decode_workers() == 1 && (!st.has_value() || st->draining());
                        }))
      << "Health after SIGTERM: " << health.ShortDebugString();

  // New requests go to the other decode worker while the long one is still running.
  for (size_t i = 0; i < short_ids.size(); ++i) {
    GenerateResult r = cluster.Generate(GreedyTokens(short_ids[i], 16));
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value()) << r.Describe();
    EXPECT_TRUE(other->Is(r.final->decode_worker()))
        << "placed on " << r.final->decode_worker() << ", draining worker is " << busy->address;
    EXPECT_EQ(r.token_ids, short_refs[i].tokens);
  }
  const int tokens_after_shorts = long_tokens.load();

  long_thread.join();
  EXPECT_LT(tokens_at_sigterm, kLongTokens) << "the long request ended before the SIGTERM";
  ASSERT_TRUE(long_result.ok()) << long_result.Describe();
  ASSERT_TRUE(long_result.final.has_value()) << long_result.Describe();
  EXPECT_EQ(long_result.token_ids, long_ref.tokens);
  EXPECT_EQ(long_result.final->finish_reason(), tandem::v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(busy->Is(long_result.final->decode_worker()))
      << "the long request should finish on the draining worker: " << long_result.Describe();
  std::fprintf(stderr, "the long request had %d tokens when the short ones were done\n",
               tokens_after_shorts);

  // Having drained, it exits 0, and the router forgets it.
  absl::StatusOr<int> exit_status = busy->process->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << "wait status " << *exit_status;
  EXPECT_TRUE(PollUntil(absl::Seconds(5), [&] { return !cluster.StatusOf(*busy).has_value(); }))
      << "the exited worker is still listed";
  GenerateResult after = cluster.Generate(GreedyTokens(short_ids[0], 16));
  ASSERT_TRUE(after.ok()) << after.Describe();
  EXPECT_EQ(after.token_ids, short_refs[0].tokens);
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(MembershipTest, WorkersRegisterAgainWithARestartedRouter) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  const std::vector<int32_t> ids = ref->TokenizePrompt("The quick brown fox");
  ASSERT_OK_AND_ASSIGN(ReferenceOutput expected, ref->Greedy(ids, 16));

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());
  GenerateResult before = cluster.Generate(GreedyTokens(ids, 16));
  ASSERT_TRUE(before.ok()) << before.Describe();

  ASSERT_OK(cluster.RestartRouter());
  // Their heartbeat streams broke: both workers register with the new router by themselves.
  ASSERT_OK(cluster.WaitForWorkers(1, 1, absl::Seconds(30)));
  GenerateResult after = cluster.Generate(GreedyTokens(ids, 16));
  ASSERT_TRUE(after.ok()) << after.Describe();
  EXPECT_EQ(after.token_ids, expected.tokens);
  EXPECT_EQ(after.final->prefill_location(), tandem::v1::PREFILL_LOCATION_REMOTE);
  EXPECT_TRUE(cluster.decode_workers()[0]->Is(after.final->decode_worker())) << after.Describe();
}

TEST(MembershipTest, SigtermedPrefillWorkerFinishesItsPrefill) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  std::mt19937 rng(11);
  std::vector<int32_t> long_ids(600);
  for (int32_t& id : long_ids) id = 1000 + static_cast<int32_t>(rng() % 20000);
  ASSERT_OK_AND_ASSIGN(ReferenceOutput long_ref, ref->Greedy(long_ids, 8));
  const std::vector<int32_t> short_ids = ref->TokenizePrompt("After the drain:");
  ASSERT_OK_AND_ASSIGN(ReferenceOutput short_ref, ref->Greedy(short_ids, 8));

  Cluster cluster(WithWorkers(2, 1));
  ASSERT_OK(cluster.Start());
  const std::vector<Worker*> prefillers = cluster.prefill_workers();

  GenerateResult long_result;
  std::thread long_thread([&] { long_result = cluster.Generate(GreedyTokens(long_ids, 8)); });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{long_thread};

  Worker* busy = nullptr;
  Worker* other = nullptr;
  ASSERT_TRUE(PollUntil(absl::Seconds(30), [&] {
    for (Worker* w : prefillers) {
      auto load = cluster.Load(*w, absl::Seconds(1));
      if (load.ok() && (load->queued_prompt_tokens() > 0 || load->running_sequences() > 0)) {
        busy = w;
        other = w == prefillers[0] ? prefillers[1] : prefillers[0];
        return true;
      }
    }
    return false;
  })) << "no prefill worker reported the long prompt";
  busy->process->Signal(SIGTERM);

  tandem::v1::HealthResponse health;
  EXPECT_TRUE(PollUntil(absl::Seconds(5),
                        [&] {
                          auto h = cluster.Health();
                          if (!h.ok()) return false;
                          health = *h;
                          auto st = cluster.StatusOf(*busy);
                          return h->prefill_workers() == 1 && (!st.has_value() || st->draining());
                        }))
      << "Health after SIGTERM: " << health.ShortDebugString();

  long_thread.join();
  ASSERT_TRUE(long_result.ok()) << long_result.Describe();
  ASSERT_TRUE(long_result.final.has_value()) << long_result.Describe();
  EXPECT_EQ(long_result.token_ids, long_ref.tokens);
  EXPECT_TRUE(busy->Is(long_result.final->prefill_worker()))
      << "the draining worker should finish its prefill: " << long_result.Describe();
  EXPECT_EQ(long_result.final->prefill_retries(), 0) << long_result.Describe();

  absl::StatusOr<int> exit_status = busy->process->Wait(absl::Seconds(30));
  ASSERT_TRUE(exit_status.ok()) << exit_status.status();
  EXPECT_TRUE(WIFEXITED(*exit_status) && WEXITSTATUS(*exit_status) == 0)
      << "wait status " << *exit_status;
  GenerateResult after = cluster.Generate(GreedyTokens(short_ids, 8));
  ASSERT_TRUE(after.ok()) << after.Describe();
  EXPECT_EQ(after.token_ids, short_ref.tokens);
  EXPECT_TRUE(other->Is(after.final->prefill_worker())) << after.Describe();
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

}  // namespace
}  // namespace tandem::integration
