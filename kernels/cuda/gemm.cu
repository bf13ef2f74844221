// bf16 GEMM through cuBLAS: y[n, out] = x[n, in] · W[out, in]ᵀ with fp32 compute, and the
// weight-streaming GEMV that takes decode-sized batches (n <= 8) instead.
#include <cublas_v2.h>

#include <limits>

#include "common/logging.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"

namespace tandem::cuda {
namespace {

// cuBLAS on Hopper picks faster kernels with a workspace; 32 MiB as NVIDIA recommends.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusName(s), " (",
                                          cublasGetStatusString(s), ")"));
}

constexpr int kGemvWarps = 4;   // output rows per CTA (one per warp)
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane

// acc[b] += w[8] · x[b, c*8 .. c*8+8) for every batch row b.
template <int N>
__device__ __forceinline__ void GemvChunk(const uint4& wv, const bf16* __restrict__ x,
                                          int64_t in, int64_t c, float* acc) {
  float wf[8];
  internal::Unpack8(wv, wf);
#pragma unroll
  for (int b = 0; b < N; ++b) {
    float xf[8];
    internal::Unpack8(internal::Ldg16(x + b * in + c * 8), xf);
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[b] = fmaf(wf[j], xf[j], acc[b]);
  }
}

template <int N, bool kOutF32>
__global__ void __launch_bounds__(kGemvWarps * 32)
    SmallBatchGemvKernel(const bf16* __restrict__ x, const bf16* __restrict__ w, int64_t in,
                         int64_t out, void* __restrict__ y, float beta) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (row >= out) return;  // whole warps leave: no shuffle below is left half-empty
  const uint4* __restrict__ wr = reinterpret_cast<const uint4*>(w + row * in);
  const int64_t chunks = in / 8;
  float acc[N];
#pragma unroll
  for (int b = 0; b < N; ++b) acc[b] = 0.0f;
  int64_t c = lane;
  // The weights are read once per step: streaming loads (evict-first), kGemvUnroll issued
  // before any is used.
  for (; c + 32 * (kGemvUnroll - 1) < chunks; c += 32 * kGemvUnroll) {
    uint4 wv[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) wv[u] = __ldcs(wr + c + 32 * u);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) GemvChunk<N>(wv[u], x, in, c + 32 * u, acc);
  }
  for (; c < chunks; c += 32) GemvChunk<N>(__ldcs(wr + c), x, in, c, acc);
#pragma unroll
  for (int b = 0; b < N; ++b) acc[b] = internal::WarpSum(acc[b]);
  if (lane == 0) {
#pragma unroll
    for (int b = 0; b < N; ++b) {
      if constexpr (kOutF32) {
        float* yo = static_cast<float*>(y) + b * out + row;
        *yo = beta != 0.0f ? acc[b] + beta * *yo : acc[b];
      } else {
        bf16* yo = static_cast<bf16*>(y) + b * out + row;
        const float prior = beta != 0.0f ? beta * __bfloat162float(*yo) : 0.0f;
        *yo = __float2bfloat16_rn(acc[b] + prior);
      }
    }
  }
}

template <int N>
absl::Status LaunchGemv(const bf16* x, const bf16* w, int64_t in, int64_t out, void* y,
                        GemmOut out_type, cudaStream_t stream, float beta) {
  const dim3 grid(static_cast<unsigned>(internal::CeilDiv(out, kGemvWarps)));
  if (out_type == GemmOut::kF32) {
    SmallBatchGemvKernel<N, true><<<grid, kGemvWarps * 32, 0, stream>>>(x, w, in, out, y, beta);
  } else {
    SmallBatchGemvKernel<N, false><<<grid, kGemvWarps * 32, 0, stream>>>(x, w, in, out, y, beta);
  }
  return internal::LaunchStatus("SmallBatchGemvKernel");
}

}  // namespace

bool SmallBatchLinearFits(const bf16* x, const bf16* w, int64_t n, int64_t in_features) {
  return n >= 1 && n <= kSmallBatchRows && in_features % 8 == 0 && internal::Aligned16(x) &&
         internal::Aligned16(w);
}

