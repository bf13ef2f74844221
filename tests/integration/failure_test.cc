// Workers dying under load (SIGKILL, no goodbye): a lost prefill is retried on another
// prefill worker; a lost decode worker's requests resume elsewhere or end promptly with
// UNAVAILABLE; the router keeps serving.
#include <signal.h>

#include <atomic>
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

// ~`words` words of varied text that starts with `lead` (distinct leads: no shared prefix).
std::string LongText(const std::string& lead, int words) {
  static const char* kWords[] = {"river",  "stone",  "lantern", "orchard", "signal", "copper",
                                 "meadow", "harbor", "violet",  "thunder", "candle", "pepper",
                                 "falcon", "marble", "glacier", "saddle",  "timber", "velvet"};
  std::string s = lead;
  uint32_t x = static_cast<uint32_t>(lead.size()) * 2654435761u + 12345u;
  for (int i = 0; i < words; ++i) {
    x = x * 1664525u + 1013904223u;
    absl::StrAppend(&s, " ", kWords[(x >> 16) % (sizeof(kWords) / sizeof(kWords[0]))]);
    if (i % 12 == 11) s += ".";
  }
  return s;
}

struct Flight {
  GenerateRequest request;
  ReferenceOutput reference;
  GenerateResult result;
  std::atomic<int> tokens{0};
  absl::Time end;
};

