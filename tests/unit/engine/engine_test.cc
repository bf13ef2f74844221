// Engine behaviour on a small synthetic model (no tokenizer): batching, chunking, preemption
// and prefix caching must not change a sequence's greedy tokens; bad requests get clear errors.
#include "engine/engine.h"

#include "common/logging.h"

#include <map>
#include <memory>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "llama";
  c.name = "tiny-test";
  c.n_layers = 2;
  c.hidden = 64;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 128;
  c.vocab_size = 256;
  c.context_length = 256;
  c.rope_theta = 10000.0f;
  c.rms_norm_eps = 1e-5f;
  c.tied_embeddings = true;
  return c;
}

std::unique_ptr<Engine> MakeEngine(EngineOptions options, GgmlType type = GgmlType::kQ4_1) {
  options.num_threads = 2;
  auto engine = Engine::Create(ModelWeights::Synthetic(TinyConfig(), type, /*seed=*/42),
                               nullptr, nullptr, options);
  CHECK_OK(engine.status());
  return *std::move(engine);
}

std::vector<int32_t> Prompt(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 256);
  return tokens;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt_tokens = std::move(prompt);
  r.params.max_tokens = max_tokens;
  r.params.sampling.temperature = 0;
  return r;
}

// Runs every request together and returns each one's generated tokens, in request order.
std::vector<std::vector<int32_t>> RunAll(Engine& engine, std::vector<GenerationRequest> reqs) {
  std::vector<RequestId> ids;
  for (GenerationRequest& r : reqs) {
    auto id = engine.AddRequest(std::move(r));
    CHECK_OK(id.status());
    ids.push_back(*id);
  }
  std::map<RequestId, std::vector<int32_t>> tokens;
  while (engine.HasWork()) {
    auto outputs = engine.Step();
    CHECK_OK(outputs.status());
    for (const RequestOutput& out : *outputs) {
      auto& t = tokens[out.id];
      t.insert(t.end(), out.new_tokens.begin(), out.new_tokens.end());
    }
  }
  std::vector<std::vector<int32_t>> result;
  for (RequestId id : ids) result.push_back(tokens[id]);
  return result;
}

TEST(EngineTest, GreedyTokensAreTheSameAloneAndBatchedWithSevenOthers) {
  std::vector<GenerationRequest> reqs;
  const int lengths[] = {5, 17, 1, 33, 64, 9, 100, 2};
  for (int i = 0; i < 8; ++i) reqs.push_back(Greedy(Prompt(lengths[i], i), 20));

  std::vector<std::vector<int32_t>> alone;
  for (const GenerationRequest& r : reqs) {
    auto engine = MakeEngine({});
    alone.push_back(RunAll(*engine, {r})[0]);
    ASSERT_EQ(alone.back().size(), 20u);
  }
  auto engine = MakeEngine({});
  EXPECT_EQ(RunAll(*engine, reqs), alone);
}

TEST(EngineTest, ChunkedPrefillEqualsOneShotPrefill) {
  const std::vector<int32_t> prompt = Prompt(150, 3);
  auto one_shot = MakeEngine({.max_batch_tokens = 512});
  auto chunked = MakeEngine({.max_batch_tokens = 7});
  auto logits_a = one_shot->PromptLogits(prompt);
  auto logits_b = chunked->PromptLogits(prompt);
  ASSERT_TRUE(logits_a.ok() && logits_b.ok());
  ASSERT_EQ(logits_a->size(), 256u);
  for (size_t i = 0; i < logits_a->size(); ++i) {
    EXPECT_NEAR((*logits_a)[i], (*logits_b)[i], 1e-4f) << "vocab id " << i;
  }
  EXPECT_EQ(RunAll(*one_shot, {Greedy(prompt, 30)}), RunAll(*chunked, {Greedy(prompt, 30)}));
}

TEST(EngineTest, PreemptionDoesNotChangeTheOutput) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) reqs.push_back(Greedy(Prompt(20 + i, 100 + i), 40));
  auto roomy = MakeEngine({});
  // 12 blocks of 16 tokens: six sequences of ~60 tokens cannot all stay resident.
  auto tight = MakeEngine({.num_kv_blocks = 12});
  EXPECT_EQ(RunAll(*tight, reqs), RunAll(*roomy, reqs));
  EXPECT_GT(tight->stats().preemptions, 0);
  EXPECT_EQ(tight->stats().free_kv_blocks, 12);
}

