// CudaModelRunner (engine/cuda) against the CPU reference and the golden continuations:
//  (a) synthetic models: last-token logits against CpuModelRunner (exact fp32 matmuls, fp32 KV)
//      over a batch of 4 sequences of different lengths with a chunked continuation, mixed
//      prefill/decode steps and decode steps;
//  (b) the default model (SmolLM2-135M Q4_1, $TANDEM_TEST_MODEL): greedy continuations of the
//      golden prompts (tests/golden/logits_golden.json, $TANDEM_GOLDEN_DIR) and the top-20
//      last-position logits;
//  (c) decode throughput at batch 1 and 64 (printed, not asserted).
// Every test that needs a device skips without one.
//
// Tolerances. The CUDA runner keeps weights, GEMM inputs, q/k/v, the KV cache and attention
// probabilities in bf16 (8 significant bits: each rounding is up to 2^-9 = 0.2% relative) with
// fp32 accumulation and an fp32 residual stream. A dozen such roundings in series give ~1%
// relative error on the synthetic models' logits (0.7-0.9% measured with a host emulation of
// the kernels); the check allows 3% relative L2 per logits row and 5% of the row's largest
// magnitude per element (index or layout bugs give errors of order 10-100%).
// On the 30-layer model the same rounding moves logits of magnitude 20-35 by about 0.1, so a
// greedy continuation may leave the fp32 reference only where the reference's top-1/top-2 gap
// is below kNearTieGap.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/logging.h"
#include "engine/cpu_model_runner.h"
#include "engine/cuda/cuda_model_runner.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/gpu/gpu_test_util.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using nlohmann::json;

constexpr double kMaxRelL2 = 3e-2;
constexpr double kMaxRelElement = 5e-2;
constexpr float kNearTieGap = 0.25f;
constexpr float kMaxTop20Diff = 1.0f;  // sanity bound; bf16 gives ~0.1

// ---- (a) synthetic models against the CPU runner ---------------------------------------

struct SyntheticCase {
  const char* name;
  int hidden;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int ffn_dim;
  int vocab;
  bool tied;
  RopeLayout rope;
  GgmlType type;
};

// The "tiny" preset with head_dim 64/128 (the CUDA attention kernels' sizes).
ModelConfig SyntheticConfig(const SyntheticCase& sc) {
  absl::StatusOr<ModelConfig> preset = ModelConfig::Preset("tiny");
  CHECK_OK(preset.status());
  ModelConfig c = *preset;
  c.name = sc.name;
  c.hidden = sc.hidden;
  c.n_heads = sc.n_heads;
  c.n_kv_heads = sc.n_kv_heads;
  c.head_dim = sc.head_dim;
  c.ffn_dim = sc.ffn_dim;
  c.vocab_size = sc.vocab;
  c.tied_embeddings = sc.tied;
  c.rope_layout = sc.rope;
  CHECK_OK(c.Validate());
  return c;
}

// One sequence's step in the scenario: `n` tokens from the sequence's token stream.
struct Feed {
  int seq;
  int n;
  bool logits;
};

// Compares two logits matrices row by row; returns the worst relative L2 error.
double CompareLogits(const std::vector<float>& got, const std::vector<float>& ref, int vocab,
                     const std::string& where) {
  EXPECT_EQ(got.size(), ref.size()) << where;
  if (got.size() != ref.size()) return 1e9;
  double worst = 0;
  for (size_t r = 0; r * vocab < ref.size(); ++r) {
    double err2 = 0, ref2 = 0, max_ref = 0, max_err = 0;
    for (int i = 0; i < vocab; ++i) {
      const double g = got[r * vocab + i], c = ref[r * vocab + i];
      err2 += (g - c) * (g - c);
      ref2 += c * c;
      max_ref = std::max(max_ref, std::fabs(c));
      max_err = std::max(max_err, std::fabs(g - c));
    }
    const double rel_l2 = std::sqrt(err2 / std::max(ref2, 1e-30));
    worst = std::max(worst, rel_l2);
    EXPECT_LT(rel_l2, kMaxRelL2) << where << " row " << r;
    EXPECT_LE(max_err, kMaxRelElement * max_ref) << where << " row " << r;
    EXPECT_TRUE(std::isfinite(rel_l2)) << where << " row " << r;
  }
  return worst;
}

class CudaSyntheticTest : public ::testing::TestWithParam<SyntheticCase> {};

