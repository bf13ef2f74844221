#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

SamplingParams Params(float temperature, float top_p = 1.0f, int32_t top_k = 0,
                      std::optional<uint64_t> seed = 1234) {
  SamplingParams params;
  params.temperature = temperature;
  params.top_p = top_p;
  params.top_k = top_k;
  params.seed = seed;
  return params;
}

std::vector<float> RandomLogits(int n, uint64_t seed, float scale = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(n);
  for (float& x : logits) x = normal(rng);
  return logits;
}

// softmax(logits / temperature), computed independently of the sampler, in double.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double z = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) z += p[i] = std::exp((logits[i] - m) / temperature);
  for (double& x : p) x /= z;
  return p;
}

std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) freq[sampler.Sample(logits)] += 1.0 / draws;
  return freq;
}

TEST(SamplerTest, GreedyPicksTheArgmaxAndTheLowestIdOnTies) {
  Sampler greedy(Params(0.0f));
  EXPECT_EQ(greedy.Sample(std::vector<float>{0.1f, 2.5f, -1.0f, 2.4f}), 1);
  EXPECT_EQ(greedy.Sample(std::vector<float>{1.0f, 3.0f, 3.0f}), 1);
  EXPECT_EQ(greedy.Sample(std::vector<float>{-5.0f}), 0);
  const std::vector<float> logits = RandomLogits(49152, 7);
  const int32_t expected =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(greedy.Sample(logits), expected);
}

TEST(SamplerTest, TopK1EqualsGreedyAtAnyTemperature) {
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const std::vector<float> logits = RandomLogits(1000, seed, 0.5f);
    const int32_t argmax = ArgMax(logits);
    for (float temperature : {0.3f, 1.0f, 2.0f, 100.0f}) {
      Sampler sampler(Params(temperature, 1.0f, /*top_k=*/1, seed));
      for (int i = 0; i < 20; ++i) EXPECT_EQ(sampler.Sample(logits), argmax);
    }
  }
}

TEST(SamplerTest, SameSeedGivesTheSameDrawsHoweverRequestsInterleave) {
  const std::vector<float> logits = RandomLogits(49152, 3, 1.0f);
  for (const SamplingParams& params :
       {Params(1.0f, 1.0f, 0, 42), Params(0.8f, 0.9f, 0, 42), Params(1.2f, 0.95f, 50, 42)}) {
    Sampler alone(params);
    Sampler batched(params);
    Sampler neighbour(Params(1.0f, 1.0f, 0, 7));
    std::vector<int32_t> a, b;
    for (int i = 0; i < 100; ++i) a.push_back(alone.Sample(logits));
    for (int i = 0; i < 100; ++i) {
      neighbour.Sample(logits);  // another request in the same batch
      b.push_back(batched.Sample(logits));
      if (i % 3 == 0) neighbour.Sample(logits);
    }
    EXPECT_EQ(a, b);
  }
}

// A decode engine continues the seeded stream of the prefill engine that drew the first
// token: SkipSample() then Sample() draws what a second Sample() would have.
TEST(SamplerTest, SkipSampleContinuesTheStreamOfASampleMadeElsewhere) {
  const std::vector<float> logits = RandomLogits(49152, 5, 1.0f);
  for (const SamplingParams& params :
       {Params(1.0f, 1.0f, 0, 42), Params(0.8f, 0.9f, 0, 42), Params(1.2f, 0.95f, 50, 42),
        Params(0.0f, 1.0f, 0, 42)}) {
    Sampler one_process(params);
    Sampler prefill(params);
    Sampler decode(params);
    std::vector<int32_t> a, b;
    for (int i = 0; i < 20; ++i) a.push_back(one_process.Sample(logits));
    b.push_back(prefill.Sample(logits));
    decode.SkipSample();
    for (int i = 1; i < 20; ++i) b.push_back(decode.Sample(logits));
    EXPECT_EQ(a, b) << "temperature " << params.temperature;
  }
}