TEST(EngineTest, PrefixCacheHitGivesTheSameTokens) {
  auto engine = MakeEngine({});
  const std::vector<int32_t> prompt = Prompt(70, 9);
  const auto first = RunAll(*engine, {Greedy(prompt, 16)});
  const int64_t computed_before = engine->stats().prompt_tokens_computed;
  const auto second = RunAll(*engine, {Greedy(prompt, 16)});
  EXPECT_EQ(first, second);
  // 64 of the 70 prompt tokens sit in 4 full cached blocks.
  EXPECT_EQ(engine->stats().prompt_tokens_computed - computed_before, 70 - 64);
}

TEST(EngineTest, SameSeedSameSamplesBatchedOrNot) {
  auto make = [](uint64_t seed, int i) {
    GenerationRequest r = Greedy(Prompt(10 + i, i), 24);
    r.params.sampling.temperature = 0.9f;
    r.params.sampling.top_p = 0.9f;
    r.params.sampling.seed = seed;
    return r;
  };
  auto a = MakeEngine({});
  auto b = MakeEngine({});
  const auto alone = RunAll(*a, {make(5, 0)});
  const auto batched = RunAll(*b, {make(6, 1), make(5, 0), make(7, 2)});
  EXPECT_EQ(alone[0], batched[1]);
  EXPECT_NE(batched[0], batched[1]);
}

TEST(EngineTest, AbortFreesBlocksAtOnce) {
  auto engine = MakeEngine({.num_kv_blocks = 64});
  auto id = engine->AddRequest(Greedy(Prompt(40, 1), 100));
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(engine->Step().ok());
  EXPECT_LT(engine->stats().free_kv_blocks, 64);
  engine->Abort(*id);
  EXPECT_EQ(engine->stats().free_kv_blocks, 64);
  auto outputs = engine->Step();
  ASSERT_TRUE(outputs.ok());
  ASSERT_EQ(outputs->size(), 1u);
  EXPECT_EQ((*outputs)[0].finish_reason, FinishReason::kAborted);
  EXPECT_FALSE(engine->HasWork());
}

TEST(EngineTest, StopsAtMaxTokensAndAtTheContext) {
  auto engine = MakeEngine({.max_context = 40});
  auto result = engine->Generate(Greedy(Prompt(10, 1), 5));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->tokens.size(), 5u);
  EXPECT_EQ(result->finish_reason, FinishReason::kLength);
  result = engine->Generate(Greedy(Prompt(10, 1), 35));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->tokens.size(), 30u);  // 10 + 30 fill the context of 40
  EXPECT_EQ(result->finish_reason, FinishReason::kContext);
}

TEST(EngineTest, RejectsBadRequestsWithClearErrors) {
  auto engine = MakeEngine({.max_context = 64});
  struct Case {
    GenerationRequest request;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({Greedy({}, 4), "prompt is empty"});
  cases.push_back({Greedy(Prompt(64, 1), 4), "does not fit the context"});
  cases.push_back({Greedy(Prompt(4, 1), 65), "exceeds the context"});
  cases.push_back({Greedy(Prompt(4, 1), 0), "max_tokens must be positive"});
  cases.push_back({Greedy({1, 2, 999}, 4), "outside the vocabulary"});
  GenerationRequest hot = Greedy(Prompt(4, 1), 4);
  hot.params.sampling.temperature = -1;
  cases.push_back({hot, "temperature"});
  GenerationRequest stop = Greedy(Prompt(4, 1), 4);
  stop.params.stop = {"x"};
  cases.push_back({stop, "tokenizer"});
  for (Case& c : cases) {
    auto id = engine->AddRequest(std::move(c.request));
    ASSERT_FALSE(id.ok()) << c.message;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr(c.message));
  }
  EXPECT_FALSE(engine->HasWork());
}

TEST(EngineTest, ExactAndFastMatmulsAgreeOnFloatWeights) {
  // With fp32 weights the fast path only quantizes nothing: logits agree closely.
  auto fast = MakeEngine({}, GgmlType::kF32);
  auto exact = MakeEngine({.exact_matmul = true}, GgmlType::kF32);
  const std::vector<int32_t> prompt = Prompt(33, 4);
  auto a = fast->PromptLogits(prompt);
  auto b = exact->PromptLogits(prompt);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < a->size(); ++i) EXPECT_NEAR((*a)[i], (*b)[i], 1e-3f);
}

}  // namespace
}  // namespace tandem
