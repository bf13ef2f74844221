#include "router/placement.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::router {
namespace {

using ::testing::ElementsAre;

WorkerView Decode(std::string id, int64_t free_blocks, int32_t inflight = 0) {
  WorkerView w;
  w.id = std::move(id);
  w.address = "127.0.0.1:1";
  w.role = v1::WORKER_ROLE_DECODE;
  w.load.set_free_kv_blocks(free_blocks);
  w.load.set_total_kv_blocks(1000);
  w.inflight_requests = inflight;
  return w;
}

WorkerView Prefill(std::string id, int64_t inflight_tokens = 0) {
  WorkerView w;
  w.id = std::move(id);
  w.address = "127.0.0.1:2";
  w.role = v1::WORKER_ROLE_PREFILL;
  w.inflight_prompt_tokens = inflight_tokens;
  return w;
}

std::vector<std::string> Ids(const std::vector<WorkerView>& workers) {
  std::vector<std::string> ids;
  for (const WorkerView& w : workers) ids.push_back(w.id);
  return ids;
}

std::vector<int32_t> Tokens(int n, int32_t start = 100) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = start + i;
  return t;
}

TEST(PlacementTest, DecodeRanksByFreeBlocksThenInFlight) {
  Placement placement;
  std::vector<WorkerView> workers = {Decode("decode-1", 100, 0), Decode("decode-2", 300, 5),
                                     Decode("decode-3", 300, 2), Prefill("prefill-4")};
  EXPECT_THAT(Ids(placement.RankDecode(workers, {})),
              ElementsAre("decode-3", "decode-2", "decode-1"));
}

TEST(PlacementTest, DecodeCountsTheRoutersUnreportedReservations) {
  Placement placement;
  std::vector<WorkerView> workers = {Decode("decode-1", 300), Decode("decode-2", 250)};
  workers[0].unreported_blocks = 100;  // 200 effectively free
  EXPECT_THAT(Ids(placement.RankDecode(workers, {})), ElementsAre("decode-2", "decode-1"));
}

TEST(PlacementTest, DecodeSkipsDrainingAndExcluded) {
  Placement placement;
  std::vector<WorkerView> workers = {Decode("decode-1", 500), Decode("decode-2", 400),
                                     Decode("decode-3", 300)};
  workers[0].draining = true;
  EXPECT_THAT(Ids(placement.RankDecode(workers, {"decode-2"})), ElementsAre("decode-3"));
  workers[2].draining = true;
  EXPECT_TRUE(placement.RankDecode(workers, {"decode-2"}).empty());
}

TEST(PlacementTest, LeastLoadedPrefillTakesFewestInFlightTokens) {
  Placement placement({.prefill_policy = PrefillPolicy::kLeastLoaded});
  std::vector<WorkerView> workers = {Prefill("prefill-1", 5000), Prefill("prefill-2", 100),
                                     Prefill("prefill-3", 900), Decode("decode-4", 10)};
  auto p = placement.ChoosePrefill(workers, Tokens(64), {});
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->id, "prefill-2");
  p = placement.ChoosePrefill(workers, Tokens(64), {"prefill-2"});
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->id, "prefill-3");
}

TEST(PlacementTest, PrefillSkipsDrainingAndNoneLeft) {
  Placement placement;
  std::vector<WorkerView> workers = {Prefill("prefill-1"), Decode("decode-2", 10)};
  workers[0].draining = true;
  EXPECT_FALSE(placement.ChoosePrefill(workers, Tokens(32), {}).has_value());
  workers[0].draining = false;
  EXPECT_FALSE(placement.ChoosePrefill(workers, Tokens(32), {"prefill-1"}).has_value());
  EXPECT_TRUE(placement.ChoosePrefill(workers, Tokens(32), {}).has_value());
}

TEST(PlacementTest, AffinityPicksTheWorkerHoldingThePrefix) {
  Placement placement({.prefill_policy = PrefillPolicy::kAffinity});
  std::vector<WorkerView> workers = {Prefill("prefill-1", 0), Prefill("prefill-2", 0)};
  const std::vector<int32_t> shared = Tokens(64);  // 4 blocks of 16

  // Make prefill-2 the least loaded so the first prompt lands there.
  workers[0].inflight_prompt_tokens = 10;
  auto first = placement.ChoosePrefill(workers, shared, {});
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, "prefill-2");
  EXPECT_EQ(placement.MatchedBlocks("prefill-2", shared), 4);
  EXPECT_EQ(placement.MatchedBlocks("prefill-1", shared), 0);

  // Now prefill-1 is less loaded, but prefill-2 holds the prefix of the new prompt.
  workers[0].inflight_prompt_tokens = 0;
  workers[1].inflight_prompt_tokens = 1000;
  std::vector<int32_t> longer = shared;
  longer.insert(longer.end(), {7, 8, 9, 10, 11});
  auto second = placement.ChoosePrefill(workers, longer, {});
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, "prefill-2");

  // An unrelated prompt goes to the least loaded worker.
  auto other = placement.ChoosePrefill(workers, Tokens(64, 5000), {});
  ASSERT_TRUE(other.has_value());
  EXPECT_EQ(other->id, "prefill-1");
}

