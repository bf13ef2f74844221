// Disaggregated serving gives exactly the single-process engine's greedy tokens: prefill on a
// prefill worker, KV streamed over TCP, decode on a decode worker.
#include <algorithm>
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

constexpr int kMaxTokens = 24;

// One request and what the single-process engine makes of it.
struct Case {
  std::string label;
  GenerateRequest request;
  std::vector<int32_t> prompt_ids;  // the reference's prompt
  ReferenceOutput reference;
};

// Checks one disaggregated result against the reference.
void ExpectMatchesReference(const Case& c, const GenerateResult& r) {
  SCOPED_TRACE(c.label);
  ASSERT_TRUE(r.ok()) << r.Describe();
  ASSERT_TRUE(r.final.has_value()) << r.Describe();
  EXPECT_EQ(r.token_ids, c.reference.tokens)
      << "disaggregated [" << absl::StrJoin(r.token_ids, ",") << "] vs reference ["
      << absl::StrJoin(c.reference.tokens, ",") << "]";
  EXPECT_EQ(r.text, c.reference.text);
  EXPECT_EQ(r.responses_after_final, 0);
  EXPECT_EQ(r.invalid_utf8_deltas, 0) << "a delta split a UTF-8 sequence";
  EXPECT_EQ(r.final->prefill_location(), tandem::v1::PREFILL_LOCATION_REMOTE) << r.Describe();
  EXPECT_EQ(r.final->prompt_tokens(), static_cast<int>(c.prompt_ids.size())) << r.Describe();
  EXPECT_EQ(r.final->completion_tokens(), static_cast<int>(r.token_ids.size())) << r.Describe();
  const auto expected_reason = c.reference.finish_reason == FinishReason::kLength
                                   ? tandem::v1::FINISH_REASON_LENGTH
                                   : tandem::v1::FINISH_REASON_STOP;
  EXPECT_EQ(r.final->finish_reason(), expected_reason) << r.Describe();
  EXPECT_FALSE(r.final->prefill_worker().empty()) << r.Describe();
  EXPECT_FALSE(r.final->decode_worker().empty()) << r.Describe();
  const tandem::v1::Timings& t = r.final->timings();
  EXPECT_GT(t.total(), 0) << t.ShortDebugString();
  EXPECT_GT(t.prefill(), 0) << t.ShortDebugString();
  EXPECT_GT(t.first_token(), 0) << t.ShortDebugString();
  EXPECT_LE(t.first_token(), t.total()) << t.ShortDebugString();
  EXPECT_LE(t.queued(), t.first_token()) << t.ShortDebugString();
}

// Fills in each case's reference output (before the cluster starts: the CPUs are shared).
void ComputeReferences(ReferenceModel& ref, std::vector<Case>& cases) {
  for (Case& c : cases) {
    auto out = ref.Greedy(c.prompt_ids, c.request.sampling().max_tokens(),
                          c.request.sampling().ignore_eos());
    ASSERT_TRUE(out.ok()) << c.label << ": " << out.status();
    c.reference = *out;
  }
}