TEST(SamplerTest, DifferentSeedsGiveDifferentDraws) {
  const std::vector<float> logits(100, 0.0f);  // uniform
  Sampler one(Params(1.0f, 1.0f, 0, 1));
  Sampler two(Params(1.0f, 1.0f, 0, 2));
  std::vector<int32_t> a, b;
  for (int i = 0; i < 50; ++i) {
    a.push_back(one.Sample(logits));
    b.push_back(two.Sample(logits));
  }
  EXPECT_NE(a, b);
}

TEST(SamplerTest, UnseededSamplersDiffer) {
  const std::vector<float> logits(1000, 0.0f);
  Sampler one(Params(1.0f, 1.0f, 0, std::nullopt));
  Sampler two(Params(1.0f, 1.0f, 0, std::nullopt));
  std::vector<int32_t> a, b;
  for (int i = 0; i < 20; ++i) {
    a.push_back(one.Sample(logits));
    b.push_back(two.Sample(logits));
  }
  EXPECT_NE(a, b);
}

TEST(SamplerTest, FrequenciesMatchTheSoftmaxWithin2Percent) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f};
  constexpr int kDraws = 20000;
  for (float temperature : {1.0f, 0.5f, 2.0f}) {
    Sampler sampler(Params(temperature, 1.0f, 0, 99));
    const std::vector<double> expected = Softmax(logits, temperature);
    const std::vector<double> freq = Frequencies(sampler, logits, kDraws);
    for (size_t i = 0; i < logits.size(); ++i) {
      EXPECT_NEAR(freq[i], expected[i], 0.02) << "token " << i << " temperature " << temperature;
    }
  }
}

TEST(SamplerTest, TopKRenormalizesOverTheKBest) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f};
  Sampler sampler(Params(1.0f, 1.0f, /*top_k=*/3, 5));
  const std::vector<double> freq = Frequencies(sampler, logits, 20000);
  const std::vector<double> expected = Softmax({1.0f, 2.0f, 1.5f}, 1.0);
  EXPECT_NEAR(freq[0], expected[0], 0.02);
  EXPECT_NEAR(freq[1], expected[1], 0.02);
  EXPECT_NEAR(freq[4], expected[2], 0.02);
  EXPECT_EQ(freq[2], 0.0);
  EXPECT_EQ(freq[3], 0.0);
}

TEST(SamplerTest, TopKAboveTheVocabularyIsOff) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f};
  Sampler sampler(Params(1.0f, 1.0f, /*top_k=*/100, 11));
  const std::vector<double> freq = Frequencies(sampler, logits, 20000);
  const std::vector<double> expected = Softmax(logits, 1.0);
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(freq[i], expected[i], 0.02);
}

TEST(SamplerTest, TopPCutsTheTail) {
  // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps {0, 1}, renormalized 0.625/0.375.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  for (int32_t top_k : {0, 4, 3}) {
    Sampler sampler(Params(1.0f, 0.75f, top_k, 21));
    const std::vector<double> freq = Frequencies(sampler, logits, 20000);
    EXPECT_NEAR(freq[0], 0.625, 0.02) << "top_k " << top_k;
    EXPECT_NEAR(freq[1], 0.375, 0.02) << "top_k " << top_k;
    EXPECT_EQ(freq[2], 0.0) << "top_k " << top_k;
    EXPECT_EQ(freq[3], 0.0) << "top_k " << top_k;
  }
  // A tiny top_p keeps exactly the top token.
  Sampler tiny(Params(1.0f, 1e-6f, 0, 3));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(tiny.Sample(logits), 0);
}

