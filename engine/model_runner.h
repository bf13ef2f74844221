// The backend seam: one forward pass of the model over a batch of sequences whose KV lives in
// the backend's paged cache. The CPU runner is engine/cpu_model_runner.h; the CUDA runner
// implements the same interface.
#ifndef TANDEM_ENGINE_MODEL_RUNNER_H_
#define TANDEM_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/model_config.h"
#include "kernels/cpu/attention.h"

namespace tandem {

// One sequence's part of a step: tokens [start_pos, start_pos + tokens.size()) are fed; the
// KV of positions [0, start_pos) is already in the cache at the blocks in block_table, which
// covers every position up to start_pos + tokens.size().
struct ForwardSeq {
  absl::Span<const int32_t> tokens;
  int32_t start_pos = 0;
  absl::Span<const int32_t> block_table;
  bool compute_logits = false;  // logits for the last fed token
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const ModelConfig& config() const = 0;
  virtual int64_t num_kv_blocks() const = 0;
  virtual int block_size() const = 0;

  // Runs the batch and writes the logits of every sequence with compute_logits, in order, to
  // `logits` ([n_logits, vocab_size]). Writes the fed tokens' KV into the cache.
  virtual absl::Status Forward(absl::Span<const ForwardSeq> seqs, std::vector<float>* logits) = 0;

  // Forward with greedy sampling: `tokens` gets ArgMax (engine/sampler.h: the lowest id
  // among the largest logits, NaN ignored) of every sequence with compute_logits, in order.
  // The default runs Forward and ArgMax on the host. A runner that computes the argmax where
  // the logits are (the CUDA runner: [n] ids cross to the host instead of [n, vocab] fp32)
  // overrides it and answers true to greedy_on_device(), and the engine then uses it for
  // every step whose sampled sequences are all greedy.
  virtual absl::Status ForwardGreedy(absl::Span<const ForwardSeq> seqs,
                                     std::vector<int32_t>* tokens);
  virtual bool greedy_on_device() const { return false; }

  // KV access for moving a sequence's cache between workers, one layer at a time. A packed
  // layer holds K of `blocks`, then V of `blocks`, each [blocks.size(), block_size,
  // n_kv_heads, head_dim] in the runner's KV dtype: KvLayerBytes(blocks.size()) bytes.
  // Buffers live where the runner computes (host memory for the CPU runner, device memory
  // for the CUDA runner); `kv_on_device()` tells which.
  virtual bool kv_on_device() const = 0;
  virtual KvDtype kv_dtype() const = 0;
  // The device index of a runner whose KV is on a device (CUDA ordinal); -1 otherwise.
  virtual int device() const { return -1; }
  virtual int64_t KvLayerBytes(int64_t num_blocks) const = 0;
  virtual absl::Status ReadKvLayer(int layer, absl::Span<const int32_t> blocks, void* dst) = 0;
  virtual absl::Status WriteKvLayer(int layer, absl::Span<const int32_t> blocks,
                                    const void* src) = 0;

  // Called by Forward, on its thread, once layer `layer`'s KV of the whole batch is in the
  // cache (layers in increasing order), so a prefill worker can stream a layer while the
  // next one computes. For a device runner "in the cache" means ordered before any later
  // ReadKvLayer of the layer: the read waits on the device for the write. Runners that
  // cannot tell report nothing; Engine reports the remaining layers after Forward returns.
  // Empty: no calls.
  void set_layer_done_callback(std::function<void(int layer)> callback) {
    layer_done_ = std::move(callback);
  }

 protected:
  void NotifyLayerDone(int layer) {
    if (layer_done_) layer_done_(layer);
  }

 private:
  std::function<void(int layer)> layer_done_;
};

// Checks shared by every runner, so each backend refuses a bad batch the same way
// (INVALID_ARGUMENT naming the value): non-empty sequences inside the context, block tables
// that cover them with ids in [0, num_kv_blocks), token ids inside the vocabulary.
absl::Status ValidateForwardBatch(const ModelConfig& config, absl::Span<const ForwardSeq> seqs,
                                  int block_size, int64_t num_kv_blocks);
// A layer index and block ids for ReadKvLayer / WriteKvLayer.
absl::Status ValidateKvAccess(const ModelConfig& config, int layer,
                              absl::Span<const int32_t> blocks, int64_t num_kv_blocks);

}  // namespace tandem

#endif  // TANDEM_ENGINE_MODEL_RUNNER_H_
