#include "engine/model_runner.h"

#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/sampler.h"

namespace tandem {
namespace {

absl::Status CheckBlockIds(absl::Span<const int32_t> blocks, int64_t num_kv_blocks) {
  for (int32_t b : blocks) {
    if (b < 0 || b >= num_kv_blocks) {
      return absl::InvalidArgumentError(
          absl::StrFormat("block id %d outside [0, %d)", b, num_kv_blocks));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateForwardBatch(const ModelConfig& config, absl::Span<const ForwardSeq> seqs,
                                  int block_size, int64_t num_kv_blocks) {
  for (const ForwardSeq& s : seqs) {
    if (s.tokens.empty()) return absl::InvalidArgumentError("a sequence feeds no tokens");
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (s.start_pos < 0 || end > config.context_length) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "positions [%d, %d) outside the context of %d", s.start_pos, end,
          config.context_length));
    }
    if (static_cast<int64_t>(s.block_table.size()) * block_size < end) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "block table of %d blocks cannot hold %d tokens", s.block_table.size(), end));
    }
    if (absl::Status status = CheckBlockIds(s.block_table, num_kv_blocks); !status.ok()) {
      return status;
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= config.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrFormat("token id %d outside the vocabulary of %d", t, config.vocab_size));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKvAccess(const ModelConfig& config, int layer,
                              absl::Span<const int32_t> blocks, int64_t num_kv_blocks) {
  if (layer < 0 || layer >= config.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %d outside [0, %d)", layer, config.n_layers));
  }
  return CheckBlockIds(blocks, num_kv_blocks);
}

absl::Status ModelRunner::ForwardGreedy(absl::Span<const ForwardSeq> seqs,
                                        std::vector<int32_t>* tokens) {
  std::vector<float> logits;
  RETURN_IF_ERROR(Forward(seqs, &logits));
  const int64_t vocab = config().vocab_size;
  const int64_t rows = vocab > 0 ? static_cast<int64_t>(logits.size()) / vocab : 0;
  tokens->resize(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    (*tokens)[r] = ArgMax(absl::MakeConstSpan(logits).subspan(r * vocab, vocab));
  }
  return absl::OkStatus();
}

}  // namespace tandem