// Draws on a real-size vocabulary only ever land in the nucleus computed by brute force.
TEST(SamplerTest, TopPNeverDrawsOutsideTheNucleusOnALargeVocabulary) {
  struct Case {
    float scale;  // logit spread: peaked (large) to nearly flat (small)
    float temperature;
    float top_p;
  };
  for (const Case& c : {Case{4.0f, 1.0f, 0.9f}, Case{1.0f, 0.7f, 0.5f}, Case{0.01f, 1.0f, 0.3f},
                        Case{6.0f, 1.5f, 0.99f}}) {
    const std::vector<float> logits = RandomLogits(49152, 17, c.scale);
    const std::vector<double> p = Softmax(logits, c.temperature);
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    std::vector<bool> in_nucleus(logits.size(), false);
    double mass = 0.0;
    for (int32_t id : order) {
      in_nucleus[id] = true;
      mass += p[id];
      // Slack of 1e-4 for float-vs-double weights at the boundary token.
      if (mass >= c.top_p + 1e-4) break;
    }
    Sampler sampler(Params(c.temperature, c.top_p, 0, 8));
    for (int i = 0; i < 400; ++i) {
      const int32_t id = sampler.Sample(logits);
      ASSERT_TRUE(in_nucleus[id]) << "token " << id << " p " << p[id] << " scale " << c.scale;
    }
  }
}

TEST(SamplerTest, FlatDistributionTopPKeepsTheLowestIds) {
  // All ties: the nucleus is the first part of the vocabulary by id, whatever its size.
  for (int vocab : {1000, 49152}) {
    const std::vector<float> logits(vocab, 0.0f);
    Sampler sampler(Params(1.0f, 0.5f, 0, 4));
    int32_t highest = 0;
    for (int i = 0; i < 400; ++i) highest = std::max(highest, sampler.Sample(logits));
    EXPECT_LT(highest, vocab / 2) << "vocab " << vocab;
    EXPECT_GT(highest, vocab / 2 - vocab / 20) << "vocab " << vocab;  // and reaches its end
  }
}

TEST(SamplerTest, NanAndInfiniteLogitsAreHandled) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> with_nan = {nan, 0.0f, nan, 0.0f};
  for (const SamplingParams& params :
       {Params(1.0f), Params(1.0f, 0.9f), Params(1.0f, 1.0f, 2), Params(0.0f)}) {
    Sampler sampler(params);
    for (int i = 0; i < 200; ++i) {
      const int32_t id = sampler.Sample(with_nan);
      EXPECT_TRUE(id == 1 || id == 3) << id;
    }
    EXPECT_EQ(sampler.Sample(std::vector<float>{-inf, -inf, -inf}), 0);
    EXPECT_EQ(sampler.Sample(std::vector<float>{0.0f, inf, 1.0f}), 1);
  }
}

TEST(SamplingParamsTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(SamplingParams().Validate(49152).ok());
  EXPECT_TRUE(Params(0.0f, 1.0f, 0).Validate(49152).ok());
  EXPECT_TRUE(Params(0.7f, 0.9f, 40).Validate(49152).ok());

  struct Case {
    SamplingParams params;
    const char* field;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const Case& c : {Case{Params(-0.1f), "temperature"}, Case{Params(nan), "temperature"},
                        Case{Params(std::numeric_limits<float>::infinity()), "temperature"},
                        Case{Params(1.0f, 0.0f), "top_p"}, Case{Params(1.0f, 1.5f), "top_p"},
                        Case{Params(1.0f, -0.2f), "top_p"}, Case{Params(1.0f, nan), "top_p"},
                        Case{Params(1.0f, 1.0f, -1), "top_k"}}) {
    const absl::Status status = c.params.Validate(49152);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
  EXPECT_EQ(SamplingParams().Validate(0).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplerDeathTest, UnvalidatedParamsAreRefused) {
  EXPECT_DEATH({ Sampler sampler(Params(-1.0f)); }, "temperature must be");
  EXPECT_DEATH({ Sampler sampler(Params(1.0f, 0.0f)); }, "top_p must be");
}

}  // namespace
}  // namespace tandem