TEST_P(CudaSyntheticTest, LogitsMatchCpuRunner) {
  SKIP_WITHOUT_GPU();
  const SyntheticCase& sc = GetParam();
  const ModelConfig config = SyntheticConfig(sc);
  std::unique_ptr<ModelWeights> weights = ModelWeights::Synthetic(config, sc.type, 1234);

  constexpr int kBlockSize = 16;
  constexpr int kBlocksPerSeq = 8;  // 128 positions per sequence
  constexpr int kNumBlocks = 64;
  CpuModelRunnerOptions cpu_options;
  cpu_options.num_threads = 2;
  cpu_options.num_kv_blocks = kNumBlocks;
  cpu_options.block_size = kBlockSize;
  cpu_options.kv_dtype = KvDtype::kF32;
  cpu_options.exact_matmul = true;
  CpuModelRunner cpu(*weights, cpu_options);
  // Two CUDA runners: one-token sequences through the decode kernel (the default), and
  // everything through the prefill kernel (tells a decode-kernel fault from the rest).
  CudaModelRunnerOptions cuda_options;
  cuda_options.num_kv_blocks = kNumBlocks;
  cuda_options.block_size = kBlockSize;
  auto gpu = CudaModelRunner::Create(*weights, cuda_options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  // The decode steps without CUDA graphs (the eager path): the same kernels on the same
  // shapes, so the logits must be bitwise identical to `gpu`'s (every decode step here has
  // 1, 2 or 4 sequences, all with logits: no padding).
  cuda_options.use_cuda_graphs = false;
  auto gpu_eager = CudaModelRunner::Create(*weights, cuda_options);
  ASSERT_TRUE(gpu_eager.ok()) << gpu_eager.status();
  cuda_options.use_cuda_graphs = true;
  cuda_options.decode_kernel = false;
  auto gpu_prefill_only = CudaModelRunner::Create(*weights, cuda_options);
  ASSERT_TRUE(gpu_prefill_only.ok()) << gpu_prefill_only.status();

  // Four sequences; sequence i owns blocks perm[i * 8, (i + 1) * 8) (shuffled: the cache is
  // really paged). Token streams are random ids, fed identically to both runners.
  std::mt19937 rng(42);
  std::vector<int32_t> perm(kNumBlocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  constexpr int kSeqs = 4;
  std::vector<std::vector<int32_t>> tables(kSeqs), streams(kSeqs);
  std::uniform_int_distribution<int32_t> token(0, config.vocab_size - 1);
  for (int i = 0; i < kSeqs; ++i) {
    tables[i].assign(perm.begin() + i * kBlocksPerSeq, perm.begin() + (i + 1) * kBlocksPerSeq);
    streams[i].resize(kBlocksPerSeq * kBlockSize);
    for (int32_t& t : streams[i]) t = token(rng);
  }
  std::vector<int> fed(kSeqs, 0);

  // Prompts 70 (two query tiles), 5 and 1 tokens, a 20-token first chunk without logits, in
  // a scrambled order; then the chunk's 30-token continuation (start_pos 20) beside decode
  // steps; a 3-token continuation; decode steps, one without logits.
  const std::vector<std::vector<Feed>> steps = {
      {{3, 20, false}, {0, 70, true}, {2, 1, true}, {1, 5, true}},
      {{0, 1, true}, {3, 30, true}, {1, 1, true}, {2, 1, true}},
      {{0, 1, true}, {1, 1, true}, {2, 1, true}, {3, 1, true}},
      {{2, 1, false}, {1, 3, true}, {0, 1, true}, {3, 1, true}},
      {{0, 1, true}, {1, 1, true}, {2, 1, true}, {3, 1, true}},
      {{3, 1, true}, {2, 1, true}, {1, 1, true}, {0, 1, true}},
      {{0, 1, true}},
      {{1, 1, true}, {2, 1, true}},
  };
  double worst = 0, worst_prefill_only = 0;
  float graph_vs_eager = 0;
  for (size_t k = 0; k < steps.size(); ++k) {
    std::vector<ForwardSeq> batch;
    for (const Feed& f : steps[k]) {
      ForwardSeq s;
      s.tokens = absl::MakeConstSpan(streams[f.seq].data() + fed[f.seq], f.n);
      s.start_pos = fed[f.seq];
      s.block_table = tables[f.seq];
      s.compute_logits = f.logits;
      batch.push_back(s);
    }
    std::vector<float> ref, got, got_prefill_only;
    ASSERT_TRUE(cpu.Forward(batch, &ref).ok());
    absl::Status status = (*gpu)->Forward(batch, &got);
    ASSERT_TRUE(status.ok()) << status;
    status = (*gpu_prefill_only)->Forward(batch, &got_prefill_only);
    ASSERT_TRUE(status.ok()) << status;
    std::vector<float> got_eager;
    status = (*gpu_eager)->Forward(batch, &got_eager);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_EQ(got_eager.size(), got.size());
    size_t bit_diffs = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::memcmp(&got[i], &got_eager[i], sizeof(float)) != 0) ++bit_diffs;
      graph_vs_eager = std::max(graph_vs_eager, std::fabs(got[i] - got_eager[i]));
    }
    EXPECT_EQ(bit_diffs, 0u) << sc.name << " step " << k
                             << ": graph and eager logits differ (max |diff| " << graph_vs_eager
                             << ")";
    const std::string where = std::string(sc.name) + " step " + std::to_string(k);
    worst = std::max(worst, CompareLogits(got, ref, config.vocab_size, where));
    worst_prefill_only = std::max(
        worst_prefill_only,
        CompareLogits(got_prefill_only, ref, config.vocab_size, where + " (prefill kernel only)"));
    for (const Feed& f : steps[k]) fed[f.seq] += f.n;
  }
  std::printf(
      "[ synth    ] %-20s %-4s weights: worst logits rel L2 error %.2e (prefill kernel only: "
      "%.2e) over %zu steps\n",
      sc.name, GgmlTypeName(sc.type).c_str(), worst, worst_prefill_only, steps.size());
  const auto& gs = (*gpu)->graph_stats();
  std::printf(
      "[ graphs   ] %-20s decode steps as CUDA graphs: %lld (captures %lld, instantiates %lld, "
      "updates %lld); max |graph - eager| logit %.3g\n",
      sc.name, static_cast<long long>(gs.launches), static_cast<long long>(gs.captures),
      static_cast<long long>(gs.instantiates), static_cast<long long>(gs.updates), graph_vs_eager);
  // One-token steps with the decode kernel: 2, 4, 5 (batch 4), 6 (batch 1), 7 (batch 2); the
  // others mix in longer feeds and run eagerly.
  EXPECT_EQ(gs.launches, 5);
  EXPECT_EQ(gs.captures, 3);  // buckets 4, 1, 2; contexts stay within one 64-token granule
  EXPECT_EQ((*gpu_eager)->graph_stats().launches, 0);
  EXPECT_EQ((*gpu_prefill_only)->graph_stats().launches, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Models, CudaSyntheticTest,
    ::testing::Values(SyntheticCase{"tiny_d64_g2", 256, 4, 2, 64, 512, 512, false,
                                    RopeLayout::kAdjacentPairs, GgmlType::kF32},
                      SyntheticCase{"tiny_d64_g3_tied_hf", 384, 6, 2, 64, 768, 1024, true,
                                    RopeLayout::kHalfSplit, GgmlType::kQ4_1},
                      SyntheticCase{"tiny_d128_g4", 512, 4, 1, 128, 1024, 640, false,
                                    RopeLayout::kAdjacentPairs, GgmlType::kQ8_0}),
    [](const ::testing::TestParamInfo<SyntheticCase>& info) { return info.param.name; });

TEST(CudaModelRunnerTest, RejectsUnsupportedHeadDim) {
  // The tiny preset's head_dim 32 is not a size of the attention kernels; checked before any
  // device work, so this runs without a GPU.
  absl::StatusOr<ModelConfig> tiny = ModelConfig::Preset("tiny");
  ASSERT_TRUE(tiny.ok());
  std::unique_ptr<ModelWeights> weights = ModelWeights::Synthetic(*tiny, GgmlType::kF32, 1);
  auto runner = CudaModelRunner::Create(*weights, CudaModelRunnerOptions{});
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kFailedPrecondition) << runner.status();
}

