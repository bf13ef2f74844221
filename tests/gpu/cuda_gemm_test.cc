// cuBLAS bf16 GEMM (y = x · Wᵀ, GGUF row-major weights) against a double-precision reference.
//
// Tolerance: products of bf16 values are exact in fp32 and the sum is accumulated in fp32,
// so the only sizeable error is the final rounding: bf16 output within 8e-3 relative
// (2x the half-ulp bound 2^-8), fp32 output within 1e-5 relative; both plus an absolute
// 1e-4 * sum_k |x_k w_k| for the fp32 summation order (split-K) and cancellation near zero.
#include <cmath>
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

}  // namespace
}  // namespace tandem::cuda