TEST(PlacementTest, AffinityPrefersTheLongerMatch) {
  Placement placement({.prefill_policy = PrefillPolicy::kAffinity});
  std::vector<WorkerView> workers = {Prefill("prefill-1", 0), Prefill("prefill-2", 5)};
  const std::vector<int32_t> a = Tokens(96);
  std::vector<int32_t> b(a.begin(), a.begin() + 32);  // shares 2 blocks with a
  b.insert(b.end(), 64, 3);
  ASSERT_EQ(placement.ChoosePrefill(workers, b, {})->id, "prefill-1");
  ASSERT_EQ(placement.ChoosePrefill(workers, a, {"prefill-1"})->id, "prefill-2");
  EXPECT_EQ(placement.MatchedBlocks("prefill-1", a), 2);
  EXPECT_EQ(placement.MatchedBlocks("prefill-2", a), 6);
  // prefill-2 matches all 6 blocks of a, prefill-1 only 2: prefill-2 wins though busier.
  EXPECT_EQ(placement.ChoosePrefill(workers, a, {})->id, "prefill-2");
}

TEST(PlacementTest, AffinityYieldsToLoad) {
  Placement placement(
      {.prefill_policy = PrefillPolicy::kAffinity, .affinity_max_extra_tokens = 2048});
  std::vector<WorkerView> workers = {Prefill("prefill-1", 0), Prefill("prefill-2", 0)};
  const std::vector<int32_t> prompt = Tokens(160);
  ASSERT_EQ(placement.ChoosePrefill(workers, prompt, {})->id, "prefill-1");

  workers[0].inflight_prompt_tokens = 2048;  // exactly the allowance: still the holder
  EXPECT_EQ(placement.ChoosePrefill(workers, prompt, {})->id, "prefill-1");
  workers[0].inflight_prompt_tokens = 2049;  // beyond it: the least loaded worker
  EXPECT_EQ(placement.ChoosePrefill(workers, prompt, {})->id, "prefill-2");
}

TEST(PlacementTest, AffinityForgetsWorkersThatLeft) {
  Placement placement({.prefill_policy = PrefillPolicy::kAffinity});
  const std::vector<int32_t> prompt = Tokens(32);
  std::vector<WorkerView> workers = {Prefill("prefill-1")};
  ASSERT_EQ(placement.ChoosePrefill(workers, prompt, {})->id, "prefill-1");
  EXPECT_EQ(placement.MatchedBlocks("prefill-1", prompt), 2);
  workers = {Prefill("prefill-2")};
  ASSERT_EQ(placement.ChoosePrefill(workers, prompt, {})->id, "prefill-2");
  EXPECT_EQ(placement.MatchedBlocks("prefill-1", prompt), 0);
}

TEST(PlacementTest, AffinityLruKeepsPrefixHeads) {
  Placement placement(
      {.prefill_policy = PrefillPolicy::kAffinity, .affinity_entries_per_worker = 4});
  std::vector<WorkerView> workers = {Prefill("prefill-1")};
  const std::vector<int32_t> prompt = Tokens(16 * 6);
  ASSERT_TRUE(placement.ChoosePrefill(workers, prompt, {}).has_value());
  // Six blocks, room for four: the first four stay.
  EXPECT_EQ(placement.MatchedBlocks("prefill-1", prompt), 4);
}

TEST(PlacementTest, RoundRobinCycles) {
  Placement placement({.prefill_policy = PrefillPolicy::kRoundRobin});
  std::vector<WorkerView> workers = {Prefill("prefill-3", 0), Prefill("prefill-1", 9999),
                                     Prefill("prefill-2", 0)};
  std::vector<std::string> picked;
  for (int i = 0; i < 6; ++i)
    picked.push_back(placement.ChoosePrefill(workers, Tokens(32), {})->id);
  EXPECT_THAT(picked, ElementsAre("prefill-1", "prefill-2", "prefill-3", "prefill-1", "prefill-2",
                                  "prefill-3"));
}

TEST(PlacementTest, PrefixBlockHashesAreChainedAndStable) {
  const std::vector<int32_t> a = Tokens(40);
  std::vector<int32_t> b = a;
  b[20] = 1;  // differs in the second block
  const auto ha = Placement::PrefixBlockHashes(a, 16);
  const auto hb = Placement::PrefixBlockHashes(b, 16);
  ASSERT_EQ(ha.size(), 2u);  // 40 tokens: two full blocks
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_NE(ha[1], hb[1]);
  // Same block content after a different prefix: a different hash.
  std::vector<int32_t> c(a.begin() + 16, a.begin() + 32);
  c.insert(c.begin(), a.begin(), a.begin() + 16);
  c[0] = 999;
  EXPECT_NE(Placement::PrefixBlockHashes(c, 16)[1], ha[1]);
  EXPECT_EQ(Placement::PrefixBlockHashes(a, 16), ha);
}

