// bf16 GEMM through cuBLAS: y[n, out] = x[n, in] · W[out, in]ᵀ with fp32 compute.
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

}  // namespace

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
