// MatMul and MatMulExact: work partitioning over the pool, and the fp32 kernels for float
// weights. The integer kernels for quantized weights are in matmul_quant_kernels.h.
#include "kernels/cpu/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/logging.h"
#include "kernels/cpu/matmul_internal.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_math.h"

namespace tandem {
namespace {

using matmul_internal::kTileRows;
using matmul_internal::XTileBlock;

// Weight rows are walked in chunks of this many rows; each chunk meets every activation tile
// before the next chunk starts, so the chunk stays in L1/L2 while the activations stream.
constexpr int64_t kRowChunk = 32;

// Runs fn(r_begin, r_end, t_begin, t_end) over a grid of (weight rows × activation tiles)
// units that covers [0, rows) × [0, tiles), on every thread of the pool. Units are claimed
// dynamically, so a thread the OS delays (other processes share these cores) only costs its
// current unit; results do not depend on who computes what. Rows are split first: each unit
// then reads its own part of the weights, which is what bounds decode. Up to four units per
// thread, but none under ~kMinUnitBlocks block products (a few microseconds): a decode step's
// small matrices take one unit per thread, where more would cost more in claiming than it
// balances. `blocks_per_row_tile` is the block products of one weight row against one tile.
constexpr int64_t kMinUnitBlocks = 4096;

template <class Fn>
void ForEachUnit(ThreadPool& pool, int64_t rows, int64_t tiles, int64_t blocks_per_row_tile,
                 const Fn& fn) {
  const int threads = pool.num_threads();
  const int64_t work = rows * std::max<int64_t>(tiles, 1) * blocks_per_row_tile;
  const int64_t target = std::clamp<int64_t>(work / kMinUnitBlocks, threads, 4 * threads);
  const int64_t row_chunk = std::max<int64_t>(8, ((rows + target - 1) / target + 7) / 8 * 8);
  const int64_t row_chunks = (rows + row_chunk - 1) / row_chunk;
  const int64_t tile_groups =
      std::clamp<int64_t>((target + row_chunks - 1) / row_chunks, 1, std::max<int64_t>(tiles, 1));
  const int64_t units = row_chunks * tile_groups;
  auto run_unit = [&](int64_t u) {
    const int64_t rc = u % row_chunks, tg = u / row_chunks;
    fn(rc * row_chunk, std::min(rows, (rc + 1) * row_chunk), tiles * tg / tile_groups,
       tiles * (tg + 1) / tile_groups);
  };
  if (threads == 1 || units == 1) {
    for (int64_t u = 0; u < units; ++u) run_unit(u);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.Run([&](int, int) {
    for (int64_t u = next.fetch_add(1, std::memory_order_relaxed); u < units;
         u = next.fetch_add(1, std::memory_order_relaxed)) {
      run_unit(u);
    }
  });
}

// ---- fp32 kernels (F32/F16/BF16 weights, and MatMulExact) ----

struct F32Loader {
  static __m256 Load(const void* row, int64_t k) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + k);
  }
  static float At(const void* row, int64_t k) { return static_cast<const float*>(row)[k]; }
  static constexpr int64_t kElemBytes = 4;
};
struct F16Loader {
  static __m256 Load(const void* row, int64_t k) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
  }
  static float At(const void* row, int64_t k) {
    return HalfToFloat(static_cast<const uint16_t*>(row)[k]);
  }
  static constexpr int64_t kElemBytes = 2;
};
struct Bf16Loader {
  static __m256 Load(const void* row, int64_t k) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float At(const void* row, int64_t k) {
    return Bf16ToFloat(static_cast<const uint16_t*>(row)[k]);
  }
  static constexpr int64_t kElemBytes = 2;
};

