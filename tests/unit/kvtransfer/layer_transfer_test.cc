// Disaggregated equals single-process: a prefill on runner A, its KV moved layer by layer over
// a real TCP connection into other block ids of runner B (its own copy of the weights, as a
// separate process would have), then both decode the same tokens with bit-identical logits.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/cpu_model_runner.h"
#include "engine/kv_cache_manager.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/sampler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtransfer/kv_layout.h"
#include "kvtransfer/layer_receiver.h"
#include "kvtransfer/layer_sender.h"
#include "kvtransfer/tcp_transport.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

constexpr int kBlockSize = 16;
constexpr int kPromptTokens = 50;
constexpr int kDecodeTokens = 10;
constexpr uint64_t kSeed = 20261127;

absl::Time In(absl::Duration d) { return absl::Now() + d; }

struct TransportPair {
  std::unique_ptr<TcpTransport> prefill_side;
  std::unique_ptr<TcpTransport> decode_side;
};

TransportPair Connected() {
  auto listener = TcpTransportListener::Listen("127.0.0.1", 0);
  EXPECT_TRUE(listener.ok()) << listener.status();
  auto client = TcpTransport::Connect("127.0.0.1", (*listener)->port());
  EXPECT_TRUE(client.ok()) << client.status();
  auto server = (*listener)->Accept(In(absl::Seconds(5)));
  EXPECT_TRUE(server.ok()) << server.status();
  return {std::move(*client), std::move(*server)};
}

// One worker's model: its own weights (same seed as the other worker) and runner.
struct Worker {
  explicit Worker(const ModelConfig& config, KvDtype dtype = KvDtype::kF16)
      : weights(ModelWeights::Synthetic(config, GgmlType::kF32, kSeed)) {
    CpuModelRunnerOptions options;
    options.num_threads = 1;
    options.num_kv_blocks = 64;
    options.block_size = kBlockSize;
    options.kv_dtype = dtype;
    runner = std::make_unique<CpuModelRunner>(*weights, options);
  }
  std::unique_ptr<ModelWeights> weights;
  std::unique_ptr<CpuModelRunner> runner;
};

std::vector<int32_t> Prompt(int vocab) {
  std::vector<int32_t> tokens(kPromptTokens);
  uint64_t x = 12345;
  for (int32_t& t : tokens) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    t = static_cast<int32_t>((x >> 33) % vocab);
  }
  return tokens;
}

std::vector<float> Prefill(CpuModelRunner& runner, const std::vector<int32_t>& prompt,
                           const std::vector<int32_t>& blocks) {
  ForwardSeq seq;
  seq.tokens = prompt;
  seq.start_pos = 0;
  seq.block_table = blocks;
  seq.compute_logits = true;
  std::vector<float> logits;
  EXPECT_TRUE(runner.Forward({seq}, &logits).ok());
  return logits;
}

struct Decoded {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // per step [vocab]
};

// Greedy decoding of kDecodeTokens after the prompt, starting from `first`.
Decoded Decode(CpuModelRunner& runner, int32_t first, const std::vector<int32_t>& blocks) {
  Decoded out;
  int32_t token = first;
  for (int i = 0; i < kDecodeTokens; ++i) {
    const int32_t fed[1] = {token};
    ForwardSeq seq;
    seq.tokens = fed;
    seq.start_pos = kPromptTokens + i;
    seq.block_table = blocks;
    seq.compute_logits = true;
    std::vector<float> logits;
    EXPECT_TRUE(runner.Forward({seq}, &logits).ok());
    token = ArgMax(logits);
    out.tokens.push_back(token);
    out.logits.push_back(std::move(logits));
  }
  return out;
}

bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// One sequence's KV: its blocks on the prefill runner, the blocks it goes into on the
// decode runner, its token count.
struct Move {
  std::vector<int32_t> sent;
  std::vector<int32_t> into;
  int64_t tokens;
};

