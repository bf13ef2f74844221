#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"

namespace tandem {
namespace {

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

// A weight matrix of random values stored in `type`, with its exact fp32 values.
struct TestWeights {
  std::vector<uint8_t> data;
  std::vector<float> values;  // [rows, cols], dequantized
  WeightView view;
};

TestWeights MakeWeights(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  TestWeights t;
  const std::vector<float> src = Random(rows * cols, seed, 0.05f);
  const int64_t row_bytes = RowBytes(type, cols);
  t.data.resize(rows * row_bytes);
  t.values.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(type, src.data() + r * cols, t.data.data() + r * row_bytes, cols);
    DequantizeRow(type, t.data.data() + r * row_bytes, t.values.data() + r * cols, cols);
  }
  t.view = {type, rows, cols, t.data.data()};
  return t;
}

// y[j, r] = Σ_k w[r, k] x[j, k] in double.
std::vector<double> Naive(const TestWeights& w, const std::vector<float>& x, int64_t n) {
  const int64_t rows = w.view.rows, cols = w.view.cols;
  std::vector<double> y(n * rows);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t k = 0; k < cols; ++k) s += double{w.values[r * cols + k]} * x[j * cols + k];
      y[j * rows + r] = s;
    }
  }
  return y;
}

// Error bound of MatMul for quantized weights: each activation is rounded to the nearest of
// 255 levels spanning ±amax of its 32-block, so it moves by at most amax/254; the product
// moves by at most Σ_k |w_k| · amax_b / 254. Plus fp32 accumulation: 1e-5 · Σ|w||x|.
double QuantErrorBound(const TestWeights& w, const float* x, int64_t r) {
  const int64_t cols = w.view.cols;
  double bound = 0, mag = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int64_t k = 32 * b; k < 32 * b + 32; ++k) {
      amax = std::max(amax, double{std::fabs(x[k])});
      wsum += std::fabs(w.values[r * cols + k]);
      mag += std::fabs(w.values[r * cols + k] * x[k]);
    }
    bound += wsum * amax / 254.0;
  }
  return bound * 1.001 + 1e-5 * mag + 1e-7;
}

double FloatErrorBound(const TestWeights& w, const float* x, int64_t r) {
  double mag = 0;
  for (int64_t k = 0; k < w.view.cols; ++k) mag += std::fabs(w.values[r * w.view.cols + k] * x[k]);
  return 1e-5 * mag + 1e-7;
}

bool IsQuantized(GgmlType t) {
  return t != GgmlType::kF32 && t != GgmlType::kF16 && t != GgmlType::kBF16;
}

class MatMulTest : public ::testing::TestWithParam<GgmlType> {};

TEST_P(MatMulTest, MatchesNaiveAndExact) {
  const GgmlType type = GetParam();
  ThreadPool pool(2);
  const int64_t block = Traits(type).block_size;
  for (int64_t cols : {block == 256 ? int64_t{512} : int64_t{576}, int64_t{block == 1 ? 13 : 256}}) {
    for (int64_t rows : {1, 7, 37, 67}) {
      const TestWeights w = MakeWeights(type, rows, cols, 11 + rows);
      for (int64_t n : {1, 3, 8, 33}) {
        const std::vector<float> x = Random(n * cols, 100 + n);
        const std::vector<double> ref = Naive(w, x, n);
        std::vector<float> y(n * rows), y_exact(n * rows);
        MatMul(w.view, x.data(), n, y.data(), pool);
        MatMulExact(w.view, x.data(), n, y_exact.data(), pool);
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = j * rows + r;
            const float* xj = x.data() + j * cols;
            EXPECT_NEAR(y_exact[i], ref[i], FloatErrorBound(w, xj, r))
                << GgmlTypeName(type) << " rows=" << rows << " cols=" << cols << " n=" << n;
            const double bound =
                IsQuantized(type) ? QuantErrorBound(w, xj, r) : FloatErrorBound(w, xj, r);
            EXPECT_NEAR(y[i], ref[i], bound)
                << GgmlTypeName(type) << " rows=" << rows << " cols=" << cols << " n=" << n
                << " j=" << j << " r=" << r;
          }
        }
      }
    }
  }
}

