// Prefill on one engine, decode on another, the prompt's KV moved layer by layer over TCP:
// the greedy tokens equal the single-process engine's, and every block comes back.
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "common/logging.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "kvtransfer/kv_layout.h"
#include "kvtransfer/layer_receiver.h"
#include "kvtransfer/layer_sender.h"
#include "kvtransfer/tcp_transport.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

constexpr uint64_t kSeed = 7;

std::unique_ptr<Engine> MakeEngine() {
  absl::StatusOr<ModelConfig> config = ModelConfig::Preset("tiny");
  CHECK_OK(config.status());
  EngineOptions options;
  options.num_threads = 1;
  options.num_kv_blocks = 64;
  auto engine = Engine::Create(ModelWeights::Synthetic(*config, GgmlType::kQ8_0, kSeed), nullptr,
                               nullptr, options);
  CHECK_OK(engine.status());
  return *std::move(engine);
}

GenerationRequest Greedy(int n_prompt, int max_tokens) {
  std::mt19937 rng(n_prompt);
  GenerationRequest r;
  for (int i = 0; i < n_prompt; ++i) r.prompt_tokens.push_back(static_cast<int32_t>(rng() % 500));
  r.params.max_tokens = max_tokens;
  r.params.sampling.temperature = 0;
  r.params.ignore_eos = true;
  return r;
}

std::vector<int32_t> Drain(Engine& engine, RequestId id) {
  std::vector<int32_t> tokens;
  while (engine.HasWork()) {
    auto outputs = engine.Step();
    CHECK_OK(outputs.status());
    for (const RequestOutput& out : *outputs) {
      if (out.id == id) tokens.insert(tokens.end(), out.new_tokens.begin(), out.new_tokens.end());
    }
  }
  return tokens;
}

struct Pair {
  std::unique_ptr<TcpTransport> prefill_side;
  std::unique_ptr<TcpTransport> decode_side;
};

Pair Connect() {
  auto listener = TcpTransportListener::Listen("127.0.0.1", 0);
  CHECK_OK(listener.status());
  auto client = TcpTransport::Connect("127.0.0.1", (*listener)->port());
  CHECK_OK(client.status());
  auto server = (*listener)->Accept(absl::Now() + absl::Seconds(5));
  CHECK_OK(server.status());
  return {*std::move(client), *std::move(server)};
}

// Prefills `request` on `prefill` (holding its KV), reserves and receives it on `decode`,
// and admits it there. Returns the decode-side id and the first token.
std::pair<RequestId, int32_t> Handoff(Engine& prefill, Engine& decode, GenerationRequest request,
                                      Pair& transports) {
  GenerationRequest p = request;
  p.params.max_tokens = 1;
  p.params.hold_kv = true;
  auto pid = prefill.AddRequest(p);
  CHECK_OK(pid.status());
  const std::vector<int32_t> first = Drain(prefill, *pid);
  CHECK_EQ(first.size(), 1u);
  auto held = prefill.HeldBlocks(*pid);
  CHECK_OK(held.status());

  auto reservation = decode.Reserve(request, absl::Now() + absl::Seconds(30));
  CHECK_OK(reservation.status());
  const int64_t n_tokens = static_cast<int64_t>(request.prompt_tokens.size());
  const KvLayout layout = KvLayout::For(prefill.config(), prefill.runner().block_size(),
                                        KvDtype::kF16);
  auto sender = LayerSender::Create(&prefill.runner(), layout, layout,
                                    transports.prefill_side.get());
  auto receiver = LayerReceiver::Create(&decode.runner(), layout, layout,
                                        transports.decode_side.get());
  CHECK_OK(sender.status());
  CHECK_OK(receiver.status());
  CHECK_OK((*sender)->Begin(*held, n_tokens));
  CHECK_OK((*receiver)->Begin(reservation->blocks, n_tokens));
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  std::thread send([&] { CHECK_OK((*sender)->SendRemainingLayers(deadline)); });
  CHECK_OK((*receiver)->RecvRemainingLayers(deadline));
  send.join();
  prefill.ReleaseKv(*pid);
  CHECK_OK(decode.AdmitPrefilled(reservation->id, first[0]));
  return {reservation->id, first[0]};
}

