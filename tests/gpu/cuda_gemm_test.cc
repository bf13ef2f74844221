// cuBLAS bf16 GEMM (y = x · Wᵀ, GGUF row-major weights) against a double-precision reference.
//
// Tolerance: products of bf16 values are exact in fp32 and the sum is accumulated in fp32,
// so the only sizeable error is the final rounding: bf16 output within 8e-3 relative
// (2x the half-ulp bound 2^-8), fp32 output within 1e-5 relative; both plus an absolute
// 1e-4 * sum_k |x_k w_k| for the fp32 summation order (split-K) and cancellation near zero.
#include <algorithm>
#include <cmath>
#include <tuple>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace tandem::cuda {
namespace {

using testing::DeviceBuffer;
using testing::DownloadBf16;
using testing::RandomBf16;
using testing::TestSeed;

struct GemmShape {
  int64_t n, in, out;
};

TEST(CublasGemmTest, LinearMatchesReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  auto gemm_or = CublasGemm::Create();
  ASSERT_TRUE(gemm_or.ok()) << gemm_or.status();
  std::unique_ptr<CublasGemm> gemm = std::move(gemm_or).value();
  const GemmShape shapes[] = {
      {1, 576, 4099}, {17, 576, 1536}, {3, 1536, 576}, {128, 4096, 1000}, {33, 129, 65}};
  for (const GemmShape& s : shapes) {
    for (const GemmOut out_type : {GemmOut::kBf16, GemmOut::kF32}) {
      for (const float beta : {0.0f, 1.0f}) {
        const auto x = RandomBf16(s.n * s.in, rng);
        const auto w = RandomBf16(s.out * s.in, rng, -0.2f, 0.2f);
        const auto y0 = RandomBf16(s.n * s.out, rng);  // prior y for beta = 1
        DeviceBuffer<bf16> d_x(x.bits), d_w(w.bits);
        const bool bf16_out = out_type == GemmOut::kBf16;
        DeviceBuffer<bf16> d_y16(s.n * s.out);
        DeviceBuffer<float> d_y32(s.n * s.out);
        if (bf16_out) {
          d_y16.Upload(y0.bits);
        } else {
          d_y32.Upload(y0.values);
        }
        void* y = bf16_out ? static_cast<void*>(d_y16.get()) : static_cast<void*>(d_y32.get());
        const absl::Status st =
            gemm->Linear(d_x.get(), d_w.get(), s.n, s.in, s.out, y, out_type, nullptr, beta);
        ASSERT_TRUE(st.ok()) << st;
        SYNC_OR_FAIL();
        std::vector<double> ref(s.n * s.out), atol(s.n * s.out);
        for (int64_t i = 0; i < s.n; ++i) {
          for (int64_t o = 0; o < s.out; ++o) {
            double acc = beta * double{y0.values[i * s.out + o]}, mag = std::abs(acc);
            for (int64_t k = 0; k < s.in; ++k) {
              const double p = double{x.values[i * s.in + k]} * w.values[o * s.in + k];
              acc += p;
              mag += std::abs(p);
            }
            ref[i * s.out + o] = acc;
            atol[i * s.out + o] = 1e-4 * mag + 1e-7;
          }
        }
        const auto got = bf16_out ? DownloadBf16(d_y16) : d_y32.Download();
        SCOPED_TRACE("n=" + std::to_string(s.n) + " in=" + std::to_string(s.in) +
                     " out=" + std::to_string(s.out) + (bf16_out ? " bf16" : " f32") +
                     " beta=" + std::to_string(beta));
        EXPECT_ALL_CLOSE(got, ref, bf16_out ? 8e-3 : 1e-5, atol);
      }
    }
  }
}

// The weight-streaming GEMV of decode steps (SmallBatchLinear, n <= 8), against the same
// double reference and tolerances, on every batch size, row lengths that leave the unrolled
// loop a tail (1032 = 129 chunks of 8), never enter it (64, 576) or send some lanes through
// it twice and the others to a three-step tail (1816 = 227 chunks: an off-by-one in either
// loop bound reads past the row), and row counts that leave the last CTA partly empty
// (1, 5, 577). Linear must send these shapes to it.
TEST(SmallBatchLinearTest, MatchesReference) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  for (int64_t n = 1; n <= kSmallBatchRows; ++n) {
    for (const int64_t in : {64, 576, 1032, 1816, 4096}) {
      for (const int64_t out : {1, 5, 577}) {
        for (const GemmOut out_type : {GemmOut::kBf16, GemmOut::kF32}) {
          const float beta = (n + in + out) % 2 == 0 ? 1.0f : 0.0f;
          const auto x = RandomBf16(n * in, rng);
          const auto w = RandomBf16(out * in, rng, -0.2f, 0.2f);
          const auto y0 = RandomBf16(n * out, rng);
          DeviceBuffer<bf16> d_x(x.bits), d_w(w.bits);
          const bool bf16_out = out_type == GemmOut::kBf16;
          DeviceBuffer<bf16> d_y16(n * out);
          DeviceBuffer<float> d_y32(n * out);
          if (bf16_out) {
            d_y16.Upload(y0.bits);
          } else {
            d_y32.Upload(y0.values);
          }
          void* y = bf16_out ? static_cast<void*>(d_y16.get()) : static_cast<void*>(d_y32.get());
          ASSERT_TRUE(SmallBatchLinearFits(d_x.get(), d_w.get(), n, in));
          const absl::Status st =
              SmallBatchLinear(d_x.get(), d_w.get(), n, in, out, y, out_type, nullptr, beta);
          ASSERT_TRUE(st.ok()) << st;
          SYNC_OR_FAIL();
          std::vector<double> ref(n * out), atol(n * out);
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t o = 0; o < out; ++o) {
              double acc = beta * double{y0.values[i * out + o]}, mag = std::abs(acc);
              for (int64_t k = 0; k < in; ++k) {
                const double p = double{x.values[i * in + k]} * w.values[o * in + k];
                acc += p;
                mag += std::abs(p);
              }
              ref[i * out + o] = acc;
              atol[i * out + o] = 1e-4 * mag + 1e-7;
            }
          }
          const auto got = bf16_out ? DownloadBf16(d_y16) : d_y32.Download();
          SCOPED_TRACE("n=" + std::to_string(n) + " in=" + std::to_string(in) +
                       " out=" + std::to_string(out) + (bf16_out ? " bf16" : " f32") +
                       " beta=" + std::to_string(beta));
          EXPECT_ALL_CLOSE(got, ref, bf16_out ? 8e-3 : 1e-5, atol);
        }
      }
    }
  }
}

