// Throughput of the CUDA kernels against the device's measured ceilings, timed with CUDA
// events after warm-up. Prints one table; exits non-zero if a launch fails or the decode
// attention variants disagree.
//   kernels_bench [--quick]     (--quick: fewer iterations)
//
// Rows: device-to-device copy (the bandwidth ceiling, read + write bytes), paged decode
// attention at batch 64 x context 4096 and 8 x 16384 (32 query / 8 KV heads, head dim 128,
// bf16 KV; bytes = K and V read once; every implementation, each output checked against the
// first's), causal prefill attention at 2k and 8k tokens (32 heads, head dim 128; FLOPs =
// 2 * 2 * S^2 * H * D / 2), and cuBLAS bf16 GEMM.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/tuning.h"

namespace tandem::cuda {
namespace {

#define BENCH_CUDA(expr)                                                                \
  do {                                                                                  \
    const cudaError_t e_ = (expr);                                                      \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                 \
                   cudaGetErrorString(e_));                                             \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

#define BENCH_OK(expr)                                                                  \
  do {                                                                                  \
    const absl::Status s_ = (expr);                                                     \
    if (!s_.ok()) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                 \
                   s_.ToString().c_str());                                              \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

// Deterministic pseudo-random bf16 in [-scale, scale) without a host round trip.
__global__ void FillKernel(bf16* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    const float u = (h & 0xffffff) / 16777216.0f;
    p[i] = __float2bfloat16((2.0f * u - 1.0f) * scale);
  }
}

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  BENCH_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

bf16* RandomBf16(size_t n, uint32_t seed, float scale = 1.0f) {
  bf16* p = DeviceAlloc<bf16>(n);
  FillKernel<<<1024, 256>>>(p, n, seed, scale);
  BENCH_CUDA(cudaGetLastError());
  return p;
}

template <typename T>
T* Upload(const std::vector<T>& v) {
  T* p = DeviceAlloc<T>(v.size());
  BENCH_CUDA(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

int g_warmup = 3, g_iters = 20;
bool g_failed = false;  // a correctness check failed (the bench still prints every row)

// Mean milliseconds per call of fn() over g_iters after g_warmup calls.
template <typename Fn>
double TimeMs(Fn fn) {
  for (int i = 0; i < g_warmup; ++i) fn();
  BENCH_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  BENCH_CUDA(cudaEventRecord(start));
  for (int i = 0; i < g_iters; ++i) fn();
  BENCH_CUDA(cudaEventRecord(stop));
  BENCH_CUDA(cudaEventSynchronize(stop));
  float ms = 0;
  BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  BENCH_CUDA(cudaGetLastError());
  return ms / g_iters;
}

struct Row {
  std::string name, shape;
  double ms;
  std::string metric;  // e.g. "2712 GB/s"
  std::string vs;      // e.g. "91% of copy"
};
std::vector<Row> g_rows;

void Add(const std::string& name, const std::string& shape, double ms, const std::string& metric,
         const std::string& vs) {
  g_rows.push_back({name, shape, ms, metric, vs});
  std::printf("  %-28s %-34s %9.3f ms  %-14s %s\n", name.c_str(), shape.c_str(), ms,
              metric.c_str(), vs.c_str());
  std::fflush(stdout);
}

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double BenchCopy() {
  const size_t bytes = size_t{1} << 30;
  void *a = DeviceAlloc<char>(bytes), *b = DeviceAlloc<char>(bytes);
  BENCH_CUDA(cudaMemset(a, 1, bytes));
  const double ms = TimeMs([&] { BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
  const double gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;  // read + write
  Add("memcpy D2D (ceiling)", "1 GiB", ms, Fmt("%.0f GB/s", gbs), "100% of copy");
  BENCH_CUDA(cudaFree(a));
  BENCH_CUDA(cudaFree(b));
  return gbs;
}

// Times every DecodeAttention implementation on the same inputs and checks each output
// against the first (registers) variant's; a disagreement fails the bench.
void BenchDecode(double copy_gbs, int batch, int ctx, bool shuffled) {
  const int n_heads = 32, n_kv = 8, d = 128, bs = 16;
  const int blocks_per_seq = (ctx + bs - 1) / bs;
  const int64_t num_blocks = int64_t{batch} * blocks_per_seq;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  if (shuffled) std::shuffle(ids.begin(), ids.end(), std::mt19937(7));
  const size_t cache_elems = size_t(num_blocks) * bs * n_kv * d;
  PagedKvCache cache{RandomBf16(cache_elems, 1), RandomBf16(cache_elems, 2), num_blocks, bs, n_kv, d};
  const size_t out_elems = size_t(batch) * n_heads * d;
  bf16* q = RandomBf16(out_elems, 3, 2.0f);
  bf16* out = DeviceAlloc<bf16>(out_elems);
  int32_t* lens = Upload(std::vector<int32_t>(batch, ctx));
  int32_t* tables = Upload(ids);
  DecodeAttentionArgs a;
  a.q = q;
  a.out = out;
  a.seq_lens = lens;
  a.block_tables = tables;
  a.max_blocks_per_seq = blocks_per_seq;
  a.batch = batch;
  a.max_seq_len = ctx;
  a.n_heads = n_heads;
  a.scale = 1.0f / std::sqrt(float(d));
  a.workspace_bytes = DecodeAttentionWorkspaceBytes(a, cache);
  a.workspace = a.workspace_bytes ? DeviceAlloc<char>(a.workspace_bytes) : nullptr;
  const double bytes = 2.0 * double(batch) * ctx * n_kv * d * sizeof(bf16);
  std::vector<float> first;  // [batch, n_heads, d] output of the first variant
  using internal::DecodeVariant;
  for (const DecodeVariant v : {DecodeVariant::kRegisters, DecodeVariant::kPipelined}) {
    BENCH_CUDA(cudaMemset(out, 0xff, out_elems * sizeof(bf16)));  // NaNs
    const double ms =
        TimeMs([&] { BENCH_OK(internal::DecodeAttentionTuned(a, cache, v, nullptr)); });
    std::vector<bf16> host(out_elems);
    BENCH_CUDA(cudaMemcpy(host.data(), out, out_elems * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> got(out_elems);
    for (size_t i = 0; i < out_elems; ++i) got[i] = __bfloat162float(host[i]);
    std::string check;
    if (first.empty()) {
      first = got;
      for (const float x : got) {
        if (!std::isfinite(x)) {
          check = ", NOT FINITE";
          g_failed = true;
          break;
        }
      }
    } else {
      // Same fp32 terms, summed in the same order by both variants: expect equal outputs,
      // allow one bf16 rounding step. A dropped or repeated tile moves outputs by far more.
      double worst = 0.0, err2 = 0.0, ref2 = 0.0;
      bool ok = true;
      for (size_t i = 0; i < out_elems; ++i) {
        const double diff = std::fabs(double(got[i]) - double(first[i]));
        ok = ok && diff <= 1e-5 + std::fabs(double(first[i])) / 128.0;  // false for NaN
        worst = std::max(worst, std::isnan(diff) ? INFINITY : diff);
        err2 += diff * diff;
        ref2 += double(first[i]) * first[i];
      }
      if (!ok) g_failed = true;
      check = Fmt(", max|diff| %.1e", worst) + Fmt(" rel_l2 %.1e vs regs", std::sqrt(err2 / ref2)) +
              (ok ? "" : " MISMATCH");
    }
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    char shape[96];
    std::snprintf(shape, sizeof shape, "B%d ctx%d 32/8h d128 %s %s", batch, ctx,
                  shuffled ? "shuf" : "seq", internal::DecodeVariantName(v));
    Add("decode attention (paged)", shape, ms, Fmt("%.0f GB/s", gbs),
        Fmt("%.0f%% of copy", 100.0 * gbs / copy_gbs) + check);
  }
  for (void* p : {static_cast<void*>(cache.k), static_cast<void*>(cache.v), static_cast<void*>(q),
                  static_cast<void*>(out), static_cast<void*>(lens), static_cast<void*>(tables),
                  a.workspace}) {
    BENCH_CUDA(cudaFree(p));
  }
}

void BenchPrefill(int seq, int n_heads, int n_kv, int d, bool paged,
                  internal::PrefillVariant variant, double peak_tflops) {
  const int bs = 16;
  bf16* q = RandomBf16(size_t(seq) * n_heads * d, 11, 2.0f);
  bf16* k = RandomBf16(size_t(seq) * n_kv * d, 12);
  bf16* v = RandomBf16(size_t(seq) * n_kv * d, 13);
  bf16* out = DeviceAlloc<bf16>(size_t(seq) * n_heads * d);
  int32_t* cu = Upload(std::vector<int32_t>{0, seq});
  int32_t* start = Upload(std::vector<int32_t>{0});
  std::vector<int32_t> ids((seq + bs - 1) / bs);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(5));
  int32_t* table = Upload(ids);
  // Paged: the same k/v buffers viewed as a cache of seq/bs blocks (the slot of position j is
  // table[j/bs]*bs + j%bs, a permutation of rows: same bytes, scattered).
  PagedKvCache cache{k, v, int64_t(ids.size()), bs, n_kv, d};
  PrefillAttentionArgs a;
  a.q = q;
  a.out = out;
  a.cu_seqlens_q = cu;
  a.n_seqs = 1;
  a.max_seqlen_q = seq;
  a.n_heads = n_heads;
  a.n_kv_heads = n_kv;
  a.head_dim = d;
  a.scale = 1.0f / std::sqrt(float(d));
  if (paged) {
    a.cache = &cache;
    a.block_tables = table;
    a.max_blocks_per_seq = static_cast<int>(ids.size());
    a.start_pos = start;
  } else {
    a.k = k;
    a.v = v;
    a.cu_seqlens_k = cu;
  }
  const double ms =
      TimeMs([&] { BENCH_OK(internal::PrefillAttentionTuned(a, variant, nullptr)); });
  const double flops = 2.0 * 2.0 * double(seq) * seq * n_heads * d / 2.0;
  const double tflops = flops / (ms * 1e-3) / 1e12;
  char shape[96];
  std::snprintf(shape, sizeof shape, "S%d %d/%dh d%d%s %s", seq, n_heads, n_kv, d,
                paged ? " paged" : "", internal::PrefillVariantName(variant));
  Add("prefill attention (causal)", shape, ms, Fmt("%.1f TFLOP/s", tflops),
      Fmt("%.0f%% of FA2 450", 100.0 * tflops / 450.0) +
          (peak_tflops > 0 ? Fmt(", %.0f%% of GEMM", 100.0 * tflops / peak_tflops) : ""));
  for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                  static_cast<void*>(out), static_cast<void*>(cu), static_cast<void*>(start),
                  static_cast<void*>(table)}) {
    BENCH_CUDA(cudaFree(p));
  }
}

// Returns TFLOP/s.
double BenchGemm(CublasGemm& gemm, int64_t n, int64_t in, int64_t out_f, double copy_gbs) {
  bf16* x = RandomBf16(size_t(n) * in, 21);
  bf16* w = RandomBf16(size_t(out_f) * in, 22, 0.05f);
  bf16* y = DeviceAlloc<bf16>(size_t(n) * out_f);
  const double ms = TimeMs(
      [&] { BENCH_OK(gemm.Linear(x, w, n, in, out_f, y, GemmOut::kBf16, nullptr)); });
  const double tflops = 2.0 * n * in * out_f / (ms * 1e-3) / 1e12;
  const double gbs = 2.0 * (double(n) * in + double(out_f) * in + double(n) * out_f) / (ms * 1e-3) / 1e9;
  char shape[96];
  std::snprintf(shape, sizeof shape, "%ldx%ld . %ldx%ld^T", long(n), long(in), long(out_f),
                long(in));
  Add("cuBLAS bf16 GEMM", shape, ms, Fmt("%.1f TFLOP/s", tflops),
      Fmt("%.0f GB/s, ", gbs) + Fmt("%.0f%% of copy", 100.0 * gbs / copy_gbs));
  for (void* p : {static_cast<void*>(x), static_cast<void*>(w), static_cast<void*>(y)}) {
    BENCH_CUDA(cudaFree(p));
  }
  return tflops;
}

// Decode-step linear layers (n <= 8 rows): the weight-streaming GEMV against cuBLAS on the
// same inputs, in GB/s of weight read (what bounds a decode step), with their largest
// relative difference. Matrices of 32 MB and more, so L2 (50-60 MB) holds little of them.
void BenchSmallBatch(CublasGemm& gemm, int64_t n, int64_t in, int64_t out_f, const char* what,
                     double copy_gbs) {
  bf16* x = RandomBf16(size_t(n) * in, 31);
  bf16* w = RandomBf16(size_t(out_f) * in, 32, 0.05f);
  float* y_gemv = DeviceAlloc<float>(size_t(n) * out_f);
  float* y_cublas = DeviceAlloc<float>(size_t(n) * out_f);
  double ms[2];
  for (int k = 0; k < 2; ++k) {
    gemm.set_small_batch_kernel(k == 0);
    float* y = k == 0 ? y_gemv : y_cublas;
    ms[k] = TimeMs(
        [&] { BENCH_OK(gemm.Linear(x, w, n, in, out_f, y, GemmOut::kF32, nullptr)); });
  }
  gemm.set_small_batch_kernel(true);
  std::vector<float> a(size_t(n) * out_f), b(a.size());
  BENCH_CUDA(cudaMemcpy(a.data(), y_gemv, a.size() * 4, cudaMemcpyDeviceToHost));
  BENCH_CUDA(cudaMemcpy(b.data(), y_cublas, b.size() * 4, cudaMemcpyDeviceToHost));
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(a[i] - b[i])));
    max_ref = std::max(max_ref, double(std::abs(b[i])));
  }
  const double bytes = 2.0 * double(out_f) * in;
  char shape[96];
  std::snprintf(shape, sizeof shape, "%s n=%ld %ldx%ld", what, long(n), long(out_f), long(in));
  for (int k = 0; k < 2; ++k) {
    const double gbs = bytes / (ms[k] * 1e-3) / 1e9;
    Add(k == 0 ? "small-batch GEMV" : "cuBLAS (same shape)", shape, ms[k],
        Fmt("%.0f GB/s", gbs),
        Fmt("%.0f%% of copy", 100.0 * gbs / copy_gbs) +
            (k == 0 ? Fmt(", %.2fx cuBLAS", ms[1] / ms[0]) +
                          Fmt(", max|diff|/max|y| %.1e", max_diff / std::max(max_ref, 1e-30))
                    : ""));
  }
  for (void* p : {static_cast<void*>(x), static_cast<void*>(w), static_cast<void*>(y_gemv),
                  static_cast<void*>(y_cublas)}) {
    BENCH_CUDA(cudaFree(p));
  }
}

int Main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      g_warmup = 2;
      g_iters = 5;
    }
  }
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::printf("kernels_bench: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              prop.totalGlobalMem / double(1 << 30));
  std::printf("  %-28s %-34s %12s  %-14s %s\n", "kernel", "shape", "time", "rate", "vs");

  const double copy_gbs = BenchCopy();
  auto gemm_or = CublasGemm::Create();
  BENCH_OK(gemm_or.status());
  CublasGemm& gemm = **gemm_or;
  const double peak = BenchGemm(gemm, 8192, 8192, 8192, copy_gbs);
  BenchGemm(gemm, 64, 4096, 14336, copy_gbs);  // decode-sized: weight-bandwidth bound
  // Llama-3-8B's decode-step matrices (what cuda_decode_bench's batch-1 step reads).
  for (const int64_t n : {1, 8}) {
    BenchSmallBatch(gemm, n, 4096, 6144, "qkv", copy_gbs);
    BenchSmallBatch(gemm, n, 4096, 4096, "o", copy_gbs);
    BenchSmallBatch(gemm, n, 4096, 28672, "gate|up", copy_gbs);
    BenchSmallBatch(gemm, n, 14336, 4096, "down", copy_gbs);
  }
  BenchSmallBatch(gemm, 1, 4096, 128256, "lm head", copy_gbs);

  BenchDecode(copy_gbs, 64, 4096, /*shuffled=*/true);
  BenchDecode(copy_gbs, 64, 4096, /*shuffled=*/false);
  BenchDecode(copy_gbs, 8, 16384, /*shuffled=*/true);

  using internal::PrefillVariant;
  for (const int seq : {2048, 8192}) {
    for (const PrefillVariant v : {PrefillVariant::kWarps8, PrefillVariant::kWarps4Rows32,
                                   PrefillVariant::kWarps4Occ2, PrefillVariant::kWarps4Occ3}) {
      BenchPrefill(seq, 32, 8, 128, /*paged=*/false, v, peak);
    }
  }
  BenchPrefill(8192, 32, 8, 128, /*paged=*/true, PrefillVariant::kDefault, peak);
  BenchPrefill(8192, 32, 32, 128, /*paged=*/false, PrefillVariant::kDefault, peak);
  BenchPrefill(8192, 32, 8, 64, /*paged=*/false, PrefillVariant::kWarps4Occ2, peak);
  BenchPrefill(8192, 32, 8, 64, /*paged=*/false, PrefillVariant::kWarps8, peak);

  std::printf("\n| kernel | shape | ms | rate | vs |\n|---|---|---|---|---|\n");
  for (const Row& r : g_rows) {
    std::printf("| %s | %s | %.3f | %s | %s |\n", r.name.c_str(), r.shape.c_str(), r.ms,
                r.metric.c_str(), r.vs.c_str());
  }
  if (g_failed) std::printf("kernels_bench: FAILED: decode attention variants disagree\n");
  return g_failed ? 1 : 0;
}

}  // namespace
}  // namespace tandem::cuda

int main(int argc, char** argv) { return tandem::cuda::Main(argc, argv); }