TEST(CudaModelRunnerTest, RejectsBadBatches) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = SyntheticConfig(
      {"tiny_d64", 256, 4, 2, 64, 512, 512, false, RopeLayout::kAdjacentPairs, GgmlType::kF32});
  std::unique_ptr<ModelWeights> weights = ModelWeights::Synthetic(config, GgmlType::kF32, 7);
  CudaModelRunnerOptions options;
  options.num_kv_blocks = 8;
  auto runner = CudaModelRunner::Create(*weights, options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  const std::vector<int32_t> tokens = {1, 2, 3};
  const std::vector<int32_t> bad_tokens = {1, 512, 3};
  const std::vector<int32_t> table = {0};
  const std::vector<int32_t> bad_table = {8};
  std::vector<float> logits;
  auto run = [&](absl::Span<const int32_t> t, int32_t start, absl::Span<const int32_t> bt) {
    ForwardSeq s;
    s.tokens = t;
    s.start_pos = start;
    s.block_table = bt;
    s.compute_logits = true;
    return (*runner)->Forward({s}, &logits).code();
  };
  EXPECT_EQ(run(bad_tokens, 0, table), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(tokens, 0, bad_table), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(tokens, 15, table), absl::StatusCode::kInvalidArgument);  // needs 2 blocks
  EXPECT_EQ(run(tokens, -1, table), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({}, 0, table), absl::StatusCode::kInvalidArgument);
  // The runner still works after rejected batches.
  EXPECT_EQ(run(tokens, 0, table), absl::StatusCode::kOk);
  EXPECT_EQ(logits.size(), static_cast<size_t>(config.vocab_size));
}