// Runs `moves` in order over one sender/receiver pair (the sender in its own thread) and
// checks every layer arrived byte for byte.
void TransferAll(Worker& prefill, Worker& decode, LayerSender& sender, LayerReceiver& receiver,
                 const std::vector<Move>& moves) {
  std::thread sender_thread([&] {
    for (const Move& m : moves) {
      ASSERT_TRUE(sender.Begin(m.sent, m.tokens).ok());
      ASSERT_TRUE(sender.SendRemainingLayers(In(absl::Seconds(10))).ok());
    }
  });
  for (size_t t = 0; t < moves.size(); ++t) {
    const Move& m = moves[t];
    const bool received = receiver.Begin(m.into, m.tokens).ok() &&
                          receiver.RecvRemainingLayers(In(absl::Seconds(10))).ok();
    EXPECT_TRUE(received) << "transfer " << t;
    if (!received) break;  // the sender fails at its deadline; join it below
    for (int l = 0; l < prefill.runner->config().n_layers; ++l) {
      std::vector<uint8_t> a(prefill.runner->KvLayerBytes(m.sent.size())), b(a.size());
      ASSERT_TRUE(prefill.runner->ReadKvLayer(l, m.sent, a.data()).ok());
      ASSERT_TRUE(decode.runner->ReadKvLayer(l, m.into, b.data()).ok());
      EXPECT_TRUE(a == b) << "transfer " << t << " layer " << l;
    }
  }
  sender_thread.join();
}

TEST(LayerTransferTest, DisaggregatedDecodeMatchesLocalDecodeBitForBit) {
  const ModelConfig config = *ModelConfig::Preset("tiny");
  Worker prefill(config), decode(config), cold(config);
  const KvLayout layout = KvLayout::For(config, kBlockSize, KvDtype::kF16);
  const std::vector<int32_t> prompt = Prompt(config.vocab_size);
  // 4 blocks of 16 hold the prompt and the decoded tokens; different ids on each side.
  const std::vector<int32_t> prefill_blocks = {0, 1, 2, 3};
  const std::vector<int32_t> decode_blocks = {37, 5, 60, 12};

  const std::vector<float> prompt_logits = Prefill(*prefill.runner, prompt, prefill_blocks);
  const int32_t first = ArgMax(prompt_logits);

  TransportPair pair = Connected();
  std::thread sender_thread([&] {
    auto sender =
        LayerSender::Create(prefill.runner.get(), layout, layout, pair.prefill_side.get());
    ASSERT_TRUE(sender.ok()) << sender.status();
    ASSERT_TRUE((*sender)->Begin(prefill_blocks, kPromptTokens).ok());
    for (int l = 0; l < config.n_layers; ++l) {
      ASSERT_TRUE((*sender)->SendLayer(l, In(absl::Seconds(10))).ok()) << l;
    }
    EXPECT_TRUE((*sender)->done());
  });
  auto receiver =
      LayerReceiver::Create(decode.runner.get(), layout, layout, pair.decode_side.get());
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  ASSERT_TRUE((*receiver)->Begin(decode_blocks, kPromptTokens).ok());
  EXPECT_EQ((*receiver)->layer_bytes(), 4 * layout.LayerBlockBytes());
  for (int l = 0; l < config.n_layers; ++l) {
    ASSERT_TRUE((*receiver)->RecvLayer(l, In(absl::Seconds(10))).ok()) << l;
  }
  EXPECT_TRUE((*receiver)->done());
  sender_thread.join();

  // The cache contents match, layer by layer.
  for (int l = 0; l < config.n_layers; ++l) {
    std::vector<uint8_t> a(prefill.runner->KvLayerBytes(4)), b(a.size());
    ASSERT_TRUE(prefill.runner->ReadKvLayer(l, prefill_blocks, a.data()).ok());
    ASSERT_TRUE(decode.runner->ReadKvLayer(l, decode_blocks, b.data()).ok());
    EXPECT_TRUE(a == b) << "layer " << l;
  }

  const Decoded local = Decode(*prefill.runner, first, prefill_blocks);
  const Decoded remote = Decode(*decode.runner, first, decode_blocks);
  EXPECT_EQ(remote.tokens, local.tokens);
  for (int i = 0; i < kDecodeTokens; ++i) {
    EXPECT_TRUE(BitIdentical(remote.logits[i], local.logits[i])) << "step " << i;
  }
  // Not vacuous: without the prompt's KV the same runner setup decodes something else.
  const Decoded without_kv = Decode(*cold.runner, first, decode_blocks);
  EXPECT_FALSE(BitIdentical(without_kv.logits[0], local.logits[0]));
}

// Two workers of the tiny model over a TCP pair, the prompt prefilled into blocks 0-3 of
// the first.
struct PrefilledPair {
  PrefilledPair()
      : config(*ModelConfig::Preset("tiny")),
        prefill(config),
        decode(config),
        layout(KvLayout::For(config, kBlockSize, KvDtype::kF16)),
        pair(Connected()) {
    Prefill(*prefill.runner, Prompt(config.vocab_size), {0, 1, 2, 3});
  }
  const ModelConfig config;
  Worker prefill, decode;
  const KvLayout layout;
  TransportPair pair;
};

