#include "engine/cpu_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant.h"

namespace tandem {
namespace {

// Tokens per pass through the MLP; large enough to keep the matmuls compute-bound.
constexpr int64_t kMlpChunkTokens = 256;

}  // namespace

CpuModelRunner::CpuModelRunner(const ModelWeights& weights, const CpuModelRunnerOptions& options)
    : weights_(weights), options_(options), pool_(options.num_threads) {
  const ModelConfig& c = weights_.config();
  CHECK_GT(options_.num_kv_blocks, 0);
  CHECK_GT(options_.block_size, 0);
  CHECK(options_.kv_dtype != KvDtype::kBF16) << "the CPU runner keeps KV in f16 or f32";
  const int64_t elem_bytes = KvDtypeBytes(options_.kv_dtype);
  const int64_t layer_bytes = options_.num_kv_blocks * options_.block_size * c.n_kv_heads *
                              c.head_dim * elem_bytes;
  k_cache_.resize(c.n_layers);
  v_cache_.resize(c.n_layers);
  kv_layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    // Zero-filled on first touch by the kernel's pages; no explicit memset needed since every
    // slot is written before it is read.
    k_cache_[l].resize(layer_bytes);
    v_cache_[l].resize(layer_bytes);
    PagedKvLayer& kv = kv_layers_[l];
    kv.k = k_cache_[l].data();
    kv.v = v_cache_[l].data();
    kv.dtype = options_.kv_dtype;
    kv.num_blocks = options_.num_kv_blocks;
    kv.block_size = options_.block_size;
    kv.n_kv_heads = c.n_kv_heads;
    kv.head_dim = c.head_dim;
  }
}

CpuModelRunner::~CpuModelRunner() = default;

const ModelConfig& CpuModelRunner::config() const { return weights_.config(); }

int64_t CpuModelRunner::kv_cache_bytes() const {
  int64_t total = 0;
  for (size_t l = 0; l < k_cache_.size(); ++l) total += k_cache_[l].size() + v_cache_[l].size();
  return total;
}

void CpuModelRunner::MatMul(const WeightView& w, const float* x, int64_t n, float* y) {
  if (options_.exact_matmul) {
    tandem::MatMulExact(w, x, n, y, pool_);
  } else {
    tandem::MatMul(w, x, n, y, pool_);
  }
}

absl::Status CpuModelRunner::Forward(absl::Span<const ForwardSeq> seqs,
                                     std::vector<float>* logits) {
  const ModelConfig& c = weights_.config();
  const int64_t hidden = c.hidden;
  const int bs = options_.block_size;

  // Validate the batch before touching the cache.
  RETURN_IF_ERROR(ValidateForwardBatch(c, seqs, bs, options_.num_kv_blocks));
  int64_t n_tokens = 0;
  int64_t n_logits = 0;
  for (const ForwardSeq& s : seqs) {
    n_tokens += static_cast<int64_t>(s.tokens.size());
    n_logits += s.compute_logits ? 1 : 0;
  }

  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  x_.resize(n_tokens * hidden);
  h_.resize(n_tokens * hidden);
  q_.resize(n_tokens * q_dim);
  k_.resize(n_tokens * kv_dim);
  v_.resize(n_tokens * kv_dim);
  attn_.resize(n_tokens * q_dim);
  gate_.resize(std::min(n_tokens, kMlpChunkTokens) * c.ffn_dim);
  up_.resize(std::min(n_tokens, kMlpChunkTokens) * c.ffn_dim);
  positions_.resize(n_tokens);
  slots_.resize(n_tokens);

  // Embeddings, positions and cache slots.
  const WeightView& embd = weights_.token_embd();
  const int64_t embd_row_bytes = RowBytes(embd.type, embd.cols);
  attention_seqs_.clear();
  int64_t t = 0;
  for (const ForwardSeq& s : seqs) {
    AttentionSeq a;
    a.q = q_.data() + t * q_dim;
    a.out = attn_.data() + t * q_dim;
    a.n_q = static_cast<int32_t>(s.tokens.size());
    a.start_pos = s.start_pos;
    a.block_table = s.block_table.data();
    attention_seqs_.push_back(a);
    for (size_t i = 0; i < s.tokens.size(); ++i, ++t) {
      const int32_t pos = s.start_pos + static_cast<int32_t>(i);
      positions_[t] = pos;
      slots_[t] = static_cast<int64_t>(s.block_table[pos / bs]) * bs + pos % bs;
      DequantizeRow(embd.type,
                    static_cast<const uint8_t*>(embd.data) + s.tokens[i] * embd_row_bytes,
                    x_.data() + t * hidden, hidden);
    }
  }

  for (int l = 0; l < c.n_layers; ++l) {
    Layer(l, n_tokens);
    NotifyLayerDone(l);
  }

  // Final norm and LM head for the last fed token of each sequence that wants logits.
  logits->resize(n_logits * c.vocab_size);
  if (n_logits == 0) return absl::OkStatus();
  std::vector<float> last(n_logits * hidden);  // [n_logits, hidden]
  int64_t row = 0;
  t = 0;
  for (const ForwardSeq& s : seqs) {
    t += static_cast<int64_t>(s.tokens.size());
    if (!s.compute_logits) continue;
    std::copy_n(x_.data() + (t - 1) * hidden, hidden, last.data() + row * hidden);
    ++row;
  }
  RmsNorm(last.data(), weights_.output_norm().data(), n_logits, hidden, c.rms_norm_eps,
          last.data());
  MatMul(weights_.output(), last.data(), n_logits, logits->data());
  return absl::OkStatus();
}