// Decode steps through CUDA graphs against the eager path over a growing context (graphs
// re-captured or updated as the context crosses 64-token granules), every batch size 1-5
// (3 and 5 padded to buckets 4 and 8), a step with a sequence without logits, and
// ForwardGreedy on graph replays. Unpadded steps with logits for every sequence run the same
// kernels on the same shapes: bitwise-identical logits. Padded steps change GEMM and attention
// shapes: close logits (bf16-level), not bitwise.
TEST(CudaGraphsTest, GraphDecodeMatchesEager) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = SyntheticConfig({"tiny_d128_g4", 512, 4, 1, 128, 1024, 640, false,
                                              RopeLayout::kAdjacentPairs, GgmlType::kQ8_0});
  std::unique_ptr<ModelWeights> weights = ModelWeights::Synthetic(config, GgmlType::kQ8_0, 99);
  constexpr int kBlockSize = 16;
  constexpr int kBlocksPerSeq = 16;  // 256 positions
  constexpr int kSeqs = 5;
  CudaModelRunnerOptions options;
  options.block_size = kBlockSize;
  options.num_kv_blocks = kSeqs * kBlocksPerSeq;
  auto graphed = CudaModelRunner::Create(*weights, options);
  ASSERT_TRUE(graphed.ok()) << graphed.status();
  options.use_cuda_graphs = false;
  auto eager = CudaModelRunner::Create(*weights, options);
  ASSERT_TRUE(eager.ok()) << eager.status();

  std::mt19937 rng(5);
  std::vector<int32_t> perm(options.num_kv_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::uniform_int_distribution<int32_t> token(0, config.vocab_size - 1);
  std::vector<std::vector<int32_t>> tables(kSeqs), streams(kSeqs);
  for (int i = 0; i < kSeqs; ++i) {
    tables[i].assign(perm.begin() + i * kBlocksPerSeq, perm.begin() + (i + 1) * kBlocksPerSeq);
    streams[i].resize(kBlocksPerSeq * kBlockSize);
    for (int32_t& t : streams[i]) t = token(rng);
  }
  // Prompts of 60, 3, 17, 33 and 50 tokens in one (eager) step.
  std::vector<int> fed = {0, 0, 0, 0, 0};
  const std::vector<int> prompt = {60, 3, 17, 33, 50};
  auto make_batch = [&](const std::vector<int>& who, const std::vector<int>& n,
                        const std::vector<bool>& logits) {
    std::vector<ForwardSeq> batch;
    for (size_t j = 0; j < who.size(); ++j) {
      ForwardSeq s;
      s.tokens = absl::MakeConstSpan(streams[who[j]].data() + fed[who[j]], n[j]);
      s.start_pos = fed[who[j]];
      s.block_table = tables[who[j]];
      s.compute_logits = logits[j];
      batch.push_back(s);
    }
    return batch;
  };
  {
    const auto batch = make_batch({0, 1, 2, 3, 4}, prompt, std::vector<bool>(kSeqs, true));
    std::vector<float> a, b;
    ASSERT_TRUE((*graphed)->Forward(batch, &a).ok());
    ASSERT_TRUE((*eager)->Forward(batch, &b).ok());
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
        << "the same eager prefill on two runners differs";
    for (int i = 0; i < kSeqs; ++i) fed[i] += prompt[i];
  }
  ASSERT_EQ((*graphed)->graph_stats().launches, 0);

  std::vector<int32_t> all_blocks(options.num_kv_blocks);
  std::iota(all_blocks.begin(), all_blocks.end(), 0);
  void* kv_buf = nullptr;
  ASSERT_EQ(cudaMalloc(&kv_buf, (*eager)->KvLayerBytes(options.num_kv_blocks)), cudaSuccess);
  // Copies the eager runner's whole cache into the graph runner's (identical states).
  auto sync_kv = [&]() {
    for (int l = 0; l < config.n_layers; ++l) {
      if (!(*eager)->ReadKvLayer(l, all_blocks, kv_buf).ok()) return false;
      if (!(*graphed)->WriteKvLayer(l, all_blocks, kv_buf).ok()) return false;
    }
    return true;
  };
  ASSERT_TRUE(sync_kv());
  // 120 decode steps: the batch cycles through sizes 5, 4, 3, 2, 1 (sequences rotate), so
  // the longest context grows from 61 to ~180 (granules 64, 128, 192).
  double worst_padded_rel = 0;
  int bitwise_steps = 0, padded_steps = 0, greedy_checks = 0;
  for (int step = 0; step < 120; ++step) {
    const int size = 5 - step % 5;
    std::vector<int> who;
    for (int j = 0; j < size; ++j) who.push_back((step + j) % kSeqs);
    std::vector<bool> logits(size, true);
    const bool no_logits_row = step % 7 == 3 && size > 1;
    if (no_logits_row) logits[size / 2] = false;
    const auto batch = make_batch(who, std::vector<int>(size, 1), logits);
    std::vector<float> a, b;
    absl::Status status = (*graphed)->Forward(batch, &a);
    ASSERT_TRUE(status.ok()) << "step " << step << ": " << status;
    status = (*eager)->Forward(batch, &b);
    ASSERT_TRUE(status.ok()) << "step " << step << ": " << status;
    ASSERT_EQ(a.size(), b.size()) << "step " << step;
    if (step % 4 == 1) {
      // The same step again through ForwardGreedy (rewrites identical KV): the graph's
      // argmax must pick each row's first maximum of the logits just returned.
      std::vector<int32_t> tokens;
      status = (*graphed)->ForwardGreedy(batch, &tokens);
      ASSERT_TRUE(status.ok()) << status;
      int row = 0;
      ASSERT_EQ(tokens.size() * config.vocab_size, a.size());
      for (const int32_t t : tokens) {
        const float* lg = a.data() + static_cast<size_t>(row++) * config.vocab_size;
        EXPECT_EQ(t, std::max_element(lg, lg + config.vocab_size) - lg) << "step " << step;
      }
      ++greedy_checks;
    }
    const bool exact = (size & (size - 1)) == 0 && !no_logits_row;
    if (exact) {
      ++bitwise_steps;
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
          << "step " << step << " batch " << size << ": graph logits differ from eager";
    } else {
      ++padded_steps;
      worst_padded_rel = std::max(
          worst_padded_rel,
          CompareLogits(a, b, config.vocab_size, "graph vs eager step " + std::to_string(step)));
      // Other GEMM shapes may round the new K/V differently: copy the eager runner's cache
      // over so that later unpadded steps start from identical states again.
      ASSERT_TRUE(sync_kv()) << "step " << step;
    }
    for (int w : who) fed[w] += 1;
  }
  const auto& gs = (*graphed)->graph_stats();
  std::printf(
      "[ graphs   ] 120 decode steps (batch 1-5, context to %d): %d bitwise identical to eager, "
      "%d padded (worst rel L2 vs eager %.2e), %d greedy replays; graphs launched %lld, "
      "captured %lld (instantiated %lld, updated in place %lld)\n",
      *std::max_element(fed.begin(), fed.end()), bitwise_steps, padded_steps, worst_padded_rel,
      greedy_checks, static_cast<long long>(gs.launches), static_cast<long long>(gs.captures),
      static_cast<long long>(gs.instantiates), static_cast<long long>(gs.updates));
  cudaFree(kv_buf);
  EXPECT_EQ(gs.launches, 120 + greedy_checks);
  EXPECT_GT(gs.captures, 5);  // 4 buckets (1, 2, 4, 8), then new context granules
  EXPECT_EQ((*eager)->graph_stats().launches, 0);
}

