// The Llama forward pass on the CPU: quantized matmuls, paged GQA attention, SwiGLU.
#ifndef TANDEM_ENGINE_CPU_MODEL_RUNNER_H_
#define TANDEM_ENGINE_CPU_MODEL_RUNNER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "common/thread_pool.h"
#include "engine/model_runner.h"
#include "engine/model_weights.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace tandem {

struct CpuModelRunnerOptions {
  int num_threads = 0;  // 0: every core
  int64_t num_kv_blocks = 1024;
  int block_size = 16;
  KvDtype kv_dtype = KvDtype::kF16;
  // Dequantize weights to fp32 and skip activation quantization: the precision reference.
  bool exact_matmul = false;
};

class CpuModelRunner : public ModelRunner {
 public:
  // `weights` must outlive the runner.
  CpuModelRunner(const ModelWeights& weights, const CpuModelRunnerOptions& options);
  ~CpuModelRunner() override;

  const ModelConfig& config() const override;
  int64_t num_kv_blocks() const override { return options_.num_kv_blocks; }
  int block_size() const override { return options_.block_size; }
  int num_threads() const { return pool_.num_threads(); }
  // Bytes of KV cache memory held (both K and V, every layer).
  int64_t kv_cache_bytes() const;

  absl::Status Forward(absl::Span<const ForwardSeq> seqs, std::vector<float>* logits) override;

  bool kv_on_device() const override { return false; }
  KvDtype kv_dtype() const override { return options_.kv_dtype; }
  int64_t KvLayerBytes(int64_t num_blocks) const override;
  absl::Status ReadKvLayer(int layer, absl::Span<const int32_t> blocks, void* dst) override;
  absl::Status WriteKvLayer(int layer, absl::Span<const int32_t> blocks,
                            const void* src) override;

 private:
  void MatMul(const WeightView& w, const float* x, int64_t n, float* y);
  void Layer(int layer, int64_t n_tokens);
  int64_t KvBlockBytes() const;  // one block of K (or of V) in one layer

  const ModelWeights& weights_;
  CpuModelRunnerOptions options_;
  ThreadPool pool_;
  std::vector<std::vector<uint8_t>> k_cache_;  // per layer [blocks, block_size, kv_heads, hd]
  std::vector<std::vector<uint8_t>> v_cache_;  // per layer, same shape
  std::vector<PagedKvLayer> kv_layers_;

  // Step scratch, resized to the step's token count T.
  std::vector<float> x_;       // [T, hidden] residual stream
  std::vector<float> h_;       // [T, hidden] normed input
  std::vector<float> q_;       // [T, n_heads * head_dim]
  std::vector<float> k_;       // [T, n_kv_heads * head_dim]
  std::vector<float> v_;       // [T, n_kv_heads * head_dim]
  std::vector<float> attn_;    // [T, n_heads * head_dim]
  std::vector<float> gate_;    // [min(T, kMlpChunkTokens), ffn]
  std::vector<float> up_;      // [min(T, kMlpChunkTokens), ffn]
  std::vector<int32_t> positions_;  // [T]
  std::vector<int64_t> slots_;      // [T]
  std::vector<AttentionSeq> attention_seqs_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_CPU_MODEL_RUNNER_H_