TEST(DisaggregatedEngineTest, GreedyTokensEqualTheSingleProcessEngine) {
  auto single = MakeEngine();
  auto prefill = MakeEngine();
  auto decode = MakeEngine();
  Pair transports = Connect();
  for (int n_prompt : {50, 16, 3, 97}) {
    SCOPED_TRACE(n_prompt);
    const GenerationRequest request = Greedy(n_prompt, 24);
    auto sid = single->AddRequest(request);
    ASSERT_TRUE(sid.ok());
    const std::vector<int32_t> expected = Drain(*single, *sid);
    ASSERT_EQ(expected.size(), 24u);

    auto [did, first] = Handoff(*prefill, *decode, request, transports);
    EXPECT_EQ(first, expected[0]);
    // The decode engine streams every token, the prefill worker's first one included (its
    // text belongs to the stream's detokenization).
    EXPECT_EQ(Drain(*decode, did), expected);
  }
  // Nothing is stranded: every block is free (full ones stay cached but evictable).
  EXPECT_EQ(prefill->stats().free_kv_blocks, 64);
  EXPECT_EQ(decode->stats().free_kv_blocks, 64);
}

TEST(DisaggregatedEngineTest, DefaultModelChatAnswerIsTheSame) {
  EngineOptions options;
  options.num_threads = 2;
  options.num_kv_blocks = 64;
  auto load = [&] {
    auto engine = Engine::FromModelPath(testing::DefaultModelPath(), options);
    CHECK_OK(engine.status());
    return *std::move(engine);
  };
  auto single = load();
  auto prefill = load();
  auto decode = load();
  auto text = single->chat_template()->Render({{"user", "Name three colors."}}, true);
  ASSERT_TRUE(text.ok());
  GenerationRequest request;
  request.prompt_tokens = single->tokenizer()->Encode(*text, true);
  request.params.max_tokens = 32;
  request.params.sampling.temperature = 0;
  auto sid = single->AddRequest(request);
  ASSERT_TRUE(sid.ok());
  const std::vector<int32_t> expected = Drain(*single, *sid);
  Pair transports = Connect();
  auto [did, first] = Handoff(*prefill, *decode, request, transports);
  EXPECT_EQ(Drain(*decode, did), expected);
  EXPECT_EQ(decode->stats().free_kv_blocks, 64);
}

TEST(DisaggregatedEngineTest, ExpiredAndCancelledReservationsFreeTheirBlocks) {
  auto decode = MakeEngine();
  auto expiring = decode->Reserve(Greedy(40, 8), absl::Now() + absl::Milliseconds(20));
  auto cancelled = decode->Reserve(Greedy(30, 8), absl::Now() + absl::Seconds(30));
  ASSERT_TRUE(expiring.ok() && cancelled.ok());
  EXPECT_EQ(decode->stats().free_kv_blocks, 64 - 3 - 2);
  decode->CancelReservation(cancelled->id);
  EXPECT_EQ(decode->stats().free_kv_blocks, 64 - 3);
  EXPECT_EQ(decode->AdmitPrefilled(cancelled->id, 5).code(), absl::StatusCode::kNotFound);

  absl::SleepFor(absl::Milliseconds(30));
  auto outputs = decode->Step();
  ASSERT_TRUE(outputs.ok());
  ASSERT_EQ(outputs->size(), 1u);
  EXPECT_EQ((*outputs)[0].id, expiring->id);
  EXPECT_EQ((*outputs)[0].finish_reason, FinishReason::kAborted);
  EXPECT_EQ(decode->stats().free_kv_blocks, 64);
  EXPECT_FALSE(decode->HasWork());
}