TEST(FailureTest, KilledPrefillWorkerIsRetried) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  constexpr int kRequests = 6;
  std::vector<Flight> flights(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    std::vector<int32_t> ids = ref->TokenizePrompt(
        LongText(absl::StrCat("Document ", i, " of the archive, section ", 7 * i + 3, ":"), 200));
    ASSERT_GT(ids.size(), 200u);
    ASSERT_OK_AND_ASSIGN(flights[i].reference, ref->Greedy(ids, 16));
    flights[i].request = GreedyTokens(ids, 16);
    flights[i].request.set_request_id(absl::StrCat("long-prompt-", i));
  }

  Cluster cluster(WithWorkers(2, 1));
  ASSERT_OK(cluster.Start());
  Worker* victim = cluster.prefill_workers()[0];
  Worker* survivor = cluster.prefill_workers()[1];

  std::vector<std::thread> threads;
  for (Flight& f : flights) {
    threads.emplace_back([&cluster, &f] {
      f.result = cluster.Generate(f.request);
      f.end = absl::Now();
    });
  }
  struct Joiner {
    std::vector<std::thread>& threads;
    ~Joiner() {
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{threads};

  // Kill the victim while it is computing a prefill.
  tandem::v1::WorkerLoad victim_load;
  const bool busy = PollUntil(absl::Seconds(30), [&] {
    auto load = cluster.Load(*victim, absl::Seconds(1));
    if (!load.ok()) return false;
    victim_load = *load;
    return load->queued_prompt_tokens() > 0 || load->running_sequences() > 0 ||
           load->waiting_sequences() > 0;
  });
  victim->process->Kill();
  EXPECT_TRUE(busy) << "the victim never reported work; last load "
                    << victim_load.ShortDebugString();

  for (std::thread& t : threads) t.join();
  int retried = 0;
  for (const Flight& f : flights) {
    SCOPED_TRACE(f.request.request_id());
    ASSERT_TRUE(f.result.ok()) << f.result.Describe();
    ASSERT_TRUE(f.result.final.has_value()) << f.result.Describe();
    EXPECT_EQ(f.result.token_ids, f.reference.tokens) << f.result.Describe();
    EXPECT_EQ(f.result.final->prefill_location(), tandem::v1::PREFILL_LOCATION_REMOTE);
    if (f.result.final->prefill_retries() >= 1) {
      ++retried;
      EXPECT_TRUE(survivor->Is(f.result.final->prefill_worker())) << f.result.Describe();
    }
    if (victim->Is(f.result.final->prefill_worker())) {
      // Only a prefill the victim finished before it died.
      EXPECT_EQ(f.result.final->prefill_retries(), 0) << f.result.Describe();
    }
  }
  std::fprintf(stderr, "prefill kill: victim load at the kill {%s}; %d request(s) retried\n",
               victim_load.ShortDebugString().c_str(), retried);
  if (busy) {
    EXPECT_GE(retried, 1) << "the victim was busy when killed, yet no request was retried";
  }
  EXPECT_TRUE(PollUntil(absl::Seconds(5), [&] {
    auto h = cluster.Health();
    return h.ok() && h->prefill_workers() == 1;
  })) << "the router still counts the killed prefill worker";

  GenerateResult after = cluster.Generate(flights[0].request);
  ASSERT_TRUE(after.ok()) << after.Describe();
  ASSERT_TRUE(after.final.has_value()) << after.Describe();
  EXPECT_EQ(after.token_ids, flights[0].reference.tokens);
  EXPECT_TRUE(survivor->Is(after.final->prefill_worker())) << after.Describe();
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(FailureTest, KilledDecodeWorkerResumesOrFailsPromptly) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  constexpr int kRequests = 4;
  constexpr int kTokens = 64;
  std::vector<Flight> flights(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_OK_AND_ASSIGN(
        std::vector<int32_t> ids,
        ref->TokenizeUserChat(absl::StrCat("Describe city number ", i, " in a long paragraph.")));
    ASSERT_OK_AND_ASSIGN(flights[i].reference, ref->Greedy(ids, kTokens, true));
    flights[i].request = GreedyTokens(ids, kTokens, true);
    flights[i].request.set_request_id(absl::StrCat("decode-victim-", i));
  }

  Cluster cluster(WithWorkers(1, 2));
  ASSERT_OK(cluster.Start());

  std::vector<std::thread> threads;
  for (Flight& f : flights) {
    threads.emplace_back([&cluster, &f] {
      GenerateOptions options;
      options.on_response = [&f](const GenerateResult& so_far) {
        f.tokens.store(static_cast<int>(so_far.token_ids.size()));
      };
      f.result = cluster.Generate(f.request, options);
      f.end = absl::Now();
    });
  }
  struct Joiner {
    std::vector<std::thread>& threads;
    ~Joiner() {
      for (std::thread& t : threads) {
        if (t.joinable()) t.join();
      }
    }
  } joiner{threads};

  // Once every request is streaming, kill a decode worker that runs some of them.
  EXPECT_TRUE(PollUntil(absl::Seconds(60), [&] {
    for (const Flight& f : flights) {
      if (f.tokens.load() < 1) return false;
    }
    return true;
  })) << "not every request started streaming";
  Worker* victim = nullptr;
  int victim_running = 0;
  ASSERT_TRUE(PollUntil(absl::Seconds(5), [&] {
    for (Worker* w : cluster.decode_workers()) {
      auto load = cluster.Load(*w, absl::Seconds(1));
      if (load.ok() && load->running_sequences() > 0) {
        victim = w;
        victim_running = load->running_sequences();
        return true;
      }
    }
    return false;
  })) << "no decode worker reports running sequences";
  std::vector<int> tokens_at_kill;
  for (const Flight& f : flights) tokens_at_kill.push_back(f.tokens.load());
  victim->process->Kill();
  const absl::Time killed_at = absl::Now();

  for (std::thread& t : threads) t.join();
  int on_survivor = 0, unavailable = 0;
  for (size_t i = 0; i < flights.size(); ++i) {
    const Flight& f = flights[i];
    SCOPED_TRACE(
        absl::StrCat(f.request.request_id(), " (", tokens_at_kill[i], " tokens at the kill)"));
    // Whatever arrived is the reference's beginning.
    ASSERT_LE(f.result.token_ids.size(), f.reference.tokens.size()) << f.result.Describe();
    EXPECT_TRUE(std::equal(f.result.token_ids.begin(), f.result.token_ids.end(),
                           f.reference.tokens.begin()))
        << "got [" << absl::StrJoin(f.result.token_ids, ",") << "] reference ["
        << absl::StrJoin(f.reference.tokens, ",") << "]";
    if (f.result.ok()) {
      ASSERT_TRUE(f.result.final.has_value()) << f.result.Describe();
      EXPECT_EQ(f.result.token_ids, f.reference.tokens) << f.result.Describe();
      EXPECT_EQ(f.result.final->completion_tokens(), kTokens) << f.result.Describe();
      // Either it ran on the survivor all along or it was resumed there.
      if (!victim->Is(f.result.final->decode_worker())) ++on_survivor;
      EXPECT_FALSE(victim->Is(f.result.final->decode_worker()) && f.end > killed_at &&
                   tokens_at_kill[i] < kTokens)
          << "finished on the killed worker after the kill: " << f.result.Describe();
    } else {
      ++unavailable;
      EXPECT_EQ(f.result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << f.result.Describe();
      EXPECT_LT(f.end - killed_at, absl::Seconds(30)) << f.result.Describe();
    }
  }
  std::fprintf(stderr,
               "decode kill: %d running on the victim, tokens at the kill {%s}; %d completed on "
               "the survivor, %d UNAVAILABLE\n",
               victim_running, absl::StrJoin(tokens_at_kill, ",").c_str(), on_survivor,
               unavailable);

  EXPECT_TRUE(PollUntil(absl::Seconds(5), [&] {
    auto h = cluster.Health();
    return h.ok() && h->decode_workers() == 1;
  })) << "the router still counts the killed decode worker";
  GenerateResult after = cluster.Generate(flights[0].request);
  ASSERT_TRUE(after.ok()) << after.Describe();
  ASSERT_TRUE(after.final.has_value()) << after.Describe();
  EXPECT_EQ(after.token_ids, flights[0].reference.tokens);
  EXPECT_FALSE(victim->Is(after.final->decode_worker())) << after.Describe();
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(FailureTest, KilledOnlyDecodeWorkerEndsTheCallUnavailable) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  const std::vector<int32_t> ids = ref->TokenizePrompt("A long list of animals:");
  ASSERT_OK_AND_ASSIGN(ReferenceOutput expected, ref->Greedy(ids, 16));

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());
  Worker* victim = cluster.decode_workers()[0];

  std::atomic<int> tokens{0};
  GenerateResult result;
  absl::Time end;
  std::thread thread([&] {
    GenerateOptions options;
    options.on_response = [&](const GenerateResult& so_far) {
      tokens.store(static_cast<int>(so_far.token_ids.size()));
    };
    result = cluster.Generate(GreedyTokens(ids, 400, true), options);
    end = absl::Now();
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{thread};
  EXPECT_TRUE(PollUntil(absl::Seconds(60), [&] { return tokens.load() >= 2; }));
  victim->process->Kill();
  const absl::Time killed_at = absl::Now();
  thread.join();

  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result.Describe();
  EXPECT_LT(end - killed_at, absl::Seconds(30)) << result.Describe();
  EXPECT_TRUE(result.status.error_message().find(victim->address) != std::string::npos ||
              result.status.error_message().find(victim->id) != std::string::npos)
      << "the message does not name the lost worker (" << victim->id << " at " << victim->address
      << "): " << result.status.error_message();
  std::fprintf(stderr, "only decode worker killed: the call ended %s after the kill: %s\n",
               absl::FormatDuration(end - killed_at).c_str(), result.Describe().c_str());

  // A new decode worker, and the router serves again.
  ASSERT_OK(cluster.AddDecode().status());
  ASSERT_OK(cluster.WaitForWorkers(1, 1));
  GenerateResult after = cluster.Generate(GreedyTokens(ids, 16));
  ASSERT_TRUE(after.ok()) << after.Describe();
  EXPECT_EQ(after.token_ids, expected.tokens);
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

// Decode reservations are leases that the prefill worker holding the prompt renews: with
// a 50 ms lease a ~900-token prefill (far longer on one CPU thread) still completes. A
// prefill worker that stops (SIGSTOP: alive, silent) renews nothing, so its reservation
// expires; that is not a failed decode worker: the router places the request again, a
// bounded number of times, then ends it with UNAVAILABLE. Every try's blocks come back on
// both workers once the prefill worker runs again.
TEST(FailureTest, LeasesAreRenewedWhileAPrefillWorkerHoldsThePrompt) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  const std::vector<int32_t> ids =
      ref->TokenizePrompt(LongText("A very long ledger of the harbor's cargo:", 600));
  ASSERT_GT(ids.size(), 600u);
  ASSERT_OK_AND_ASSIGN(ReferenceOutput expected, ref->Greedy(ids, 8));

  ClusterOptions options = WithWorkers(1, 1);
  options.router_flags = {"--reservation-deadline", "0.05"};
  Cluster cluster(options);
  ASSERT_OK(cluster.Start());

  GenerateResult renewed = cluster.Generate(GreedyTokens(ids, 8));
  ASSERT_TRUE(renewed.ok()) << renewed.Describe();
  EXPECT_EQ(renewed.token_ids, expected.tokens);
  std::fprintf(stderr, "renewed leases: %s\n", renewed.Describe().c_str());

  Worker* prefill = cluster.prefill_workers()[0];
  prefill->process->Signal(SIGSTOP);
  const absl::Time start = absl::Now();
  GenerateResult result = cluster.Generate(GreedyTokens(ids, 8));
  const absl::Duration took = absl::Now() - start;
  prefill->process->Signal(SIGCONT);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE) << result.Describe();
  // One placement and three more, each ended by the decode worker's expiry.
  EXPECT_NE(result.status.error_message().find("4 times"), std::string::npos)
      << result.Describe();
  EXPECT_NE(result.status.error_message().find("expired"), std::string::npos)
      << result.Describe();
  EXPECT_TRUE(result.token_ids.empty()) << result.Describe();
  EXPECT_LT(took, absl::Seconds(60)) << result.Describe();
  std::fprintf(stderr, "stopped prefill worker: the call ended after %s: %s\n",
               absl::FormatDuration(took).c_str(), result.Describe().c_str());

  // Nothing leaked: the decode worker freed every expired reservation, the prefill worker
  // (running again) every prefill the router abandoned.
  EXPECT_OK(cluster.WaitForIdle(absl::Seconds(30)));
}

}  // namespace
}  // namespace tandem::integration
