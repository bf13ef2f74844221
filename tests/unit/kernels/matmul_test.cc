#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
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

constexpr ActivationQuant kQuants[] = {ActivationQuant::kInt8, ActivationQuant::kInt8Residual};

const char* Name(ActivationQuant q) { return q == ActivationQuant::kInt8 ? "int8" : "int8+res"; }

// Error bound of MatMul for quantized weights: each activation is rounded to the nearest of
// 255 levels spanning ±amax of its 32-block, so it moves by at most amax/254 (amax/254/128
// with the residual); the product moves by at most Σ_k |w_k| times that. Plus fp32
// accumulation: 1e-5 · Σ|w||x|.
double QuantErrorBound(const TestWeights& w, const float* x, int64_t r, ActivationQuant quant) {
  const double levels = quant == ActivationQuant::kInt8 ? 254.0 : 254.0 * 128.0;
  const int64_t cols = w.view.cols;
  double bound = 0, mag = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    double amax = 0, wsum = 0;
    for (int64_t k = 32 * b; k < 32 * b + 32; ++k) {
      amax = std::max(amax, double{std::fabs(x[k])});
      wsum += std::fabs(w.values[r * cols + k]);
      mag += std::fabs(w.values[r * cols + k] * x[k]);
    }
    bound += wsum * amax / levels;
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
  for (int64_t cols :
       {block == 256 ? int64_t{512} : int64_t{576}, int64_t{block == 1 ? 13 : 256}}) {
    for (int64_t rows : {1, 7, 37, 67}) {
      const TestWeights w = MakeWeights(type, rows, cols, 11 + rows);
      for (int64_t n : {1, 3, 8, 33}) {
        const std::vector<float> x = Random(n * cols, 100 + n);
        const std::vector<double> ref = Naive(w, x, n);
        std::vector<float> y_exact(n * rows);
        MatMulExact(w.view, x.data(), n, y_exact.data(), pool);
        for (int64_t i = 0; i < n * rows; ++i) {
          EXPECT_NEAR(y_exact[i], ref[i], FloatErrorBound(w, x.data() + i / rows * cols, i % rows))
              << GgmlTypeName(type) << " rows=" << rows << " cols=" << cols << " n=" << n;
        }
        for (ActivationQuant quant : kQuants) {
          std::vector<float> y(n * rows);
          MatMul(w.view, x.data(), n, y.data(), pool, quant);
          for (int64_t j = 0; j < n; ++j) {
            for (int64_t r = 0; r < rows; ++r) {
              const float* xj = x.data() + j * cols;
              const double bound =
                  IsQuantized(type) ? QuantErrorBound(w, xj, r, quant) : FloatErrorBound(w, xj, r);
              EXPECT_NEAR(y[j * rows + r], ref[j * rows + r], bound)
                  << GgmlTypeName(type) << " " << Name(quant) << " rows=" << rows
                  << " cols=" << cols << " n=" << n << " j=" << j << " r=" << r;
            }
          }
        }
      }
    }
  }
}