TEST(DisaggregatedEngineTest, ExtendedReservationOutlivesItsFirstDeadline) {
  auto decode = MakeEngine();
  auto renewed = decode->Reserve(Greedy(40, 8), absl::Now() + absl::Milliseconds(20));
  ASSERT_TRUE(renewed.ok());
  ASSERT_TRUE(decode->ExtendReservation(renewed->id, absl::Now() + absl::Seconds(30)).ok());
  // An earlier deadline never shortens it.
  ASSERT_TRUE(decode->ExtendReservation(renewed->id, absl::Now()).ok());
  absl::SleepFor(absl::Milliseconds(30));
  auto outputs = decode->Step();
  ASSERT_TRUE(outputs.ok());
  EXPECT_TRUE(outputs->empty());
  EXPECT_EQ(decode->stats().free_kv_blocks, 64 - 3);
  // Still admissible; afterwards there is nothing left to extend.
  ASSERT_TRUE(decode->AdmitPrefilled(renewed->id, 5).ok());
  EXPECT_EQ(decode->ExtendReservation(renewed->id, absl::Now() + absl::Seconds(30)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(decode->ExtendReservation(12345, absl::Now()).code(), absl::StatusCode::kNotFound);
}

TEST(DisaggregatedEngineTest, ReservationRefusedWhenTheCacheIsFull) {
  auto decode = MakeEngine();
  // 64 blocks of 16 tokens: two 480-token prompts take 60, a third does not fit.
  for (int i = 0; i < 2; ++i) {
    auto r = decode->Reserve(Greedy(480, 1), absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  auto more = decode->Reserve(Greedy(480, 1), absl::Now() + absl::Seconds(30));
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(decode->stats().free_kv_blocks, 4);
}

TEST(DisaggregatedEngineTest, HoldKvRequestsGenerateOneToken) {
  auto prefill = MakeEngine();
  GenerationRequest r = Greedy(10, 4);
  r.params.hold_kv = true;
  auto id = prefill->AddRequest(r);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem

namespace tandem {
namespace {

// The layer hook fires once per layer, in order, during the step that completes a held
// prompt, with the blocks HeldBlocks reports afterwards; chunked prompts report only at
// their last chunk, and requests that do not hold their KV never.
TEST(DisaggregatedEngineTest, KvLayerHookReportsEveryLayerOfCompletingPrompts) {
  absl::StatusOr<ModelConfig> config = ModelConfig::Preset("tiny");
  ASSERT_TRUE(config.ok());
  EngineOptions options;
  options.num_threads = 1;
  options.num_kv_blocks = 64;
  options.max_batch_tokens = 32;  // the 70-token prompt takes three steps
  auto engine = Engine::Create(ModelWeights::Synthetic(*config, GgmlType::kQ8_0, kSeed),
                               nullptr, nullptr, options);
  ASSERT_TRUE(engine.ok());
  std::map<RequestId, std::vector<int>> layers;
  std::map<RequestId, std::vector<int32_t>> blocks;
  int64_t step_of_report = -1;
  (*engine)->SetKvLayerHook([&](int layer, absl::Span<const Engine::KvLayerReady> ready) {
    for (const Engine::KvLayerReady& r : ready) {
      layers[r.id].push_back(layer);
      blocks[r.id].assign(r.blocks.begin(), r.blocks.end());
      EXPECT_EQ(r.num_tokens, 70);
    }
    step_of_report = (*engine)->stats().steps;
  });
  GenerationRequest held = Greedy(70, 1);
  held.params.hold_kv = true;
  auto held_id = (*engine)->AddRequest(held);
  auto plain_id = (*engine)->AddRequest(Greedy(20, 4));
  ASSERT_TRUE(held_id.ok() && plain_id.ok());
  std::vector<int32_t> tokens = Drain(**engine, *held_id);
  EXPECT_EQ(tokens.size(), 1u);
  EXPECT_EQ(step_of_report, 2);  // the third step (stats count it after Forward)
  std::vector<int> expected(config->n_layers);
  for (int l = 0; l < config->n_layers; ++l) expected[l] = l;
  EXPECT_EQ(layers[*held_id], expected);
  EXPECT_FALSE(layers.contains(*plain_id));
  auto held_blocks = (*engine)->HeldBlocks(*held_id);
  ASSERT_TRUE(held_blocks.ok());
  EXPECT_EQ(blocks[*held_id], *held_blocks);
  EXPECT_EQ(held_blocks->size(), 5u);  // ceil(70 / 16)
  (*engine)->ReleaseKv(*held_id);
}

}  // namespace
}  // namespace tandem