void CpuModelRunner::Layer(int layer, int64_t n_tokens) {
  const ModelConfig& c = weights_.config();
  const LayerWeights& w = weights_.layer(layer);
  const int64_t hidden = c.hidden;

  // Attention block.
  RmsNorm(x_.data(), w.attn_norm.data(), n_tokens, hidden, c.rms_norm_eps, h_.data());
  MatMul(w.wq, h_.data(), n_tokens, q_.data());
  MatMul(w.wk, h_.data(), n_tokens, k_.data());
  MatMul(w.wv, h_.data(), n_tokens, v_.data());
  Rope(q_.data(), positions_.data(), n_tokens, c.n_heads, c.head_dim, c.rope_theta,
       c.rope_layout);
  Rope(k_.data(), positions_.data(), n_tokens, c.n_kv_heads, c.head_dim, c.rope_theta,
       c.rope_layout);
  WritePagedKv(k_.data(), v_.data(), slots_.data(), n_tokens, kv_layers_[layer]);
  PagedAttention(attention_seqs_, kv_layers_[layer], c.n_heads,
                 1.0f / std::sqrt(static_cast<float>(c.head_dim)), pool_);
  MatMul(w.wo, attn_.data(), n_tokens, h_.data());
  AddInPlace(x_.data(), h_.data(), n_tokens * hidden);

  // SwiGLU MLP.
  RmsNorm(x_.data(), w.ffn_norm.data(), n_tokens, hidden, c.rms_norm_eps, h_.data());
  // In chunks of tokens: the [tokens, ffn] intermediates are the largest buffers of a long
  // prefill, and rows are independent (MatMul gives a row the same result in any batch).
  for (int64_t t0 = 0; t0 < n_tokens; t0 += kMlpChunkTokens) {
    const int64_t n = std::min(kMlpChunkTokens, n_tokens - t0);
    MatMul(w.w_gate, h_.data() + t0 * hidden, n, gate_.data());
    MatMul(w.w_up, h_.data() + t0 * hidden, n, up_.data());
    SiluMul(gate_.data(), up_.data(), n * c.ffn_dim, gate_.data());
    MatMul(w.w_down, gate_.data(), n, h_.data() + t0 * hidden);
  }
  AddInPlace(x_.data(), h_.data(), n_tokens * hidden);
}

int64_t CpuModelRunner::KvBlockBytes() const {
  const ModelConfig& c = weights_.config();
  const int64_t elem_bytes = KvDtypeBytes(options_.kv_dtype);
  return static_cast<int64_t>(options_.block_size) * c.n_kv_heads * c.head_dim * elem_bytes;
}

int64_t CpuModelRunner::KvLayerBytes(int64_t num_blocks) const {
  return 2 * num_blocks * KvBlockBytes();
}

absl::Status CpuModelRunner::ReadKvLayer(int layer, absl::Span<const int32_t> blocks,
                                         void* dst) {
  RETURN_IF_ERROR(
      ValidateKvAccess(weights_.config(), layer, blocks, options_.num_kv_blocks));
  const int64_t block_bytes = KvBlockBytes();
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (const std::vector<uint8_t>* cache : {&k_cache_[layer], &v_cache_[layer]}) {
    for (int32_t b : blocks) {
      std::memcpy(out, cache->data() + b * block_bytes, block_bytes);
      out += block_bytes;
    }
  }
  return absl::OkStatus();
}

absl::Status CpuModelRunner::WriteKvLayer(int layer, absl::Span<const int32_t> blocks,
                                          const void* src) {
  RETURN_IF_ERROR(
      ValidateKvAccess(weights_.config(), layer, blocks, options_.num_kv_blocks));
  const int64_t block_bytes = KvBlockBytes();
  const uint8_t* in = static_cast<const uint8_t*>(src);
  for (std::vector<uint8_t>* cache : {&k_cache_[layer], &v_cache_[layer]}) {
    for (int32_t b : blocks) {
      std::memcpy(cache->data() + b * block_bytes, in, block_bytes);
      in += block_bytes;
    }
  }
  return absl::OkStatus();
}

}  // namespace tandem