TEST(DisaggEqualityTest, OnePrefillOneDecodeMatchesSingleProcess) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  std::vector<Case> cases;
  auto add_prompt = [&](const std::string& text, bool as_ids) {
    Case c;
    c.prompt_ids = ref->TokenizePrompt(text);
    c.label = absl::StrCat(as_ids ? "prompt as token_ids: " : "prompt: ", text);
    c.request = as_ids ? GreedyTokens(c.prompt_ids, kMaxTokens) : GreedyPrompt(text, kMaxTokens);
    cases.push_back(std::move(c));
  };
  auto add_chat = [&](const std::string& text, bool as_ids) {
    Case c;
    auto ids = ref->TokenizeUserChat(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    c.prompt_ids = *ids;
    c.label = absl::StrCat(as_ids ? "chat as token_ids: " : "chat: ", text);
    c.request = as_ids ? GreedyTokens(c.prompt_ids, kMaxTokens) : GreedyChat(text, kMaxTokens);
    cases.push_back(std::move(c));
  };
  add_prompt("The capital of France is", false);
  add_prompt("def fibonacci(n):", false);
  add_prompt("Der Bär läuft über die Straße, und 東京 ist groß. Ça va?", false);
  add_prompt("List the planets of the solar system:", true);
  add_prompt(
      "The history of the printing press begins in the fifteenth century, when Johannes "
      "Gutenberg combined movable metal type, oil-based ink and a wooden screw press. Within "
      "fifty years presses were working in more than two hundred cities, and",
      false);
  add_chat("What is 2+2?", true);
  add_chat("Name three colors.", true);
  add_chat("Traduis en français : « Bonjour, comment ça va ? » 😊", true);
  add_chat("Write a haiku about the sea.", true);
  // The same prompts through the router's own chat rendering (and a prefix-cache hit on P).
  add_chat("What is 2+2?", false);
  add_chat("Traduis en français : « Bonjour, comment ça va ? » 😊", false);
  add_prompt("Once upon a time", true);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ASSERT_GE(cases.size(), 10u);
  ComputeReferences(*ref, cases);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());
  {
    auto health = cluster.Health();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_TRUE(health->serving()) << health->ShortDebugString();
    EXPECT_EQ(health->mode(), "disaggregated");
    ASSERT_EQ(health->workers_size(), 2) << health->ShortDebugString();
    for (const auto& w : health->workers()) {
      EXPECT_GT(w.total_kv_blocks(), 0) << w.ShortDebugString();
      EXPECT_EQ(w.free_kv_blocks(), w.total_kv_blocks()) << w.ShortDebugString();
      EXPECT_FALSE(w.draining()) << w.ShortDebugString();
    }
  }
  std::set<std::vector<int32_t>> sent;
  for (const Case& c : cases) {
    GenerateResult r = cluster.Generate(c.request);
    ExpectMatchesReference(c, r);
    if (r.final.has_value()) {
      EXPECT_TRUE(cluster.prefill_workers()[0]->Is(r.final->prefill_worker())) << r.Describe();
      EXPECT_TRUE(cluster.decode_workers()[0]->Is(r.final->decode_worker())) << r.Describe();
      // A prompt sent before is in the prefill worker's prefix cache (its full blocks).
      if (sent.contains(c.prompt_ids) && c.prompt_ids.size() >= 32) {
        EXPECT_GE(r.final->cached_prompt_tokens(), 16) << c.label << ": " << r.Describe();
      }
      EXPECT_LE(r.final->cached_prompt_tokens(), r.final->prompt_tokens()) << r.Describe();
    }
    sent.insert(c.prompt_ids);
  }
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

TEST(DisaggEqualityTest, TwoByTwoUnderConcurrency) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  const std::vector<std::string> topics = {
      "the moon",    "volcanoes", "honey bees",  "the Roman empire", "jazz",     "glaciers",
      "octopuses",   "the piano", "coffee",      "lightning",        "the Nile", "chess",
      "penguins",    "bridges",   "tea",         "the alphabet",     "rainbows", "owls",
      "electricity", "mountains", "bicycles",    "the ocean",        "tigers",   "bread",
      "the sun",     "trains",    "mathematics", "whales",           "deserts",  "paper",
      "clocks",      "São Paulo"};
  ASSERT_EQ(topics.size(), 32u);
  std::vector<Case> cases;
  // Half chat, half raw text: chat prompts share the template's system-message prefix, which
  // the default (affinity) prefill policy keeps on one worker while it is not overloaded;
  // raw prompts share nothing and go to the least loaded one.
  for (size_t i = 0; i < topics.size(); ++i) {
    Case c;
    const std::string text = absl::StrCat("Tell me one fact about ", topics[i], ".");
    const std::string raw = absl::StrCat(topics[i], " are interesting because");
    c.label = absl::StrCat("#", i, " ", i % 4 < 2 ? text : raw);
    switch (i % 4) {
      case 0:
      case 1: {
        auto ids = ref->TokenizeUserChat(text);
        ASSERT_TRUE(ids.ok()) << ids.status();
        c.prompt_ids = *ids;
        c.request = i % 4 == 0 ? GreedyTokens(c.prompt_ids, 16) : GreedyChat(text, 16);
        break;
      }
      default:
        c.prompt_ids = ref->TokenizePrompt(raw);
        c.request = i % 4 == 2 ? GreedyTokens(c.prompt_ids, 16) : GreedyPrompt(raw, 16);
        break;
    }
    c.request.set_request_id(absl::StrCat("concurrent-", i));
    cases.push_back(std::move(c));
  }
  ComputeReferences(*ref, cases);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());

  Cluster cluster(WithWorkers(2, 2));
  ASSERT_OK(cluster.Start());
  std::vector<GenerateResult> results(cases.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = cluster.Generate(cases[i].request); });
  }
  for (std::thread& t : threads) t.join();

  std::set<std::string> prefill_seen, decode_seen;
  for (size_t i = 0; i < cases.size(); ++i) {
    ExpectMatchesReference(cases[i], results[i]);
    if (!results[i].final.has_value()) continue;
    EXPECT_EQ(results[i].final->request_id(), cases[i].request.request_id());
    prefill_seen.insert(results[i].final->prefill_worker());
    decode_seen.insert(results[i].final->decode_worker());
  }
  const std::vector<Worker*> p = cluster.prefill_workers();
  const std::vector<Worker*> d = cluster.decode_workers();
  auto seen = [](const std::set<std::string>& names, const Worker& w) {
    for (const std::string& n : names) {
      if (w.Is(n)) return true;
    }
    return false;
  };
  const std::string seen_text =
      absl::StrCat("prefill workers seen: {", absl::StrJoin(prefill_seen, ", "),
                   "}; decode workers seen: {", absl::StrJoin(decode_seen, ", "), "}");
  EXPECT_TRUE(seen(prefill_seen, *p[0])) << p[0]->address << " got no prefill; " << seen_text;
  EXPECT_TRUE(seen(prefill_seen, *p[1])) << p[1]->address << " got no prefill; " << seen_text;
  EXPECT_TRUE(seen(decode_seen, *d[0])) << d[0]->address << " got no decode; " << seen_text;
  EXPECT_TRUE(seen(decode_seen, *d[1])) << d[1]->address << " got no decode; " << seen_text;
  // Nothing leaked: every block back, nothing stuck.
  EXPECT_OK(cluster.WaitForIdle());
}