// NW weight rows from w_row (row stride row_bytes) against NX activation rows from x (row
// stride cols): y[j * y_stride + i]. Each pair accumulates 8 lanes in column order, then
// the horizontal sum, then the scalar tail: the same sequence for every tile shape.
template <class L, int NX, int NW>
inline void FloatTile(const uint8_t* w_row, int64_t row_bytes, const float* x, int64_t cols,
                      float* y, int64_t y_stride) {
  __m256 acc[NW][NX];
  for (int i = 0; i < NW; ++i) {
    for (int j = 0; j < NX; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  const int64_t cols8 = cols / 8 * 8;
  for (int64_t k = 0; k < cols8; k += 8) {
    for (int i = 0; i < NW; ++i) {
      const __m256 wv = L::Load(w_row + i * row_bytes, k);
      for (int j = 0; j < NX; ++j) {
        acc[i][j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + j * cols + k), acc[i][j]);
      }
    }
  }
  for (int i = 0; i < NW; ++i) {
    for (int j = 0; j < NX; ++j) {
      float sum = simd::HorizontalSum(acc[i][j]);
      for (int64_t k = cols8; k < cols; ++k) {
        sum += L::At(w_row + i * row_bytes, k) * x[j * cols + k];
      }
      y[j * y_stride + i] = sum;
    }
  }
}

template <class L, int NX, int NW>
void FloatRows(const uint8_t* w, int64_t row_bytes, int64_t r_begin, int64_t r_end, const float* x,
               int64_t cols, float* y, int64_t y_stride) {
  int64_t r = r_begin;
  for (; r + NW <= r_end; r += NW) {
    FloatTile<L, NX, NW>(w + r * row_bytes, row_bytes, x, cols, y + r, y_stride);
  }
  for (; r < r_end; ++r)
    FloatTile<L, NX, 1>(w + r * row_bytes, row_bytes, x, cols, y + r, y_stride);
}

// Rows [r_begin, r_end) of w (given as raw rows with stride row_bytes, element type L)
// against activation rows [x_begin, x_end) of x [*, cols]; y is [*, y_stride].
template <class L>
void FloatBlock(const uint8_t* w, int64_t row_bytes, int64_t r_begin, int64_t r_end, const float* x,
                int64_t cols, int64_t x_begin, int64_t x_end, float* y, int64_t y_stride) {
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kRowChunk) {
    const int64_t r1 = std::min(r_end, r0 + kRowChunk);
    for (int64_t j = x_begin; j < x_end; j += kTileRows) {
      const int nx = static_cast<int>(std::min<int64_t>(kTileRows, x_end - j));
      const float* xj = x + j * cols;
      float* yj = y + j * y_stride;
      switch (nx) {
        case 1:
          FloatRows<L, 1, 4>(w, row_bytes, r0, r1, xj, cols, yj, y_stride);
          break;
        case 2:
          FloatRows<L, 2, 4>(w, row_bytes, r0, r1, xj, cols, yj, y_stride);
          break;
        case 3:
          FloatRows<L, 3, 2>(w, row_bytes, r0, r1, xj, cols, yj, y_stride);
          break;
        default:
          FloatRows<L, 4, 2>(w, row_bytes, r0, r1, xj, cols, yj, y_stride);
          break;
      }
    }
  }
}

using FloatBlockFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, const float*, int64_t,
                              int64_t, int64_t, float*, int64_t);

FloatBlockFn FindFloatBlock(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return &FloatBlock<F32Loader>;
    case GgmlType::kF16:
      return &FloatBlock<F16Loader>;
    case GgmlType::kBF16:
      return &FloatBlock<Bf16Loader>;
    default:
      return nullptr;
  }
}

// Activation tiles of [ceil(n / kTileRows), cols / 32], reused across calls by the calling
// thread (MatMul runs on the engine thread; each caller of its own pool gets its own).
std::vector<XTileBlock>& ActivationBuffer() {
  thread_local std::vector<XTileBlock> buffer;
  return buffer;
}

