// Decode-step benchmark of CudaModelRunner at a real size: a Llama-3-8B-shaped model (32
// layers, hidden 4096, 32/8 heads, FFN 14336, vocab 128256) with synthetic bf16 weights made
// on the GPU (CudaModelRunner::CreateSynthetic), greedy sampling on the device
// (ForwardGreedy: no logits to the host). Times decode steps at batch 1, 64 and 256 with a
// steady clock (each step ends with a stream synchronize) after warm-up, and compares batch
// 1 with the weight-read floor: bytes one step must read / the device-to-device copy
// bandwidth measured here (read + write bytes, as kernels_bench counts it). Every batch is
// timed twice over the same positions: eager (every kernel launched one by one) and with
// CUDA graphs (CudaModelRunnerOptions::use_cuda_graphs; the first warm-up step captures).
//
// Usage: cuda_decode_bench [--preset=llama3-8b] [--context=512] [--steps=30] [--warmup=3]
//                          [--batches=1,64,256] [--graphs=both|on|off]
// Lines starting "[ decode   ]" are the summary. Exit 1 on any error, 0 otherwise.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/cuda/cuda_model_runner.h"
#include "engine/model_config.h"

namespace tandem {
namespace {

struct Flags {
  std::string preset = "llama3-8b";
  int context = 512;
  int steps = 30;
  int warmup = 3;
  std::vector<int> batches = {1, 64, 256};
  std::string graphs = "both";
};

bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      const size_t n = std::strlen(name);
      return a.compare(0, n, name) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = value("--preset=")) {
      f->preset = v;
    } else if (const char* v = value("--context=")) {
      if (!absl::SimpleAtoi(v, &f->context)) return false;
    } else if (const char* v = value("--steps=")) {
      if (!absl::SimpleAtoi(v, &f->steps)) return false;
    } else if (const char* v = value("--warmup=")) {
      if (!absl::SimpleAtoi(v, &f->warmup)) return false;
    } else if (const char* v = value("--graphs=")) {
      f->graphs = v;
      if (f->graphs != "both" && f->graphs != "on" && f->graphs != "off") return false;
    } else if (const char* v = value("--batches=")) {
      f->batches.clear();
      for (absl::string_view part : absl::StrSplit(v, ',')) {
        int b = 0;
        if (!absl::SimpleAtoi(part, &b) || b <= 0) return false;
        f->batches.push_back(b);
      }
    } else {
      return false;
    }
  }
  return f->context > 0 && f->steps > 0 && f->warmup >= 0 && !f->batches.empty();
}