// A row of x gives bit-identical results alone, in any batch, and with any thread count:
// greedy decoding of a sequence must not depend on what it is batched with.
TEST_P(MatMulTest, BatchAndThreadInvariant) {
  const GgmlType type = GetParam();
  const int64_t cols = Traits(type).block_size == 256 ? 512 : 576, rows = 45;
  const TestWeights w = MakeWeights(type, rows, cols, 5);
  const int64_t n = 37;
  const std::vector<float> x = Random(n * cols, 6);
  ThreadPool pool1(1), pool2(2), pool3(3);
  std::vector<float> batched(n * rows);
  MatMul(w.view, x.data(), n, batched.data(), pool2);
  for (ThreadPool* pool : {&pool1, &pool2, &pool3}) {
    std::vector<float> again(n * rows);
    MatMul(w.view, x.data(), n, again.data(), *pool);
    EXPECT_EQ(std::memcmp(again.data(), batched.data(), again.size() * sizeof(float)), 0)
        << GgmlTypeName(type) << " threads=" << pool->num_threads();
  }
  for (int64_t start : {0, 5, 17, 36}) {
    for (int64_t len : {1, 2, 3, 6}) {
      if (start + len > n) continue;
      std::vector<float> part(len * rows);
      MatMul(w.view, x.data() + start * cols, len, part.data(), pool2);
      EXPECT_EQ(std::memcmp(part.data(), batched.data() + start * rows, part.size() * sizeof(float)), 0)
          << GgmlTypeName(type) << " start=" << start << " len=" << len;
    }
  }
}

// The AVX2 and AVX-VNNI builds of the integer kernels agree bit for bit, so results do not
// depend on which machine served a request.
TEST_P(MatMulTest, Avx2AndVnniBuildsAgree) {
  const GgmlType type = GetParam();
  if (!IsQuantized(type)) GTEST_SKIP() << "float weights have one build";
  if (!__builtin_cpu_supports("avxvnni")) GTEST_SKIP() << "CPU without AVX-VNNI";
  using matmul_internal::XTileBlock;
  const int64_t cols = Traits(type).block_size == 256 ? 512 : 576, rows = 13, n = 7;
  const TestWeights w = MakeWeights(type, rows, cols, 8);
  const std::vector<float> x = Random(n * cols, 9);
  const int64_t nb = cols / 32, tiles = (n + 3) / 4;
  std::vector<XTileBlock> xq(tiles * nb);
  matmul_internal::QuantizeActivations(x.data(), cols, 0, n, n, xq.data());
  std::vector<float> y_avx2(n * rows), y_vnni(n * rows);
  for (int64_t t = 0; t < tiles; ++t) {
    const int nx = static_cast<int>(std::min<int64_t>(4, n - 4 * t));
    matmul_internal::FindQuantKernelAvx2(type)(w.view, 0, rows, xq.data() + t * nb, nx,
                                               y_avx2.data() + 4 * t * rows, rows);
    matmul_internal::FindQuantKernelVnni(type)(w.view, 0, rows, xq.data() + t * nb, nx,
                                               y_vnni.data() + 4 * t * rows, rows);
  }
  EXPECT_EQ(std::memcmp(y_avx2.data(), y_vnni.data(), y_avx2.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulTest,
                         ::testing::Values(GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16,
                                           GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0,
                                           GgmlType::kQ6_K),
                         [](const auto& info) { return GgmlTypeName(info.param); });

TEST(MatMulTest, ExactMatchesNaiveAtModelShape) {
  ThreadPool pool(2);
  const TestWeights w = MakeWeights(GgmlType::kQ4_1, 1536, 576, 3);
  const std::vector<float> x = Random(2 * 576, 4);
  const std::vector<double> ref = Naive(w, x, 2);
  std::vector<float> y(2 * 1536);
  MatMulExact(w.view, x.data(), 2, y.data(), pool);
  for (int64_t j = 0; j < 2; ++j) {
    for (int64_t r = 0; r < 1536; ++r) {
      EXPECT_NEAR(y[j * 1536 + r], ref[j * 1536 + r], FloatErrorBound(w, x.data() + j * 576, r));
    }
  }
}

}  // namespace
}  // namespace tandem