// Quantizing a few rows takes well under a microsecond each: below this many rows, the
// caller does it alone rather than paying for a second parallel region.
constexpr int64_t kParallelQuantizeRows = 16;

}  // namespace

void MatMul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  MatMul(w, x, n, y, pool, kDefaultActivationQuant);
}

void MatMul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool,
            ActivationQuant quant) {
  if (n <= 0 || w.rows <= 0) return;
  const int threads = pool.num_threads();
  if (FloatBlockFn float_block = FindFloatBlock(w.type)) {
    const int64_t row_bytes = RowBytes(w.type, w.cols);
    const uint8_t* data = static_cast<const uint8_t*>(w.data);
    ForEachUnit(pool, w.rows, (n + kTileRows - 1) / kTileRows, w.cols / 8,
                [&](int64_t r0, int64_t r1, int64_t t0, int64_t t1) {
                  float_block(data, row_bytes, r0, r1, x, w.cols, t0 * kTileRows,
                              std::min(n, t1 * kTileRows), y, w.rows);
                });
    return;
  }

  const bool residual = quant == ActivationQuant::kInt8Residual;
  const matmul_internal::QuantKernel kernel = matmul_internal::FindQuantKernel(w.type, residual);
  CHECK(kernel != nullptr) << "MatMul: unsupported weight type " << GgmlTypeName(w.type);
  CHECK_EQ(w.cols % Traits(w.type).block_size, 0) << GgmlTypeName(w.type);
  const int64_t nb = w.cols / 32;
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  std::vector<XTileBlock>& xq = ActivationBuffer();
  if (static_cast<int64_t>(xq.size()) < tiles * nb) xq.resize(tiles * nb);
  if (n < kParallelQuantizeRows || threads == 1) {
    matmul_internal::QuantizeActivations(x, w.cols, 0, n, n, residual, xq.data());
  } else {
    pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
      matmul_internal::QuantizeActivations(x, w.cols, begin, end, n, residual, xq.data());
    });
  }

  ForEachUnit(pool, w.rows, tiles, nb * kTileRows,
              [&](int64_t r_begin, int64_t r_end, int64_t t_begin, int64_t t_end) {
                for (int64_t r0 = r_begin; r0 < r_end; r0 += kRowChunk) {
                  const int64_t r1 = std::min(r_end, r0 + kRowChunk);
                  for (int64_t tile = t_begin; tile < t_end;) {
                    // Two full tiles per call where there are: the widest kernels share each
                    // unpacked weight block among eight rows.
                    const int64_t left = n - tile * kTileRows;
                    const bool two = tile + 1 < t_end && left >= 2 * kTileRows;
                    const int nx =
                        two ? 2 * kTileRows : static_cast<int>(std::min<int64_t>(kTileRows, left));
                    kernel(w, r0, r1, xq.data() + tile * nb, nx, y + tile * kTileRows * w.rows,
                           w.rows);
                    tile += two ? 2 : 1;
                  }
                }
              });
}

void MatMulExact(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  if (n <= 0 || w.rows <= 0) return;
  const int64_t src_row_bytes = RowBytes(w.type, w.cols);
  const int64_t dst_row_bytes = w.cols * static_cast<int64_t>(sizeof(float));
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  pool.ParallelFor((w.rows + kRowChunk - 1) / kRowChunk, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> rows_f32(kRowChunk * w.cols);  // [kRowChunk, cols]
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t r0 = c * kRowChunk;
      const int64_t r1 = std::min(w.rows, r0 + kRowChunk);
      for (int64_t r = r0; r < r1; ++r) {
        DequantizeRow(w.type, data + r * src_row_bytes, rows_f32.data() + (r - r0) * w.cols,
                      w.cols);
      }
      FloatBlock<F32Loader>(reinterpret_cast<const uint8_t*>(rows_f32.data()), dst_row_bytes, 0,
                            r1 - r0, x, w.cols, 0, n, y + r0, w.rows);
    }
  });
}

}  // namespace tandem