TEST(PlacementTest, ParsesPolicies) {
  EXPECT_EQ(*ParsePrefillPolicy("affinity"), PrefillPolicy::kAffinity);
  EXPECT_EQ(*ParsePrefillPolicy("round_robin"), PrefillPolicy::kRoundRobin);
  EXPECT_EQ(*ParsePrefillPolicy("least_loaded"), PrefillPolicy::kLeastLoaded);
  EXPECT_EQ(ParsePrefillPolicy("random").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::router

namespace tandem::router {
namespace {

// A prefill worker opens one KV transport; only a decode worker that accepts it can take
// its KV, so placement pairs them by transport (empty lists: unknown, anything goes).
TEST(PlacementTest, PrefillMustOpenATransportTheDecodeAccepts) {
  for (PrefillPolicy policy :
       {PrefillPolicy::kLeastLoaded, PrefillPolicy::kAffinity, PrefillPolicy::kRoundRobin}) {
    SCOPED_TRACE(PrefillPolicyName(policy));
    Placement placement(PlacementOptions{.prefill_policy = policy});
    std::vector<WorkerView> workers = {Prefill("prefill-1", 0), Prefill("prefill-2", 500),
                                       Prefill("prefill-3", 900)};
    workers[0].transports = {"nccl"};
    workers[1].transports = {"cuda_ipc"};
    workers[2].transports = {"tcp"};
    const std::vector<std::string> ipc_decode = {"tcp", "cuda_ipc"};
    const std::vector<std::string> cpu_decode = {"tcp"};
    const std::vector<std::string> nccl_decode = {"tcp", "cuda_ipc", "nccl"};
    for (int i = 0; i < 3; ++i) {
      std::optional<WorkerView> p = placement.ChoosePrefill(workers, Tokens(40), {}, cpu_decode);
      ASSERT_TRUE(p.has_value());
      EXPECT_EQ(p->id, "prefill-3");
      p = placement.ChoosePrefill(workers, Tokens(40, 7), {}, ipc_decode);
      ASSERT_TRUE(p.has_value());
      EXPECT_NE(p->id, "prefill-1") << "nccl is not offered by this decode worker";
    }
    std::optional<WorkerView> p = placement.ChoosePrefill(workers, Tokens(40, 9), {}, nccl_decode);
    ASSERT_TRUE(p.has_value());
    if (policy != PrefillPolicy::kRoundRobin) {
      EXPECT_EQ(p->id, "prefill-1");
    }
    // Nobody speaks what the decode worker accepts.
    const std::vector<std::string> rdma_decode = {"rdma"};
    EXPECT_FALSE(placement.ChoosePrefill(workers, Tokens(40), {}, rdma_decode).has_value());
    // Unknown transports on either side: no filter.
    EXPECT_TRUE(placement.ChoosePrefill(workers, Tokens(40), {}, {}).has_value());
    workers[2].transports.clear();
    EXPECT_EQ(placement.ChoosePrefill(workers, Tokens(40), {}, rdma_decode)->id, "prefill-3");
  }
}

// NCCL cannot put two ranks on one GPU: a nccl prefill worker on the decode worker's GPU
// is never its partner; on another GPU (or with either GPU unknown) it is.
TEST(PlacementTest, NcclPrefillNeverPairsWithADecodeWorkerOnItsGpu) {
  Placement placement(PlacementOptions{.prefill_policy = PrefillPolicy::kLeastLoaded});
  std::vector<WorkerView> workers = {Prefill("prefill-1", 0), Prefill("prefill-2", 900)};
  workers[0].transports = {"nccl"};
  workers[0].device_uuid = "GPU-aaaa";
  workers[1].transports = {"cuda_ipc"};
  workers[1].device_uuid = "GPU-aaaa";
  const std::vector<std::string> decode = {"tcp", "cuda_ipc", "nccl"};
  // The idle nccl worker shares the decode worker's GPU: the busier cuda_ipc one is chosen.
  std::optional<WorkerView> p = placement.ChoosePrefill(workers, Tokens(40), {}, decode, "GPU-aaaa");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->id, "prefill-2");
  // Decode on another GPU, or its GPU unknown: the nccl worker is fine.
  EXPECT_EQ(placement.ChoosePrefill(workers, Tokens(40, 3), {}, decode, "GPU-bbbb")->id,
            "prefill-1");
  EXPECT_EQ(placement.ChoosePrefill(workers, Tokens(40, 5), {}, decode, "")->id, "prefill-1");
  // Only the nccl worker, on the decode worker's GPU: nobody.
  workers.pop_back();
  EXPECT_FALSE(placement.ChoosePrefill(workers, Tokens(40), {}, decode, "GPU-aaaa").has_value());
}

}  // namespace
}  // namespace tandem::router