// ReadKvLayer/WriteKvLayer through the gather/scatter kernel against the per-run
// cudaMemcpyAsync path (one runner, the path switched with set_kv_copy_kernel): identical
// bytes for scattered block lists (runs and single blocks), both directions; pinned host
// buffers always take the memcpy path.
TEST(CudaModelRunnerTest, KvCopyKernelMatchesMemcpy) {
  SKIP_WITHOUT_GPU();
  const ModelConfig config = SyntheticConfig(
      {"tiny_d64_g2", 256, 4, 2, 64, 512, 512, false, RopeLayout::kAdjacentPairs, GgmlType::kF32});
  std::unique_ptr<ModelWeights> weights = ModelWeights::Synthetic(config, GgmlType::kF32, 3);
  CudaModelRunnerOptions options;
  options.block_size = 16;
  options.num_kv_blocks = 32;
  auto runner_or = CudaModelRunner::Create(*weights, options);
  ASSERT_TRUE(runner_or.ok()) << runner_or.status();
  CudaModelRunner& runner = **runner_or;

  // KV in the blocks: one 150-token prompt over a scattered table.
  const std::vector<int32_t> table = {7, 8, 9, 3, 20, 21, 0, 31, 12, 13};
  std::vector<int32_t> prompt(150);
  for (int i = 0; i < 150; ++i) prompt[i] = (i * 37 + 11) % config.vocab_size;
  ForwardSeq s;
  s.tokens = prompt;
  s.start_pos = 0;
  s.block_table = table;
  s.compute_logits = true;
  std::vector<float> logits;
  ASSERT_TRUE(runner.Forward({s}, &logits).ok());

  const std::vector<int32_t> blocks = {8, 9, 3, 31, 20, 21, 7, 0, 12};
  const int64_t bytes = runner.KvLayerBytes(static_cast<int64_t>(blocks.size()));
  void* dev_a = nullptr;
  void* dev_b = nullptr;
  void* host = nullptr;
  ASSERT_EQ(cudaMalloc(&dev_a, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dev_b, bytes), cudaSuccess);
  ASSERT_EQ(cudaHostAlloc(&host, bytes, cudaHostAllocDefault), cudaSuccess);
  std::vector<uint8_t> a(bytes), b(bytes), c(bytes), src(bytes);
  auto to_host = [&](const void* dev, std::vector<uint8_t>* out) {
    return cudaMemcpy(out->data(), dev, out->size(), cudaMemcpyDeviceToHost) == cudaSuccess;
  };
  for (int l = 0; l < config.n_layers; ++l) {
    runner.set_kv_copy_kernel(true);
    ASSERT_TRUE(runner.ReadKvLayer(l, blocks, dev_a).ok());
    ASSERT_TRUE(runner.ReadKvLayer(l, blocks, host).ok());  // pinned: memcpy path
    runner.set_kv_copy_kernel(false);
    ASSERT_TRUE(runner.ReadKvLayer(l, blocks, dev_b).ok());
    ASSERT_TRUE(to_host(dev_a, &a) && to_host(dev_b, &b));
    std::memcpy(c.data(), host, bytes);
    EXPECT_EQ(a, b) << "layer " << l << ": gather kernel and memcpy reads differ";
    EXPECT_EQ(a, c) << "layer " << l;
    EXPECT_TRUE(std::any_of(a.begin(), a.end(), [](uint8_t v) { return v != 0; }));
  }
  // Scatter random bytes with one path, read them back with the other, both ways round.
  std::mt19937 rng(11);
  const int layer = config.n_layers - 1;
  for (const bool kernel_writes : {true, false}) {
    for (uint8_t& v : src) v = static_cast<uint8_t>(rng());
    ASSERT_EQ(cudaMemcpy(dev_a, src.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    runner.set_kv_copy_kernel(kernel_writes);
    ASSERT_TRUE(runner.WriteKvLayer(layer, blocks, dev_a).ok());
    runner.set_kv_copy_kernel(!kernel_writes);
    ASSERT_TRUE(runner.ReadKvLayer(layer, blocks, dev_b).ok());
    ASSERT_TRUE(to_host(dev_b, &b));
    EXPECT_EQ(b, src) << (kernel_writes ? "scatter kernel" : "memcpy scatter");
  }
  // The block the writes did not touch still holds the prompt's KV (positions 144-149).
  runner.set_kv_copy_kernel(true);
  ASSERT_TRUE(runner.ReadKvLayer(layer, {13}, dev_a).ok());
  runner.set_kv_copy_kernel(false);
  ASSERT_TRUE(runner.ReadKvLayer(layer, {13}, dev_b).ok());
  std::vector<uint8_t> ua(runner.KvLayerBytes(1)), ub(runner.KvLayerBytes(1));
  ASSERT_TRUE(to_host(dev_a, &ua) && to_host(dev_b, &ub));
  EXPECT_EQ(ua, ub);
  EXPECT_TRUE(std::any_of(ua.begin(), ua.end(), [](uint8_t v) { return v != 0; }));
  const int64_t kernel_copies = runner.kv_kernel_copies();
  const int64_t memcpy_copies = runner.kv_memcpy_copies();
  // Per layer: 1 kernel read, 2 memcpy reads (pinned, switched off); then 2 + 2; then 1 + 1.
  EXPECT_EQ(kernel_copies, config.n_layers + 2 + 1);
  EXPECT_EQ(memcpy_copies, 2 * config.n_layers + 2 + 1);
  std::printf(
      "[ kvcopy   ] gather/scatter kernel and per-run memcpy: identical bytes over %d "
      "layers x %zu blocks, both directions (kernel copies %lld, memcpy copies %lld)\n",
      config.n_layers, blocks.size(), static_cast<long long>(kernel_copies),
      static_cast<long long>(memcpy_copies));
  cudaFree(dev_a);
  cudaFree(dev_b);
  cudaFreeHost(host);
}

// ---- (b) the default model against the golden continuations ------------------------------

std::string GoldenPath() {
  const char* dir = std::getenv("TANDEM_GOLDEN_DIR");
  const std::string base =
      dir != nullptr && *dir != '\0' ? dir : ::tandem::testing::SourceDir() + "/tests/golden";
  return base + "/logits_golden.json";
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadDefaultModel() {
  const std::string path = ::tandem::testing::DefaultModelPath();
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError("default model not found at " + path +
                               " (set TANDEM_TEST_MODEL or run `tandem model pull`)");
  }
  return ModelWeights::LoadGguf(path);
}

struct PromptResult {
  std::string name;
  std::vector<int32_t> golden;
  std::vector<float> gaps;
  std::vector<int32_t> ours;
  int diverged_at = -1;  // -1: identical
  float top20_worst = 0;
};

struct GoldenRun {
  const char* mode = "";
  absl::Status status;
  std::vector<PromptResult> prompts;
  float top20_worst = 0;
};

int32_t Argmax(const float* row, int n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// Greedy continuations of every golden prompt, all prompts in one batch: step 0 prefills
// them together (the longest in two chunks, the second fed beside the others' first decode
// step), then every step decodes one token for each unfinished prompt. `decode_kernel`:
// one-token steps through the decode kernel (the default) or the prefill kernel.
GoldenRun RunGolden(bool decode_kernel, bool cuda_graphs = true) {
  GoldenRun run;
  run.mode = !decode_kernel ? "prefill-kernel-only" : cuda_graphs ? "default" : "no-cuda-graphs";
  std::ifstream in(GoldenPath());
  if (!in) {
    run.status = absl::NotFoundError("cannot read " + GoldenPath());
    return run;
  }
  const json golden = json::parse(in);
  auto weights = LoadDefaultModel();
  if (!weights.ok()) {
    run.status = weights.status();
    return run;
  }
  const ModelConfig& c = (*weights)->config();
  CudaModelRunnerOptions options;
  options.block_size = 16;
  constexpr int kBlocksPerSeq = 24;  // 384 positions: the longest prompt is 226 + 32
  const int n_prompts = static_cast<int>(golden["prompts"].size());
  options.num_kv_blocks = kBlocksPerSeq * n_prompts;
  options.decode_kernel = decode_kernel;
  options.use_cuda_graphs = cuda_graphs;
  auto runner = CudaModelRunner::Create(**weights, options);
  if (!runner.ok()) {
    run.status = runner.status();
    return run;
  }

  struct Live {
    std::vector<int32_t> prompt;
    std::vector<int32_t> table;
    int fed = 0;  // positions in the cache
    size_t want = 0;
  };
  std::vector<Live> live(n_prompts);
  constexpr int kChunk = 128;  // longer prompts are prefilled in chunks
  for (int i = 0; i < n_prompts; ++i) {
    const json& p = golden["prompts"][i];
    PromptResult r;
    r.name = p["name"].get<std::string>();
    r.golden = p["greedy"]["ids"].get<std::vector<int32_t>>();
    r.gaps = p["greedy"]["top1_top2_gap"].get<std::vector<float>>();
    run.prompts.push_back(r);
    live[i].prompt = p["prompt_ids"].get<std::vector<int32_t>>();
    for (int b = 0; b < kBlocksPerSeq; ++b) live[i].table.push_back(i * kBlocksPerSeq + b);
    live[i].want = r.golden.size();
  }

  std::vector<float> logits;
  for (int step = 0; step < 1000; ++step) {
    std::vector<ForwardSeq> batch;
    std::vector<int> who;
    for (int i = 0; i < n_prompts; ++i) {
      Live& l = live[i];
      PromptResult& r = run.prompts[i];
      if (r.ours.size() >= l.want) continue;
      ForwardSeq s;
      s.start_pos = l.fed;
      s.block_table = l.table;
      s.compute_logits = true;
      const int prompt_len = static_cast<int>(l.prompt.size());
      if (l.fed < prompt_len) {
        const int n = std::min(kChunk, prompt_len - l.fed);
        s.tokens = absl::MakeConstSpan(l.prompt.data() + l.fed, n);
        s.compute_logits = l.fed + n == prompt_len;
      } else {
        s.tokens = absl::MakeConstSpan(&r.ours.back(), 1);
      }
      batch.push_back(s);
      who.push_back(i);
    }
    if (batch.empty()) break;
    const absl::Status status = (*runner)->Forward(batch, &logits);
    if (!status.ok()) {
      run.status = status;
      return run;
    }
    int row = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      Live& l = live[who[b]];
      l.fed += static_cast<int>(batch[b].tokens.size());
      if (!batch[b].compute_logits) continue;
      const float* lg = logits.data() + static_cast<size_t>(row++) * c.vocab_size;
      PromptResult& r = run.prompts[who[b]];
      if (r.ours.empty()) {  // last prompt position: the golden top-20 logits
        const json& last = golden["prompts"][who[b]]["last_logits"];
        const auto ids = last["top_ids"].get<std::vector<int32_t>>();
        const auto values = last["top_values"].get<std::vector<float>>();
        for (size_t k = 0; k < ids.size(); ++k) {
          r.top20_worst = std::max(r.top20_worst, std::fabs(lg[ids[k]] - values[k]));
        }
        run.top20_worst = std::max(run.top20_worst, r.top20_worst);
      }
      r.ours.push_back(Argmax(lg, c.vocab_size));
    }
  }
  for (PromptResult& r : run.prompts) {
    for (size_t k = 0; k < r.golden.size(); ++k) {
      if (k >= r.ours.size() || r.ours[k] != r.golden[k]) {
        r.diverged_at = static_cast<int>(k);
        break;
      }
    }
    if (r.diverged_at < 0) {
      std::printf("[ golden   ] %s %-22s matched fully (%zu tokens); top-20 worst |diff| %.4f\n",
                  run.mode, r.name.c_str(), r.golden.size(), r.top20_worst);
    } else {
      const int k = r.diverged_at;
      std::printf(
          "[ golden   ] %s %-22s diverged at step %d: ours %d, golden %d, golden top1-top2 "
          "gap %.5f (%s); top-20 worst |diff| %.4f\n",
          run.mode, r.name.c_str(), k, k < static_cast<int>(r.ours.size()) ? r.ours[k] : -1,
          r.golden[k], r.gaps[k], r.gaps[k] < kNearTieGap ? "near-tie, accepted" : "NOT a near-tie",
          r.top20_worst);
    }
  }
  std::printf("[ golden   ] %s worst last-position top-20 logit difference vs golden: %.4f\n",
              run.mode, run.top20_worst);
  std::printf("[ golden   ] %s decode steps run as CUDA graphs: %lld (captures %lld)\n", run.mode,
              static_cast<long long>((*runner)->graph_stats().launches),
              static_cast<long long>((*runner)->graph_stats().captures));
  std::fflush(stdout);
  return run;
}

const GoldenRun& Golden() {
  static const GoldenRun* run = new GoldenRun(RunGolden(/*decode_kernel=*/true));
  return *run;
}

void ExpectOnlyNearTieDivergences(const GoldenRun& run) {
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.prompts.size(), 8u);
  for (const PromptResult& r : run.prompts) {
    EXPECT_EQ(r.ours.size(), r.golden.size()) << run.mode << " " << r.name;
    if (r.diverged_at >= 0) {
      EXPECT_LT(r.gaps[r.diverged_at], kNearTieGap)
          << run.mode << " " << r.name << " diverges at step " << r.diverged_at
          << " where the golden top-1/top-2 gap is " << r.gaps[r.diverged_at];
    }
  }
  EXPECT_LT(run.top20_worst, kMaxTop20Diff) << run.mode;
}

TEST(CudaEngineGoldenTest, GreedyDivergesOnlyAtNearTies) {
  SKIP_WITHOUT_GPU();
  ExpectOnlyNearTieDivergences(Golden());
}

// The same with the prefill kernel serving the one-token steps: tells a decode-kernel fault
// from the rest of the runner.
TEST(CudaEngineGoldenTest, PrefillKernelOnlyDivergesOnlyAtNearTies) {
  SKIP_WITHOUT_GPU();
  ExpectOnlyNearTieDivergences(RunGolden(/*decode_kernel=*/false));
}

// The decode kernel without CUDA graphs (the eager path); its continuations should equal the
// graph run's (they can differ only at near-ties, once the batch is padded).
TEST(CudaEngineGoldenTest, NoCudaGraphsDivergesOnlyAtNearTies) {
  SKIP_WITHOUT_GPU();
  const GoldenRun eager = RunGolden(/*decode_kernel=*/true, /*cuda_graphs=*/false);
  ExpectOnlyNearTieDivergences(eager);
  const GoldenRun& graphed = Golden();
  ASSERT_TRUE(graphed.status.ok());
  int same = 0;
  for (size_t i = 0; i < eager.prompts.size() && i < graphed.prompts.size(); ++i) {
    same += eager.prompts[i].ours == graphed.prompts[i].ours ? 1 : 0;
  }
  std::printf("[ golden   ] CUDA graphs vs eager decode: %d of %zu continuations identical\n", same,
              eager.prompts.size());
}

TEST(CudaEngineGoldenTest, AtLeastFourOfTheFirstFivePromptsMatchFully) {
  SKIP_WITHOUT_GPU();
  const GoldenRun& run = Golden();
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_GE(run.prompts.size(), 5u);
  int full = 0, full_all = 0;
  for (size_t i = 0; i < run.prompts.size(); ++i) {
    const bool match = run.prompts[i].diverged_at < 0;
    full_all += match ? 1 : 0;
    if (i < 5) full += match ? 1 : 0;
  }
  std::printf("[ golden   ] default full matches: %d of the first 5, %d of %zu\n", full, full_all,
              run.prompts.size());
  // NOTE: several golden continuations pass near-ties (gaps 0.0009-0.08) that bf16 rounding
  // can flip; a miss here with GreedyDivergesOnlyAtNearTies passing is rounding, not a bug.
  EXPECT_GE(full, 4);
}

// ---- (c) decode throughput ----------------------------------------------------------------

TEST(CudaEngineBench, DecodeThroughput) {
  SKIP_WITHOUT_GPU();
  auto weights = LoadDefaultModel();
  ASSERT_TRUE(weights.ok()) << weights.status();
  const ModelConfig& c = (*weights)->config();
  constexpr int kPrompt = 16;
  constexpr int kSteps = 64;
  constexpr int kBlockSize = 16;
  constexpr int kBlocksPerSeq = (kPrompt + kSteps + kBlockSize - 1) / kBlockSize;
  constexpr int kMaxBatch = 64;
  for (const bool graphs : {true, false}) {
    CudaModelRunnerOptions options;
    options.block_size = kBlockSize;
    options.num_kv_blocks = kMaxBatch * kBlocksPerSeq;
    options.use_cuda_graphs = graphs;
    auto runner = CudaModelRunner::Create(**weights, options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> token(3, c.vocab_size - 1);

    for (int batch_size : {1, 64}) {
      std::vector<std::vector<int32_t>> streams(batch_size), tables(batch_size);
      for (int i = 0; i < batch_size; ++i) {
        streams[i].resize(kPrompt + kSteps);
        for (int32_t& t : streams[i]) t = token(rng);
        for (int b = 0; b < kBlocksPerSeq; ++b) tables[i].push_back(i * kBlocksPerSeq + b);
      }
      std::vector<float> logits;
      std::vector<ForwardSeq> batch(batch_size);
      for (int i = 0; i < batch_size; ++i) {
        batch[i].tokens = absl::MakeConstSpan(streams[i].data(), kPrompt);
        batch[i].start_pos = 0;
        batch[i].block_table = tables[i];
        batch[i].compute_logits = true;
      }
      const auto p0 = std::chrono::steady_clock::now();
      ASSERT_TRUE((*runner)->Forward(batch, &logits).ok());
      const double prefill_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count();
      // One warm-up decode step (position kPrompt), then kSteps - 1 timed ones.
      auto decode_step = [&](int pos) {
        for (int i = 0; i < batch_size; ++i) {
          batch[i].tokens = absl::MakeConstSpan(streams[i].data() + pos, 1);
          batch[i].start_pos = pos;
        }
        return (*runner)->Forward(batch, &logits);
      };
      ASSERT_TRUE(decode_step(kPrompt).ok());
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 1; s < kSteps; ++s) ASSERT_TRUE(decode_step(kPrompt + s).ok());
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int timed = kSteps - 1;
      std::printf(
          "[ bench    ] decode batch %2d %-9s: %8.1f tokens/s, %.3f ms/step (%d steps, context "
          "%d-%d, fp32 logits to host included); prefill %d x %d tokens: %.2f ms\n",
          batch_size, graphs ? "graphs" : "no-graphs", batch_size * timed / secs,
          1e3 * secs / timed, timed, kPrompt + 1, kPrompt + kSteps, batch_size, kPrompt,
          1e3 * prefill_s);
    }
  }
  std::fflush(stdout);
}

}  // namespace
}  // namespace tandem
