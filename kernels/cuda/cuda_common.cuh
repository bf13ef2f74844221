// Helpers shared by the .cu files of tandem_kernels_cuda: status conversion, argument
// checks and bf16 vector access. Not part of the public API.
#ifndef TANDEM_KERNELS_CUDA_CUDA_COMMON_CUH_
#define TANDEM_KERNELS_CUDA_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tandem::cuda::internal {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

// Status of the launch just enqueued.
inline absl::Status LaunchStatus(const char* kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of SMs of the current device (cached per device id).
int NumSms();

}  // namespace tandem::cuda::internal

#define TANDEM_CUDA_RETURN_IF_ERROR(expr)                                            \
  do {                                                                               \
    const cudaError_t tandem_cuda_err_ = (expr);                                     \
    if (tandem_cuda_err_ != cudaSuccess)                                             \
      return ::tandem::cuda::internal::CudaStatus(tandem_cuda_err_, #expr);          \
  } while (0)

// Host-side argument validation: returns InvalidArgument naming the failed condition.
#define TANDEM_ARG_CHECK(cond, ...)                                                    \
  do {                                                                                 \
    if (!(cond))                                                                       \
      return ::absl::InvalidArgumentError(::absl::StrCat(__func__, ": " #cond " ",     \
                                                         ##__VA_ARGS__));              \
  } while (0)

namespace tandem::cuda::internal {

// 8 bf16 values in 16 bytes.
union alignas(16) Bf16x8 {
  uint4 u;
  __nv_bfloat162 h2[4];
};

__device__ __forceinline__ void Unpack8(const uint4& u, float* f) {
  Bf16x8 v;
  v.u = u;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 p = __bfloat1622float2(v.h2[i]);
    f[2 * i] = p.x;
    f[2 * i + 1] = p.y;
  }
}

__device__ __forceinline__ uint4 Pack8(const float* f) {
  Bf16x8 v;
#pragma unroll
  for (int i = 0; i < 4; ++i) v.h2[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return v.u;
}

// Read-only 16-byte load through the non-coherent path.
__device__ __forceinline__ uint4 Ldg16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds >= 32 floats; blockDim.x
// is a multiple of 32. Contains __syncthreads: call from all threads.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < n_warps; ++w) total += scratch[w];
  return total;
}

}  // namespace tandem::cuda::internal

#endif  // TANDEM_KERNELS_CUDA_CUDA_COMMON_CUH_