// One cluster, the request-level options: per-request prefill modes and stop strings (applied
// on the decode worker).
TEST(DisaggEqualityTest, PerRequestModesAndStopStrings) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       ref->TokenizeUserChat("Write a short poem about autumn leaves."));
  ASSERT_OK_AND_ASSIGN(ReferenceOutput greedy, ref->Greedy(ids, 32));
  ASSERT_GT(greedy.text.size(), 20u) << greedy.text;

  // A stop string taken from the middle of the greedy text.
  const std::string stop = greedy.text.substr(greedy.text.size() / 2, 4);
  GenerationRequest stop_request;
  stop_request.prompt_tokens = ids;
  stop_request.params.max_tokens = 32;
  stop_request.params.sampling.temperature = 0.0f;
  stop_request.params.stop = {stop};
  ASSERT_OK_AND_ASSIGN(ReferenceOutput stopped, ref->Run(stop_request));
  ASSERT_EQ(stopped.finish_reason, FinishReason::kStop);

  // Auto mode prefills remotely beyond --auto-local-max-tokens (256).
  std::vector<int32_t> long_ids;
  for (int i = 0; long_ids.size() < 300; ++i) {
    const std::vector<int32_t> part =
        ref->TokenizePrompt(absl::StrCat(" Line ", i, ": the weather today is mild and dry."));
    long_ids.insert(long_ids.end(), part.begin(), part.end());
  }
  ASSERT_OK_AND_ASSIGN(ReferenceOutput long_greedy, ref->Greedy(long_ids, 8));

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());

  {
    GenerateRequest request = GreedyTokens(long_ids, 8);
    request.set_mode(tandem::v1::PREFILL_MODE_AUTO);
    GenerateResult r = cluster.Generate(request);
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value()) << r.Describe();
    EXPECT_EQ(r.final->prefill_location(), tandem::v1::PREFILL_LOCATION_REMOTE) << r.Describe();
    EXPECT_EQ(r.token_ids, long_greedy.tokens);
  }

  struct ModeCase {
    tandem::v1::PrefillMode mode;
    tandem::v1::PrefillLocation location;
  };
  for (const ModeCase& m :
       {ModeCase{tandem::v1::PREFILL_MODE_DISAGGREGATED, tandem::v1::PREFILL_LOCATION_REMOTE},
        ModeCase{tandem::v1::PREFILL_MODE_COLLOCATED, tandem::v1::PREFILL_LOCATION_LOCAL},
        ModeCase{tandem::v1::PREFILL_MODE_AUTO,  // short prompt: local
                 tandem::v1::PREFILL_LOCATION_LOCAL}}) {
    SCOPED_TRACE(tandem::v1::PrefillMode_Name(m.mode));
    GenerateRequest request = GreedyTokens(ids, 32);
    request.set_mode(m.mode);
    GenerateResult r = cluster.Generate(request);
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value()) << r.Describe();
    EXPECT_EQ(r.final->prefill_location(), m.location) << r.Describe();
    EXPECT_EQ(r.token_ids, greedy.tokens)
        << "got [" << absl::StrJoin(r.token_ids, ",") << "] reference ["
        << absl::StrJoin(greedy.tokens, ",") << "]";
    EXPECT_EQ(r.text, greedy.text);
  }

  {
    SCOPED_TRACE(absl::StrCat("stop string '", stop, "'"));
    GenerateRequest request = GreedyTokens(ids, 32);
    request.mutable_sampling()->add_stop(stop);
    GenerateResult r = cluster.Generate(request);
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value()) << r.Describe();
    EXPECT_EQ(r.text, stopped.text);
    EXPECT_EQ(r.text.find(stop), std::string::npos) << r.text;
    EXPECT_EQ(r.token_ids, stopped.tokens);
    EXPECT_EQ(r.final->finish_reason(), tandem::v1::FINISH_REASON_STOP) << r.Describe();
  }
}