absl::Status SmallBatchLinear(const bf16* x, const bf16* w, int64_t n, int64_t in_features,
                              int64_t out_features, void* y, GemmOut out_type,
                              cudaStream_t stream, float beta) {
  TANDEM_ARG_CHECK(x != nullptr && w != nullptr && y != nullptr);
  // One CTA per kGemvWarps rows, and gridDim.x is at most 2^31 - 1.
  TANDEM_ARG_CHECK(in_features > 0 && out_features > 0 &&
                       out_features <= int64_t{std::numeric_limits<int>::max()} * kGemvWarps,
                   "in=", in_features, " out=", out_features);
  TANDEM_ARG_CHECK(SmallBatchLinearFits(x, w, n, in_features),
                   "needs 1 <= n <= 8, in % 8 == 0 and 16-byte aligned x and w: n=", n,
                   " in=", in_features);
  switch (n) {
    case 1: return LaunchGemv<1>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 2: return LaunchGemv<2>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 3: return LaunchGemv<3>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 4: return LaunchGemv<4>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 5: return LaunchGemv<5>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 6: return LaunchGemv<6>(x, w, in_features, out_features, y, out_type, stream, beta);
    case 7: return LaunchGemv<7>(x, w, in_features, out_features, y, out_type, stream, beta);
    default: return LaunchGemv<8>(x, w, in_features, out_features, y, out_type, stream, beta);
  }
}

absl::StatusOr<std::unique_ptr<CublasGemm>> CublasGemm::Create() {
  std::unique_ptr<CublasGemm> gemm(new CublasGemm());
  cublasHandle_t handle = nullptr;
  RETURN_IF_ERROR(CublasStatus(cublasCreate(&handle), "cublasCreate"));
  gemm->handle_ = handle;
  TANDEM_CUDA_RETURN_IF_ERROR(cudaMalloc(&gemm->workspace_, kWorkspaceBytes));
  return gemm;
}

CublasGemm::~CublasGemm() {
  if (handle_ != nullptr) {
    const cublasStatus_t s = cublasDestroy(static_cast<cublasHandle_t>(handle_));
    if (s != CUBLAS_STATUS_SUCCESS) LOG(WARNING) << "cublasDestroy: " << cublasGetStatusName(s);
  }
  if (workspace_ != nullptr) {
    const cudaError_t e = cudaFree(workspace_);
    if (e != cudaSuccess) LOG(WARNING) << "cudaFree(cuBLAS workspace): " << cudaGetErrorName(e);
  }
}

absl::Status CublasGemm::Linear(const bf16* x, const bf16* w, int64_t n, int64_t in_features,
                                int64_t out_features, void* y, GemmOut out_type,
                                cudaStream_t stream, float beta) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TANDEM_ARG_CHECK(n >= 0 && n <= kMax && in_features > 0 && in_features <= kMax &&
                       out_features > 0 && out_features <= kMax,
                   "n=", n, " in=", in_features, " out=", out_features);
  TANDEM_ARG_CHECK(x != nullptr && w != nullptr && y != nullptr);
  if (n == 0) return absl::OkStatus();
  if (small_batch_kernel_ && SmallBatchLinearFits(x, w, n, in_features)) {
    return SmallBatchLinear(x, w, n, in_features, out_features, y, out_type, stream, beta);
  }
  auto handle = static_cast<cublasHandle_t>(handle_);
  RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle, stream), "cublasSetStream"));
  RETURN_IF_ERROR(CublasStatus(cublasSetWorkspace(handle, workspace_, kWorkspaceBytes),
                               "cublasSetWorkspace"));
  // Column-major view: yᵀ[out, n] = W(col-major [in, out])ᵀ · xᵀ(col-major [in, n]).
  const float alpha = 1.0f;
  const cudaDataType_t c_type = out_type == GemmOut::kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  return CublasStatus(
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out_features),
                   static_cast<int>(n), static_cast<int>(in_features), &alpha, w, CUDA_R_16BF,
                   static_cast<int>(in_features), x, CUDA_R_16BF, static_cast<int>(in_features),
                   &beta, y, c_type, static_cast<int>(out_features), CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

}  // namespace tandem::cuda
