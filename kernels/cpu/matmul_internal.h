// Internal to tandem_kernels_cpu: the pieces MatMul is assembled from.
#ifndef TANDEM_KERNELS_CPU_MATMUL_INTERNAL_H_
#define TANDEM_KERNELS_CPU_MATMUL_INTERNAL_H_

#include <cstdint>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant_blocks.h"

namespace tandem::matmul_internal {

// Activation rows are processed in tiles of kTileRows: one weight block, once unpacked, is
// multiplied against every row of the tile while it sits in registers.
inline constexpr int kTileRows = 4;

// One 32-element block of kTileRows activation rows, interleaved so that a tile's scales
// load as one vector. With ActivationQuant::kInt8, row j's values are qs[j][k] * d[j]; with
// kInt8Residual they are (128 qs[j][k] + qr[j][k]) * d[j] (d is then the 8-bit step / 128,
// an exact rescaling). s[j] = Σ_k value (the term Q4_1's m, Q4_0's -8 and Q6_K's -32
// multiply). Rows past the end of x are zero.
struct XTileBlock {
  float d[kTileRows];
  float s[kTileRows];
  int8_t qs[kTileRows][kQK];
  int8_t qr[kTileRows][kQK];  // residuals in [-64, 64]; kInt8Residual only
};
static_assert(sizeof(XTileBlock) == 288);

// Quantizes x[n, cols] (cols a multiple of 32) to xq[ceil(n / kTileRows), cols / 32]: row i
// goes to row i % kTileRows of tile i / kTileRows; only rows [row_begin, row_end) are
// written, and the padding rows of the last tile are zeroed by whoever writes row n - 1.
// Each row's blocks depend on that row alone, so a row quantizes identically whatever n is.
void QuantizeActivations(const float* x, int64_t cols, int64_t row_begin, int64_t row_end,
                         int64_t n, bool residual, XTileBlock* xq);

// y[j * y_stride + r] = (row r of w) · (activation row j), for r in [r_begin, r_end) and
// j in [0, nx): nx in 1..4 takes rows of the tile at xt (its w.cols / 32 blocks); nx = 8
// takes that tile and the next, xt + w.cols / 32. The arithmetic for a (row, activation row) pair
// does not depend on nx or on r_begin/r_end.
using QuantKernel = void (*)(const WeightView& w, int64_t r_begin, int64_t r_end,
                             const XTileBlock* xt, int nx, float* y, int64_t y_stride);

// The fastest build of the kernel for this CPU, for activations quantized with or without
// residuals; nullptr for float types.
QuantKernel FindQuantKernel(GgmlType type, bool residual);
// The builds, for tests: AVX2, AVX-VNNI and AVX-512 (the last two only for CPUs that have
// them; see CpuHasAvx512Kernels).
QuantKernel FindQuantKernelAvx2(GgmlType type, bool residual);
QuantKernel FindQuantKernelVnni(GgmlType type, bool residual);
QuantKernel FindQuantKernelAvx512(GgmlType type, bool residual);
bool CpuHasAvx512Kernels();

// fp16 -> fp32 for all 65536 values (256 KiB, as ggml's table). A block scale then costs
// one load that broadcasts straight into a vector, where F16C's register forms need the
// shuffle port the kernels already keep busy.
struct HalfToFloatTable {
  HalfToFloatTable();
  float f32[65536];
};
extern const HalfToFloatTable kHalfToFloat;

}  // namespace tandem::matmul_internal

#endif  // TANDEM_KERNELS_CPU_MATMUL_INTERNAL_H_