TEST(DisaggEqualityTest, CollocatedRouterNeedsNoPrefillWorker) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       ref->TokenizeUserChat("What is the tallest tree?"));
  ASSERT_OK_AND_ASSIGN(ReferenceOutput greedy, ref->Greedy(ids, 24));

  Cluster cluster(WithWorkers(0, 1, "collocated"));
  ASSERT_OK(cluster.Start());
  auto health = cluster.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(health->serving()) << health->ShortDebugString();
  EXPECT_EQ(health->mode(), "collocated");
  for (const GenerateRequest& request :
       {GreedyTokens(ids, 24), GreedyChat("What is the tallest tree?", 24)}) {
    GenerateResult r = cluster.Generate(request);
    ASSERT_TRUE(r.ok()) << r.Describe();
    ASSERT_TRUE(r.final.has_value()) << r.Describe();
    EXPECT_EQ(r.final->prefill_location(), tandem::v1::PREFILL_LOCATION_LOCAL) << r.Describe();
    EXPECT_EQ(r.token_ids, greedy.tokens);
    EXPECT_EQ(r.text, greedy.text);
    EXPECT_EQ(r.final->prompt_tokens(), static_cast<int>(ids.size())) << r.Describe();
  }
}

// "Same seed, same output" (generation.proto): a seeded sampled request gives the same tokens
// every time, and the same whether the prompt is prefilled remotely or locally, as in one
// process.
TEST(DisaggEqualityTest, SeededSamplingMatchesSingleProcess) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  ASSERT_OK_AND_ASSIGN(std::vector<int32_t> ids,
                       ref->TokenizeUserChat("Write a short poem about autumn leaves."));
  GenerationRequest seeded_request;
  seeded_request.prompt_tokens = ids;
  seeded_request.params.max_tokens = 24;
  seeded_request.params.ignore_eos = true;
  seeded_request.params.sampling.temperature = 0.9f;
  seeded_request.params.sampling.top_p = 0.95f;
  seeded_request.params.sampling.seed = 1234;
  ASSERT_OK_AND_ASSIGN(ReferenceOutput seeded, ref->Run(seeded_request));

  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());
  {
    auto seeded_grpc = [&](tandem::v1::PrefillMode mode) {
      GenerateRequest request = GreedyTokens(ids, 24, true);
      request.mutable_sampling()->set_temperature(0.9f);
      request.mutable_sampling()->set_top_p(0.95f);
      request.mutable_sampling()->set_seed(1234);
      request.set_mode(mode);
      return cluster.Generate(request);
    };
    GenerateResult remote1 = seeded_grpc(tandem::v1::PREFILL_MODE_DISAGGREGATED);
    GenerateResult remote2 = seeded_grpc(tandem::v1::PREFILL_MODE_DISAGGREGATED);
    GenerateResult local = seeded_grpc(tandem::v1::PREFILL_MODE_COLLOCATED);
    ASSERT_TRUE(remote1.ok()) << remote1.Describe();
    ASSERT_TRUE(remote2.ok()) << remote2.Describe();
    ASSERT_TRUE(local.ok()) << local.Describe();
    auto ids_of = [](const std::vector<int32_t>& v) { return absl::StrJoin(v, ","); };
    EXPECT_EQ(remote1.token_ids, remote2.token_ids) << "same seed, different output";
    EXPECT_EQ(local.token_ids, seeded.tokens)
        << "collocated [" << ids_of(local.token_ids) << "] single-process ["
        << ids_of(seeded.tokens) << "]";
    // Diagnosis for a mismatch: the decode worker's sampler restarting from the seed after
    // the prefill worker sampled the first token gives exactly this single-process run.
    std::string diagnosis;
    if (remote1.token_ids != seeded.tokens && !remote1.token_ids.empty()) {
      GenerationRequest restarted = seeded_request;
      restarted.prompt_tokens.push_back(remote1.token_ids[0]);
      restarted.params.max_tokens -= 1;
      auto rerun = ref->Run(restarted);
      if (rerun.ok() && std::equal(rerun->tokens.begin(), rerun->tokens.end(),
                                   remote1.token_ids.begin() + 1, remote1.token_ids.end())) {
        diagnosis =
            "; tokens 2.. equal a single-process run of (prompt + token 1) with a fresh "
            "sampler seeded alike: the decode worker restarts the seeded RNG instead "
            "of continuing the prefill worker's stream";
      }
    }
    EXPECT_EQ(remote1.token_ids, seeded.tokens)
        << "disaggregated [" << ids_of(remote1.token_ids) << "] single-process ["
        << ids_of(seeded.tokens) << "]" << diagnosis;
  }
}

}  // namespace
}  // namespace tandem::integration
