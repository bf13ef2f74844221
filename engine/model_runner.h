// The backend seam: one forward pass of the model over a batch of sequences whose KV lives in
// the backend's paged cache. The CPU runner is engine/cpu_model_runner.h; the CUDA runner
// implements the same interface.
#ifndef TANDEM_ENGINE_MODEL_RUNNER_H_
#define TANDEM_ENGINE_MODEL_RUNNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "engine/model_config.h"

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
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_MODEL_RUNNER_H_