TEST(LayerTransferTest, ReusesStagingAcrossTransfers) {
  PrefilledPair w;
  auto sender = LayerSender::Create(w.prefill.runner.get(), w.layout, w.layout,
                                    w.pair.prefill_side.get());
  auto receiver = LayerReceiver::Create(w.decode.runner.get(), w.layout, w.layout,
                                        w.pair.decode_side.get());
  ASSERT_TRUE(sender.ok() && receiver.ok());
  // Three transfers of shrinking sequences over one channel.
  TransferAll(w.prefill, w.decode, **sender, **receiver,
              {{{0, 1, 2, 3}, {9, 8, 7, 6}, 50}, {{1, 2}, {20, 21}, 20}, {{3}, {40}, 16}});
}

// Host memory from malloc, counted: what a pinned-memory allocator is to a GPU runner.
class CountingHostAllocator : public StagingAllocator {
 public:
  explicit CountingHostAllocator(MemoryKind claims = MemoryKind::kHost) : claims_(claims) {}
  MemoryKind memory() const override { return claims_; }
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    ++allocations;
    ++live;
    return std::malloc(static_cast<size_t>(bytes));
  }
  void Free(void* ptr) override {
    --live;
    std::free(ptr);
  }
  int allocations = 0;
  int live = 0;

 private:
  const MemoryKind claims_;
};

TEST(LayerTransferTest, StagesInTheAllocatorsMemoryWhenGivenOne) {
  PrefilledPair w;
  Worker& prefill = w.prefill;
  Worker& decode = w.decode;
  const KvLayout& layout = w.layout;
  TransportPair& pair = w.pair;
  CountingHostAllocator sender_memory, receiver_memory;
  {
    LayerTransferOptions sender_options, receiver_options;
    sender_options.staging_allocator = &sender_memory;
    receiver_options.staging_allocator = &receiver_memory;
    auto sender = LayerSender::Create(prefill.runner.get(), layout, layout,
                                      pair.prefill_side.get(), sender_options);
    auto receiver = LayerReceiver::Create(decode.runner.get(), layout, layout,
                                          pair.decode_side.get(), receiver_options);
    ASSERT_TRUE(sender.ok() && receiver.ok());
    // A small transfer, then a larger one: both fit the first (1 MiB) buffer.
    TransferAll(prefill, decode, **sender, **receiver,
                {{{2}, {30}, 16}, {{0, 1, 2, 3}, {9, 8, 7, 6}, 50}});
    EXPECT_EQ(sender_memory.allocations, 1);
    EXPECT_EQ(receiver_memory.allocations, 1);
  }
  // Freed with the sender and the receiver.
  EXPECT_EQ(sender_memory.live, 0);
  EXPECT_EQ(receiver_memory.live, 0);

  // Device memory for a host transport (or none for a device one) is refused up front.
  CountingHostAllocator device_claim(MemoryKind::kDevice);
  LayerTransferOptions wrong;
  wrong.staging_allocator = &device_claim;
  auto refused =
      LayerSender::Create(prefill.runner.get(), layout, layout, pair.prefill_side.get(), wrong);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("host memory"));
  EXPECT_EQ(device_claim.allocations, 0);
}

TEST(LayerTransferTest, AllocatedStagingGrowsByPowersOfTwo) {
  CountingHostAllocator memory;
  {
    KvStagingBuffer buffer(&memory);
    absl::StatusOr<void*> first = buffer.Reserve(100);
    ASSERT_TRUE(first.ok());
    EXPECT_EQ(buffer.capacity(), int64_t{1} << 20);
    absl::StatusOr<void*> same = buffer.Reserve(int64_t{1} << 20);
    ASSERT_TRUE(same.ok());
    EXPECT_EQ(*same, *first);
    ASSERT_TRUE(buffer.Reserve((int64_t{3} << 20) + 1).ok());
    EXPECT_EQ(buffer.capacity(), int64_t{4} << 20);
    ASSERT_TRUE(buffer.Reserve(int64_t{4} << 20).ok());
    EXPECT_EQ(memory.allocations, 2);
    EXPECT_EQ(memory.live, 1);
  }
  EXPECT_EQ(memory.live, 0);
}