// MatMul's only approximation is the activation rounding: against the naive product with the
// activations it actually used (read back from QuantizeActivations), it agrees to fp32
// accumulation error. Much tighter than the worst-case bound above, so a kernel slip that
// stays under that bound (a wrong scale on some blocks, say) still shows here.
TEST_P(MatMulTest, MatchesNaiveOnQuantizedActivations) {
  const GgmlType type = GetParam();
  if (!IsQuantized(type)) GTEST_SKIP() << "float weights use x as is";
  ThreadPool pool(2);
  const int64_t cols = Traits(type).block_size == 256 ? 512 : 576;
  for (ActivationQuant quant : kQuants) {
    const bool residual = quant == ActivationQuant::kInt8Residual;
    for (int64_t rows : {1, 9, 67}) {
      const TestWeights w = MakeWeights(type, rows, cols, 21 + rows);
      for (int64_t n : {1, 2, 3, 5, 8, 13}) {
        const std::vector<float> x = Random(n * cols, 200 + n);
        const int64_t nb = cols / 32, tiles = (n + 3) / 4;
        std::vector<matmul_internal::XTileBlock> xq(tiles * nb);
        matmul_internal::QuantizeActivations(x.data(), cols, 0, n, n, residual, xq.data());
        std::vector<float> xr(n * cols);  // the activations as quantized
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t b = 0; b < nb; ++b) {
            const matmul_internal::XTileBlock& blk = xq[j / 4 * nb + b];
            double sum = 0;
            for (int k = 0; k < 32; ++k) {
              const int level =
                  residual ? 128 * blk.qs[j % 4][k] + blk.qr[j % 4][k] : blk.qs[j % 4][k];
              if (residual) {
                EXPECT_LE(std::abs(blk.qr[j % 4][k]), 64);
              }
              xr[j * cols + b * 32 + k] = static_cast<float>(level) * blk.d[j % 4];
              sum += level;
              // The rounding is to the nearest level (up to the fp32 error of x·(1/d), a
              // thousandth of a residual step).
              EXPECT_LE(std::fabs(xr[j * cols + b * 32 + k] - x[j * cols + b * 32 + k]),
                        0.502 * blk.d[j % 4] + 1e-30);
            }
            EXPECT_NEAR(blk.s[j % 4], blk.d[j % 4] * sum, 1e-6 * std::fabs(blk.s[j % 4]) + 1e-12);
          }
        }
        const std::vector<double> ref = Naive(w, xr, n);
        std::vector<float> y(n * rows);
        MatMul(w.view, x.data(), n, y.data(), pool, quant);
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t r = 0; r < rows; ++r) {
            EXPECT_NEAR(y[j * rows + r], ref[j * rows + r],
                        FloatErrorBound(w, xr.data() + j * cols, r))
                << GgmlTypeName(type) << " " << Name(quant) << " rows=" << rows << " n=" << n
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
  for (ActivationQuant quant : kQuants) {
    std::vector<float> batched(n * rows);
    MatMul(w.view, x.data(), n, batched.data(), pool2, quant);
    for (ThreadPool* pool : {&pool1, &pool2, &pool3}) {
      std::vector<float> again(n * rows);
      MatMul(w.view, x.data(), n, again.data(), *pool, quant);
      EXPECT_EQ(std::memcmp(again.data(), batched.data(), again.size() * sizeof(float)), 0)
          << GgmlTypeName(type) << " threads=" << pool->num_threads();
    }
    for (int64_t start : {0, 5, 17, 36}) {
      for (int64_t len : {1, 2, 3, 6}) {
        if (start + len > n) continue;
        std::vector<float> part(len * rows);
        MatMul(w.view, x.data() + start * cols, len, part.data(), pool2, quant);
        EXPECT_EQ(
            std::memcmp(part.data(), batched.data() + start * rows, part.size() * sizeof(float)), 0)
            << GgmlTypeName(type) << " start=" << start << " len=" << len;
      }
    }
  }
}

// The AVX2, AVX-VNNI and AVX-512 builds of the integer kernels agree bit for bit, so results
// do not depend on which machine served a request. Tiles of 1-4 and 8 rows cover every path.
TEST_P(MatMulTest, KernelBuildsAgree) {
  const GgmlType type = GetParam();
  if (!IsQuantized(type)) GTEST_SKIP() << "float weights have one build";
  using matmul_internal::QuantKernel;
  using matmul_internal::XTileBlock;
  const int64_t cols = Traits(type).block_size == 256 ? 512 : 576, rows = 13;
  const TestWeights w = MakeWeights(type, rows, cols, 8);
  const int64_t nb = cols / 32;
  for (const bool residual : {false, true}) {
    std::vector<std::pair<const char*, QuantKernel>> builds = {
        {"avx2", matmul_internal::FindQuantKernelAvx2(type, residual)}};
    if (__builtin_cpu_supports("avxvnni")) {
      builds.push_back({"avxvnni", matmul_internal::FindQuantKernelVnni(type, residual)});
    }
    if (matmul_internal::CpuHasAvx512Kernels()) {
      builds.push_back({"avx512", matmul_internal::FindQuantKernelAvx512(type, residual)});
    }
    if (builds.size() == 1) GTEST_SKIP() << "CPU has only the AVX2 build";
    for (int nx : {1, 2, 3, 4, 8}) {  // 8: two tiles in one call
      const std::vector<float> x = Random(nx * cols, 9 + nx);
      std::vector<XTileBlock> xq(2 * nb);
      matmul_internal::QuantizeActivations(x.data(), cols, 0, nx, nx, residual, xq.data());
      std::vector<float> first(nx * rows);
      builds[0].second(w.view, 0, rows, xq.data(), nx, first.data(), rows);
      for (size_t b = 1; b < builds.size(); ++b) {
        std::vector<float> y(nx * rows);
        builds[b].second(w.view, 0, rows, xq.data(), nx, y.data(), rows);
        EXPECT_EQ(std::memcmp(y.data(), first.data(), y.size() * sizeof(float)), 0)
            << builds[b].first << " vs avx2, nx=" << nx << " residual=" << residual;
      }
    }
  }
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