#define BENCH_CUDA_OK(expr)                                                    \
  do {                                                                         \
    const cudaError_t bench_err_ = (expr);                                     \
    if (bench_err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(bench_err_)); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Device-to-device copy of 1 GiB, 10 times after 2 warm-ups; read + write bytes per second.
int MeasureCopyBandwidth(double* bytes_per_s) {
  constexpr size_t kBytes = size_t{1} << 30;
  void* a = nullptr;
  void* b = nullptr;
  BENCH_CUDA_OK(cudaMalloc(&a, kBytes));
  BENCH_CUDA_OK(cudaMalloc(&b, kBytes));
  BENCH_CUDA_OK(cudaMemset(a, 1, kBytes));
  cudaEvent_t e0, e1;
  BENCH_CUDA_OK(cudaEventCreate(&e0));
  BENCH_CUDA_OK(cudaEventCreate(&e1));
  for (int i = 0; i < 2; ++i)
    BENCH_CUDA_OK(cudaMemcpyAsync(b, a, kBytes, cudaMemcpyDeviceToDevice));
  constexpr int kReps = 10;
  BENCH_CUDA_OK(cudaEventRecord(e0));
  for (int i = 0; i < kReps; ++i)
    BENCH_CUDA_OK(cudaMemcpyAsync(b, a, kBytes, cudaMemcpyDeviceToDevice));
  BENCH_CUDA_OK(cudaEventRecord(e1));
  BENCH_CUDA_OK(cudaEventSynchronize(e1));
  float ms = 0;
  BENCH_CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
  *bytes_per_s = 2.0 * kBytes * kReps / (ms * 1e-3);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return 0;
}

int Run(const Flags& flags) {
  int n_dev = 0;
  if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
    std::fprintf(stderr, "no CUDA device visible\n");
    return 1;
  }
  cudaDeviceProp prop;
  BENCH_CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  double copy_bw = 0;
  if (MeasureCopyBandwidth(&copy_bw) != 0) return 1;
  std::printf("[ decode   ] device %s; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              copy_bw / 1e9);

  absl::StatusOr<ModelConfig> config = ModelConfig::Preset(flags.preset);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
    return 1;
  }
  const ModelConfig& c = *config;
  const int max_batch = *std::max_element(flags.batches.begin(), flags.batches.end());
  CudaModelRunnerOptions options;
  options.block_size = 16;
  const int max_pos = flags.context + flags.warmup + flags.steps + 1;
  const int blocks_per_seq = (max_pos + options.block_size - 1) / options.block_size;
  options.num_kv_blocks = static_cast<int64_t>(max_batch) * blocks_per_seq;
  const auto t_create = std::chrono::steady_clock::now();
  auto runner_or = CudaModelRunner::CreateSynthetic(c, options, /*seed=*/20261127);
  if (!runner_or.ok()) {
    std::fprintf(stderr, "CreateSynthetic: %s\n", runner_or.status().ToString().c_str());
    return 1;
  }
  CudaModelRunner& runner = **runner_or;
  std::printf(
      "[ decode   ] %s synthetic bf16: weights %.2f GB, KV cache %.2f GB (%lld blocks of 16), "
      "made in %.2f s\n",
      c.name.c_str(), runner.weight_bytes() / 1e9, runner.kv_cache_bytes() / 1e9,
      static_cast<long long>(options.num_kv_blocks), Seconds(t_create));

  // What one decode step must read, besides the KV: every layer matrix, the LM head, the
  // norm vectors and one embedding row per sequence.
  const int64_t hidden = c.hidden, ffn = c.ffn_dim, vocab = c.vocab_size;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  const int64_t layer_matrix_bytes =
      2 * ((q_dim + 2 * kv_dim) * hidden + hidden * q_dim + 2 * ffn * hidden + hidden * ffn);
  const int64_t step_weight_bytes =
      c.n_layers * layer_matrix_bytes + 2 * vocab * hidden + 4 * (2 * c.n_layers + 1) * hidden;

  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  for (int batch : flags.batches) {
    std::vector<std::vector<int32_t>> tables(batch);
    for (int i = 0; i < batch; ++i) {
      for (int b = 0; b < blocks_per_seq; ++b) tables[i].push_back(i * blocks_per_seq + b);
    }
    std::vector<int32_t> cur(batch), next;
    for (int32_t& t : cur) t = token(rng);
    std::vector<ForwardSeq> seqs(batch);
    double prefill_ms = -1;
    if (batch == 1) {
      // A real prompt for the single sequence: its decode steps attend to real keys.
      std::vector<int32_t> prompt(flags.context);
      for (int32_t& t : prompt) t = token(rng);
      seqs[0].tokens = prompt;
      seqs[0].start_pos = 0;
      seqs[0].block_table = tables[0];
      seqs[0].compute_logits = true;
      for (int rep = 0; rep < 2; ++rep) {  // the first one warms cuBLAS up
        const auto t0 = std::chrono::steady_clock::now();
        const absl::Status s = runner.ForwardGreedy(seqs, &next);
        if (!s.ok()) {
          std::fprintf(stderr, "prefill: %s\n", s.ToString().c_str());
          return 1;
        }
        prefill_ms = 1e3 * Seconds(t0);
      }
      cur = next;
    }
    // Other batches decode over a zeroed cache of `context` positions: the same reads.
    auto step = [&](int pos) {
      for (int i = 0; i < batch; ++i) {
        seqs[i].tokens = absl::MakeConstSpan(&cur[i], 1);
        seqs[i].start_pos = pos;
        seqs[i].block_table = tables[i];
        seqs[i].compute_logits = true;
      }
      const absl::Status s = runner.ForwardGreedy(seqs, &next);
      if (s.ok()) cur = next;
      return s;
    };
    // Both modes decode the same positions (the second rewrites the first's KV slots).
    const std::vector<int32_t> cur0 = cur;
    std::vector<bool> modes;
    if (flags.graphs != "on") modes.push_back(false);
    if (flags.graphs != "off") modes.push_back(true);
    double eager_ms = -1, graph_ms = -1;
    for (const bool graphs : modes) {
      runner.set_use_cuda_graphs(graphs);
      cur = cur0;
      int pos = flags.context;
      for (int w = 0; w < flags.warmup; ++w) {
        const absl::Status s = step(pos++);
        if (!s.ok()) {
          std::fprintf(stderr, "decode batch %d: %s\n", batch, s.ToString().c_str());
          return 1;
        }
      }
      const CudaModelRunner::GraphStats before = runner.graph_stats();
      const int first_timed = pos;
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < flags.steps; ++s) {
        const absl::Status st = step(pos++);
        if (!st.ok()) {
          std::fprintf(stderr, "decode batch %d: %s\n", batch, st.ToString().c_str());
          return 1;
        }
      }
      const double step_s = Seconds(t0) / flags.steps;
      const CudaModelRunner::GraphStats& after = runner.graph_stats();
      // Mean context over the timed steps (keys read per sequence and layer).
      const double ctx = first_timed + (flags.steps - 1) / 2.0 + 1;
      const double kv_bytes = static_cast<double>(batch) * ctx * c.n_layers * 2 * kv_dim * 2;
      const double bytes = step_weight_bytes + 2.0 * batch * hidden + kv_bytes;
      const double floor_s = bytes / copy_bw;
      std::printf(
          "[ decode   ] batch %3d ctx %d %-9s: %7.3f ms/step, %8.1f tokens/s; reads %.2f GB/step "
          "(weights %.2f + KV %.2f) -> floor %.3f ms at copy bandwidth, %.2fx floor, %.0f GB/s; "
          "graph launches %lld, captures %lld in the timed steps%s\n",
          batch, first_timed, graphs ? "graphs" : "no-graphs", 1e3 * step_s, batch / step_s,
          bytes / 1e9, step_weight_bytes / 1e9, kv_bytes / 1e9, 1e3 * floor_s, step_s / floor_s,
          bytes / step_s / 1e9, static_cast<long long>(after.launches - before.launches),
          static_cast<long long>(after.captures - before.captures),
          batch == 1 ? " (target <= 1.2x)" : "");
      (graphs ? graph_ms : eager_ms) = 1e3 * step_s;
      std::fflush(stdout);
    }
    if (eager_ms > 0 && graph_ms > 0) {
      std::printf("[ decode   ] batch %3d: CUDA graphs %.3f ms/step vs eager %.3f ms/step: %.2fx\n",
                  batch, graph_ms, eager_ms, eager_ms / graph_ms);
    }
    if (prefill_ms >= 0) {
      std::printf("[ decode   ] prefill 1 x %d tokens: %.2f ms (%.1f TFLOP/s in the layer GEMMs)\n",
                  flags.context, prefill_ms,
                  2.0 * flags.context * (c.n_layers * layer_matrix_bytes / 2.0) /
                      (prefill_ms * 1e-3) / 1e12);
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  tandem::Flags flags;
  if (!tandem::ParseFlags(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: %s [--preset=llama3-8b] [--context=512] [--steps=30] [--warmup=3] "
                 "[--batches=1,64,256] [--graphs=both|on|off]\n",
                 argv[0]);
    return 2;
  }
  return tandem::Run(flags);
}