TEST(LayerTransferTest, RefusesMismatchedLayouts) {
  const ModelConfig config = *ModelConfig::Preset("tiny");
  Worker decode(config);
  TransportPair pair = Connected();
  const KvLayout layout = KvLayout::For(config, kBlockSize, KvDtype::kF16);

  KvLayout peer = layout;
  peer.n_kv_heads = 8;
  auto receiver = LayerReceiver::Create(decode.runner.get(), layout, peer, pair.decode_side.get());
  EXPECT_EQ(receiver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(receiver.status().message(), "KV layout mismatch: n_kv_heads 2 here, 8 at the peer");

  peer = layout;
  peer.block_size = 32;
  auto sender = LayerSender::Create(decode.runner.get(), layout, peer, pair.prefill_side.get());
  EXPECT_EQ(sender.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(sender.status().message()), HasSubstr("block_size 16 here, 32"));

  // A layout that does not describe the runner's own cache (f32 layout, f16 cache).
  const KvLayout f32 = KvLayout::For(config, kBlockSize, KvDtype::kF32);
  receiver = LayerReceiver::Create(decode.runner.get(), f32, f32, pair.decode_side.get());
  EXPECT_EQ(receiver.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(receiver.status().message()), HasSubstr("runner's cache"));

  // Block counts that do not fit the token count.
  receiver = LayerReceiver::Create(decode.runner.get(), layout, layout, pair.decode_side.get());
  ASSERT_TRUE(receiver.ok());
  EXPECT_EQ((*receiver)->Begin({1, 2, 3}, 50).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*receiver)->Begin({1, 2, 3, 64}, 50).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*receiver)->RecvLayer(0, In(absl::Seconds(1))).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*receiver)->Begin({1, 2, 3, 4}, 50).ok());
  EXPECT_EQ((*receiver)->RecvLayer(1, In(absl::Seconds(1))).code(),
            absl::StatusCode::kFailedPrecondition);  // layer 0 comes first
}

TEST(LayerTransferTest, TransportClosedMidTransferFailsFastAndBlocksCanBeFreed) {
  const ModelConfig config = *ModelConfig::Preset("tiny");
  ASSERT_GE(config.n_layers, 2);
  Worker prefill(config), decode(config);
  const KvLayout layout = KvLayout::For(config, kBlockSize, KvDtype::kF16);
  const std::vector<int32_t> prefill_blocks = {0, 1, 2, 3};
  Prefill(*prefill.runner, Prompt(config.vocab_size), prefill_blocks);

  // The decode side reserves the prompt's blocks as the decode worker would.
  KvCacheOptions kv_options;
  kv_options.num_blocks = decode.runner->num_kv_blocks();
  kv_options.block_size = kBlockSize;
  kv_options.enable_prefix_caching = false;
  KvCacheManager kv(kv_options);
  constexpr SeqId kSeq = 7;
  ASSERT_TRUE(kv.Allocate(kSeq, kPromptTokens));
  const std::vector<int32_t> decode_blocks = kv.BlockTable(kSeq);

  TransportPair pair = Connected();
  std::thread sender_thread([&] {
    auto sender =
        LayerSender::Create(prefill.runner.get(), layout, layout, pair.prefill_side.get());
    ASSERT_TRUE(sender.ok());
    ASSERT_TRUE((*sender)->Begin(prefill_blocks, kPromptTokens).ok());
    ASSERT_TRUE((*sender)->SendLayer(0, In(absl::Seconds(10))).ok());
    absl::SleepFor(absl::Milliseconds(50));
    pair.prefill_side->Close();  // the prefill worker dies mid-transfer
  });
  auto receiver =
      LayerReceiver::Create(decode.runner.get(), layout, layout, pair.decode_side.get());
  ASSERT_TRUE(receiver.ok());
  ASSERT_TRUE((*receiver)->Begin(decode_blocks, kPromptTokens).ok());
  ASSERT_TRUE((*receiver)->RecvLayer(0, In(absl::Seconds(10))).ok());
  const absl::Time start = absl::Now();
  absl::Status s = (*receiver)->RecvLayer(1, In(absl::Seconds(30)));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_FALSE((*receiver)->done());
  sender_thread.join();
  // The transfer is over; the blocks go back to the pool.
  EXPECT_EQ((*receiver)->RecvLayer(1, In(absl::Seconds(1))).code(),
            absl::StatusCode::kFailedPrecondition);
  kv.Free(kSeq);
  EXPECT_EQ(kv.num_free_blocks(), kv.num_total_blocks());
}

}  // namespace
}  // namespace tandem
