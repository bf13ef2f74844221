#include "kernels/cpu/ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

TEST(RmsNormTest, MatchesDoubleReference) {
  for (int64_t dim : {576, 13, 64}) {
    const int64_t n = 3;
    std::vector<float> x = Random(n * dim, 1, 3.0f), w = Random(dim, 2), out(n * dim);
    RmsNorm(x.data(), w.data(), n, dim, 1e-5f, out.data());
    for (int64_t r = 0; r < n; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += double{x[r * dim + i]} * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
      for (int64_t i = 0; i < dim; ++i) {
        const double ref = x[r * dim + i] * inv * w[i];
        EXPECT_NEAR(out[r * dim + i], ref, 1e-5 * std::fabs(ref) + 1e-6) << dim << " " << i;
      }
    }
    // In place gives the same result.
    RmsNorm(x.data(), w.data(), n, dim, 1e-5f, x.data());
    EXPECT_EQ(x, out);
  }
}

void RopeReference(std::vector<double>& x, const std::vector<int32_t>& pos, int n_heads,
                   int head_dim, double theta, RopeLayout layout) {
  const int half = head_dim / 2;
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int h = 0; h < n_heads; ++h) {
      double* v = x.data() + (t * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double angle = pos[t] * std::pow(theta, -2.0 * i / head_dim);
        const int a = layout == RopeLayout::kAdjacentPairs ? 2 * i : i;
        const int b = layout == RopeLayout::kAdjacentPairs ? 2 * i + 1 : i + half;
        const double xa = v[a], xb = v[b];
        v[a] = xa * std::cos(angle) - xb * std::sin(angle);
        v[b] = xa * std::sin(angle) + xb * std::cos(angle);
      }
    }
  }
}

TEST(RopeTest, BothLayoutsMatchDoubleReference) {
  const int n_heads = 3, head_dim = 64;
  const std::vector<int32_t> pos = {0, 1, 7, 100, 4095, 32000};
  for (RopeLayout layout : {RopeLayout::kAdjacentPairs, RopeLayout::kHalfSplit}) {
    std::vector<float> x = Random(pos.size() * n_heads * head_dim, 3);
    std::vector<double> ref(x.begin(), x.end());
    RopeReference(ref, pos, n_heads, head_dim, 100000.0, layout);
    Rope(x.data(), pos.data(), pos.size(), n_heads, head_dim, 100000.0f, layout);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], ref[i], 2e-6 * 4) << i;
  }
}

TEST(RopeTest, PositionZeroIsIdentityAndLayoutsDiffer) {
  const std::vector<int32_t> pos0 = {0}, pos5 = {5};
  std::vector<float> x = Random(64, 4), y = x, a = x, b = x;
  Rope(y.data(), pos0.data(), 1, 1, 64, 10000.0f, RopeLayout::kAdjacentPairs);
  EXPECT_EQ(x, y);
  Rope(a.data(), pos5.data(), 1, 1, 64, 10000.0f, RopeLayout::kAdjacentPairs);
  Rope(b.data(), pos5.data(), 1, 1, 64, 10000.0f, RopeLayout::kHalfSplit);
  EXPECT_NE(a, b);
  // Pair 0 of the adjacent layout rotates (x0, x1) by exactly 5 radians.
  EXPECT_NEAR(a[0], x[0] * std::cos(5.0) - x[1] * std::sin(5.0), 1e-6);
  // Pair 0 of the half-split layout rotates (x0, x32).
  EXPECT_NEAR(b[32], x[0] * std::sin(5.0) + x[32] * std::cos(5.0), 1e-6);
}

// Rope keeps cos/sin tables between calls; changing the positions in place, theta or
// head_dim must not reuse stale ones.
TEST(RopeTest, TablesFollowTheirInputs) {
  std::vector<int32_t> pos = {3, 9};
  const std::vector<float> x0 = Random(2 * 64, 11);
  auto check = [&](int head_dim, float theta) {
    std::vector<float> x(x0.begin(), x0.begin() + 2 * head_dim);
    std::vector<double> ref(x.begin(), x.end());
    RopeReference(ref, pos, 1, head_dim, theta, RopeLayout::kAdjacentPairs);
    Rope(x.data(), pos.data(), 2, 1, head_dim, theta, RopeLayout::kAdjacentPairs);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], ref[i], 1e-5) << i;
  };
  check(64, 10000.0f);
  pos[1] = 700;  // same buffer, new contents
  check(64, 10000.0f);
  check(64, 500000.0f);
  check(32, 500000.0f);
}

TEST(SiluMulTest, MatchesDoubleReference) {
  const int64_t n = 1543;
  std::vector<float> g = Random(n, 5, 4.0f), u = Random(n, 6), out(n);
  g[0] = -100.0f;
  g[1] = 100.0f;
  g[2] = 0.0f;
  SiluMul(g.data(), u.data(), n, out.data());
  for (int64_t i = 0; i < n; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-double{g[i]})) * u[i];
    EXPECT_NEAR(out[i], ref, 2e-6 * std::fabs(ref) + 1e-30) << i << " g=" << g[i];
  }
  SiluMul(g.data(), u.data(), n, g.data());  // aliasing out == gate
  EXPECT_EQ(g, out);
}

TEST(AddInPlaceTest, Adds) {
  std::vector<float> x = Random(37, 7), y = Random(37, 8), ref = x;
  for (size_t i = 0; i < x.size(); ++i) ref[i] += y[i];
  AddInPlace(x.data(), y.data(), x.size());
  EXPECT_EQ(x, ref);
}

TEST(SoftmaxTest, MatchesDoubleReference) {
  for (int64_t n : {1, 7, 8, 49, 1000}) {
    std::vector<float> x = Random(n, 9, 10.0f);
    double max = x[0];
    for (float v : x) max = std::max(max, double{v});
    std::vector<double> ref(n);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += ref[i] = std::exp(x[i] - max);
    Softmax(x.data(), n);
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(x[i], ref[i] / sum, 2e-6 * ref[i] / sum + 1e-12) << n << " " << i;
      total += x[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

}  // namespace
}  // namespace tandem
