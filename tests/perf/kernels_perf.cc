// Microbenchmarks of the CPU kernels (not a test; not in ctest).
//
//   kernels_perf [threads=2] [filter: pool|matmul|types|model|attention] [int8|res]
//
// Reports the thread pool's dispatch latency, MatMul time per shape and batch size, and the
// matmul time of one SmolLM2-135M decode step (30 layers of Q4_1 + the Q8_0 LM head) with
// every layer's weights at its own address, as the model holds them.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"

namespace tandem {
namespace {

ActivationQuant g_quant = kDefaultActivationQuant;  // argv[3]: "int8" or "res"

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// CPU time of the whole process (all threads): on a shared, loaded machine this is the
// honest cost, where wall time also counts the time other processes held the cores.
double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Random bytes with sane fp16 scales; as fast to make as memset, and as costly to read as
// real weights.
std::vector<uint8_t> RandomWeights(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<uint8_t> data(rows * RowBytes(type, cols));
  for (size_t i = 0; i + 4 <= data.size(); i += 4) {
    const uint32_t r = rng();
    std::memcpy(&data[i], &r, 4);
  }
  const int64_t bsize = Traits(type).type_size;
  const uint16_t scale = FloatToHalf(0.01f);
  for (size_t b = 0; b + bsize <= data.size(); b += bsize) {
    if (type == GgmlType::kQ4_0 || type == GgmlType::kQ4_1 || type == GgmlType::kQ8_0) {
      std::memcpy(&data[b], &scale, 2);
      if (type == GgmlType::kQ4_1) std::memcpy(&data[b + 2], &scale, 2);
    } else if (type == GgmlType::kQ6_K) {
      std::memcpy(&data[b + 208], &scale, 2);
    } else if (type == GgmlType::kF16 || type == GgmlType::kBF16) {
      const float v = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 1000.0f;
      const uint16_t h = type == GgmlType::kF16 ? FloatToHalf(v) : FloatToBf16(v);
      std::memcpy(&data[b], &h, 2);
    } else if (type == GgmlType::kF32) {
      const float v = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 1000.0f;
      std::memcpy(&data[b], &v, 4);
    }
  }
  return data;
}

std::vector<float> RandomActivations(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

void BenchPool(ThreadPool& pool) {
  const int iters = 20000;
  pool.Run([](int, int) {});
  const auto t = Clock::now();
  for (int i = 0; i < iters; ++i) pool.Run([](int, int) {});
  std::printf("ThreadPool(%d) empty Run: %.2f us\n", pool.num_threads(),
              SecondsSince(t) / iters * 1e6);
}

void BenchMatMul(ThreadPool& pool, GgmlType type, int64_t rows, int64_t cols) {
  std::mt19937 rng(1);
  const std::vector<uint8_t> w = RandomWeights(type, rows, cols, rng);
  const WeightView view{type, rows, cols, w.data()};
  for (int64_t n : {1, 8, 32, 128, 512}) {
    const std::vector<float> x = RandomActivations(n * cols, rng);
    std::vector<float> y(n * rows);
    MatMul(view, x.data(), n, y.data(), pool, g_quant);
    const double flops_per = 2.0 * rows * cols * n;
    const int iters = std::max(3, static_cast<int>(2e9 / flops_per));
    const auto t = Clock::now();
    const double c0 = CpuSeconds();
    for (int i = 0; i < iters; ++i) MatMul(view, x.data(), n, y.data(), pool, g_quant);
    const double s = SecondsSince(t) / iters;
    const double cpu = (CpuSeconds() - c0) / iters;
    std::printf(
        "  %-5s %6ldx%-5ld n=%-4ld %9.1f us  %7.1f GFLOP/s  %6.1f us/row-of-x  cpu %9.1f us "
        "(%5.1f GFLOP/cpu-s)\n",
        GgmlTypeName(type).c_str(), rows, cols, n, s * 1e6, flops_per / s * 1e-9, s * 1e6 / n,
        cpu * 1e6, flops_per / cpu * 1e-9);
  }
}

// One decode step's matmuls for SmolLM2-135M: per layer q, k, v, o, gate, up, down, then
// the LM head; each layer's matrices at distinct addresses (~70 MB in all).
void BenchModelStep(ThreadPool& pool, GgmlType layer_type, GgmlType head_type) {
  const int layers = 30;
  const int64_t hidden = 576, kv = 192, ffn = 1536, vocab = 49152;
  struct Shape {
    int64_t rows, cols;
  };
  const Shape shapes[] = {{hidden, hidden}, {kv, hidden},  {kv, hidden}, {hidden, hidden},
                          {ffn, hidden},    {ffn, hidden}, {hidden, ffn}};
  std::mt19937 rng(2);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<WeightView> views;
  for (int l = 0; l < layers; ++l) {
    for (const Shape& s : shapes) {
      storage.push_back(RandomWeights(layer_type, s.rows, s.cols, rng));
      views.push_back({layer_type, s.rows, s.cols, storage.back().data()});
    }
  }
  storage.push_back(RandomWeights(head_type, vocab, hidden, rng));
  views.push_back({head_type, vocab, hidden, storage.back().data()});

  for (int64_t n : {1, 8, 32, 128}) {
    const std::vector<float> x = RandomActivations(n * ffn, rng);
    std::vector<float> y(n * vocab);
    auto step = [&] {
      for (const WeightView& v : views) MatMul(v, x.data(), n, y.data(), pool, g_quant);
    };
    step();
    const int iters = n <= 8 ? 20 : 5;
    const auto t = Clock::now();
    const double c0 = CpuSeconds();
    double best = 1e30;  // the least disturbed step, on a machine shared with others
    for (int i = 0; i < iters; ++i) {
      const auto ti = Clock::now();
      step();
      best = std::min(best, SecondsSince(ti));
    }
    const double s = SecondsSince(t) / iters;
    const double cpu = (CpuSeconds() - c0) / iters;
    // The LM head alone, for the split.
    const auto th = Clock::now();
    for (int i = 0; i < iters; ++i) MatMul(views.back(), x.data(), n, y.data(), pool, g_quant);
    const double sh = SecondsSince(th) / iters;
    std::printf(
        "  model step %s+%s n=%-4ld %8.2f ms (best %8.2f ms; LM head %6.2f ms, cpu %8.2f ms)"
        "  => %7.1f tokens/s matmul-only (best)\n",
        GgmlTypeName(layer_type).c_str(), GgmlTypeName(head_type).c_str(), n, s * 1e3, best * 1e3,
        sh * 1e3, cpu * 1e3, n / best);
  }
}

void BenchAttention(ThreadPool& pool, int n_seqs, int ctx) {
  const int bs = 16, n_kv = 3, hd = 64, n_heads = 9;
  const int blocks_per_seq = (ctx + 1 + bs - 1) / bs;
  const int64_t num_blocks = int64_t{n_seqs} * blocks_per_seq;
  std::vector<uint16_t> k(num_blocks * bs * n_kv * hd, FloatToHalf(0.01f)), v(k);
  PagedKvLayer layer{k.data(), v.data(), KvDtype::kF16, num_blocks, bs, n_kv, hd};
  std::vector<int32_t> table(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i) table[i] = static_cast<int32_t>(i);
  std::mt19937 rng(3);
  const std::vector<float> q = RandomActivations(int64_t{n_seqs} * n_heads * hd, rng);
  std::vector<float> out(q.size());
  std::vector<AttentionSeq> seqs;
  for (int s = 0; s < n_seqs; ++s) {
    seqs.push_back({q.data() + s * n_heads * hd, out.data() + s * n_heads * hd, 1, ctx,
                    table.data() + s * blocks_per_seq});
  }
  PagedAttention(seqs, layer, n_heads, 0.125f, pool);
  const int iters = 50;
  const auto t = Clock::now();
  const double c0 = CpuSeconds();
  for (int i = 0; i < iters; ++i) PagedAttention(seqs, layer, n_heads, 0.125f, pool);
  std::printf("  attention decode seqs=%d ctx=%d: %.1f us per layer (cpu %.1f us)\n", n_seqs, ctx,
              SecondsSince(t) / iters * 1e6, (CpuSeconds() - c0) / iters * 1e6);
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const std::string filter = argc > 2 ? argv[2] : "";
  if (argc > 3) {
    g_quant =
        std::string(argv[3]) == "int8" ? ActivationQuant::kInt8 : ActivationQuant::kInt8Residual;
  }
  std::printf("activations: %s\n", g_quant == ActivationQuant::kInt8 ? "int8" : "int8+residual");
  auto want = [&](const char* name) { return filter.empty() || filter == name; };
  ThreadPool pool(threads);
  if (want("pool")) BenchPool(pool);
  if (want("matmul")) {
    std::printf("MatMul, %d threads:\n", threads);
    BenchMatMul(pool, GgmlType::kQ4_1, 1536, 576);
    BenchMatMul(pool, GgmlType::kQ4_1, 576, 1536);
    BenchMatMul(pool, GgmlType::kQ8_0, 49152, 576);
  }
  if (want("types")) {
    for (GgmlType t : {GgmlType::kQ4_0, GgmlType::kQ6_K, GgmlType::kF16, GgmlType::kF32}) {
      BenchMatMul(pool, t, 1536, 1536);  // Q6_K needs cols % 256 == 0
    }
  }
  if (want("model")) {
    std::printf("Decode step matmuls, %d threads:\n", threads);
    BenchModelStep(pool, GgmlType::kQ4_1, GgmlType::kQ8_0);
  }
  if (want("attention")) {
    BenchAttention(pool, 1, 512);
    BenchAttention(pool, 32, 512);
  }
  return 0;
}