// Same inputs through Linear with the small-batch kernel on and off: both within the
// reference tolerance of each other, and the kernel is deterministic (two runs, same bits).
TEST(SmallBatchLinearTest, LinearRoutesSmallBatchesAndIsDeterministic) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(TestSeed());
  auto gemm_or = CublasGemm::Create();
  ASSERT_TRUE(gemm_or.ok()) << gemm_or.status();
  CublasGemm& gemm = **gemm_or;
  const int64_t n = 3, in = 2048, out = 3000;
  const auto x = RandomBf16(n * in, rng);
  const auto w = RandomBf16(out * in, rng, -0.2f, 0.2f);
  DeviceBuffer<bf16> d_x(x.bits), d_w(w.bits);
  DeviceBuffer<float> a(n * out), b(n * out), c(n * out);
  ASSERT_TRUE(gemm.small_batch_kernel());
  ASSERT_TRUE(gemm.Linear(d_x.get(), d_w.get(), n, in, out, a.get(), GemmOut::kF32, nullptr).ok());
  ASSERT_TRUE(gemm.Linear(d_x.get(), d_w.get(), n, in, out, c.get(), GemmOut::kF32, nullptr).ok());
  gemm.set_small_batch_kernel(false);
  ASSERT_TRUE(gemm.Linear(d_x.get(), d_w.get(), n, in, out, b.get(), GemmOut::kF32, nullptr).ok());
  SYNC_OR_FAIL();
  const std::vector<float> ga = a.Download(), gb = b.Download(), gc = c.Download();
  EXPECT_EQ(ga, gc) << "the small-batch kernel is not deterministic";
  // Two fp32 summation orders differ by at most ~in·2^-24·Σ|x·w| (a random walk makes it
  // ~sqrt(in)·2^-24·Σ|x·w| in practice): measured against Σ|x·w|, not |y|, so an output
  // that cancels to near zero cannot fail the comparison by itself.
  double worst = 0;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double abs_sum = 0;
      for (int64_t k = 0; k < in; ++k) {
        abs_sum += std::abs(double{x.values[r * in + k]} * w.values[o * in + k]);
      }
      const size_t i = static_cast<size_t>(r * out + o);
      worst = std::max(worst, std::abs(double{ga[i]} - gb[i]) / (abs_sum + 1e-30));
    }
  }
  EXPECT_LT(worst, 2e-5) << "small-batch kernel vs cuBLAS, relative to sum |x*w|";
}

// Refusals happen on the host, before any launch: this runs without a GPU.
TEST(SmallBatchLinearTest, RefusesWhatItCannotTake) {
  alignas(16) static bf16 buf[64];
  const bf16* a = buf;
  EXPECT_TRUE(SmallBatchLinearFits(a, a, 1, 64));
  EXPECT_FALSE(SmallBatchLinearFits(a, a, 0, 64));
  EXPECT_FALSE(SmallBatchLinearFits(a, a, 9, 64));
  EXPECT_FALSE(SmallBatchLinearFits(a, a, 1, 60));
  EXPECT_FALSE(SmallBatchLinearFits(a + 1, a, 1, 64));
  EXPECT_FALSE(SmallBatchLinearFits(a, a + 4, 1, 64));
  float y[8];
  for (const auto& [x, n, in] : {std::tuple{a, int64_t{9}, int64_t{64}},
                                 std::tuple{a, int64_t{1}, int64_t{60}},
                                 std::tuple{a + 1, int64_t{1}, int64_t{64}}}) {
    EXPECT_EQ(SmallBatchLinear(x, a, n, in, 1, y, GemmOut::kF32, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(SmallBatchLinear(a, a, 1, 64, 0, y, GemmOut::kF32, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  // 2^33 rows need 2^31 CTAs, one more than gridDim.x allows.
  EXPECT_EQ(SmallBatchLinear(a, a, 1, 64, int64_t{1} << 33, y, GemmOut::kF32, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SmallBatchLinear(nullptr, a, 1, 64, 1, y, GemmOut::kF32, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem::cuda
