#include "engine/cuda/cuda_model_runner.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/cuda/runner_kernels.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cpu/quant.h"

namespace tandem {
namespace {

absl::Status CudaError(cudaError_t err, const char* what) {
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

#define RUNNER_CUDA_OK(expr)                                              \
  do {                                                                    \
    const cudaError_t runner_err_ = (expr);                               \
    if (runner_err_ != cudaSuccess) return CudaError(runner_err_, #expr); \
  } while (0)

// Device sub-buffers start on 256-byte boundaries (cuBLAS and 16-byte vector loads).
constexpr size_t kDeviceAlign = 256;
size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

// A decode graph serves every step whose longest context rounds up to the same multiple of
// this: the decode attention partitions are multiples of 64 keys (64..512), so its split
// plan for max_seq_len L equals the plan for L rounded up to 64.
constexpr int kGraphContextGranule = 64;

// Device (or managed) memory: what the KV copy kernel may read and write.
bool IsDeviceMemory(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

// The runner's own weight arena is written once at construction through the read-only
// pointers the forward pass uses.
template <typename T>
void* Mutable(const T* p) {
  return const_cast<T*>(p);
}

cuda::RopeLayout ToCudaRope(RopeLayout layout) {
  return layout == RopeLayout::kAdjacentPairs ? cuda::RopeLayout::kAdjacentPairs
                                              : cuda::RopeLayout::kHalfSplit;
}

// Dequantizes `w` (expected [rows, cols]) row by row to bf16 and copies it to `dst`.
absl::Status UploadMatrix(const WeightView& w, int64_t rows, int64_t cols, const char* name,
                          void* dst, std::vector<uint16_t>* host, std::vector<float>* row) {
  if (w.rows != rows || w.cols != cols || w.data == nullptr) {
    return absl::FailedPreconditionError(absl::StrFormat("weight %s is [%d, %d], expected [%d, %d]",
                                                         name, w.rows, w.cols, rows, cols));
  }
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(w.type));
  if (traits == nullptr || cols % traits->block_size != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("weight ", name, ": type ", GgmlTypeName(w.type), " cannot be read"));
  }
  const int64_t row_bytes = RowBytes(w.type, cols);
  host->resize(static_cast<size_t>(rows * cols));
  row->resize(static_cast<size_t>(cols));
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(w.type, src + r * row_bytes, row->data(), cols);
    uint16_t* out = host->data() + r * cols;
    for (int64_t i = 0; i < cols; ++i) out[i] = FloatToBf16((*row)[i]);
  }
  RUNNER_CUDA_OK(
      cudaMemcpy(dst, host->data(), host->size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status UploadVector(const std::vector<float>& v, int64_t n, const char* name, void* dst) {
  if (static_cast<int64_t>(v.size()) != n) {
    return absl::FailedPreconditionError(
        absl::StrFormat("norm %s has %d elements, expected %d", name, v.size(), n));
  }
  RUNNER_CUDA_OK(cudaMemcpy(dst, v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

}  // namespace

CudaModelRunner::CudaModelRunner(const ModelConfig& config, const CudaModelRunnerOptions& options)
    : config_(config), options_(options) {
  q_dim_ = static_cast<int64_t>(config_.n_heads) * config_.head_dim;
  kv_dim_ = static_cast<int64_t>(config_.n_kv_heads) * config_.head_dim;
  qkv_dim_ = q_dim_ + 2 * kv_dim_;
  use_decode_kernel_ = options_.decode_kernel && config_.n_heads / config_.n_kv_heads <= 8;
  int n_buckets = 0;
  for (int b = 1; b <= kMaxGraphBatch; b *= 2) ++n_buckets;
  graphs_.resize(n_buckets);
}

absl::Status CudaModelRunner::CheckSupported(const ModelConfig& c,
                                             const CudaModelRunnerOptions& options) {
  RETURN_IF_ERROR(c.Validate());
  if (options.num_kv_blocks <= 0 || options.block_size <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat("num_kv_blocks=%d block_size=%d",
                                                      options.num_kv_blocks, options.block_size));
  }
  if (c.head_dim != 64 && c.head_dim != 128) {
    return absl::FailedPreconditionError(
        absl::StrFormat("the CUDA attention kernels need head_dim 64 or 128, model '%s' has %d",
                        c.name, c.head_dim));
  }
  if (c.hidden % 8 != 0 || c.ffn_dim % 8 != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("the CUDA runner needs hidden and ffn_dim multiples of 8 (got %d, %d)",
                        c.hidden, c.ffn_dim));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CudaModelRunner::Create(
    const ModelWeights& weights, const CudaModelRunnerOptions& options) {
  const ModelConfig& c = weights.config();
  RETURN_IF_ERROR(CheckSupported(c, options));
  if (static_cast<int64_t>(weights.layers().size()) != c.n_layers) {
    return absl::FailedPreconditionError("layer count differs from the config");
  }
  std::unique_ptr<CudaModelRunner> runner(new CudaModelRunner(c, options));
  RETURN_IF_ERROR(runner->Allocate(weights.output().data == weights.token_embd().data));
  RETURN_IF_ERROR(runner->Upload(weights));
  return runner;
}

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CudaModelRunner::CreateSynthetic(
    const ModelConfig& config, const CudaModelRunnerOptions& options, uint64_t seed) {
  RETURN_IF_ERROR(CheckSupported(config, options));
  std::unique_ptr<CudaModelRunner> runner(new CudaModelRunner(config, options));
  RETURN_IF_ERROR(runner->Allocate(config.tied_embeddings));
  RETURN_IF_ERROR(runner->FillSynthetic(seed));
  return runner;
}

absl::Status CudaModelRunner::Allocate(bool tied) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden;
  const int64_t vocab = c.vocab_size;
  const int64_t ffn = c.ffn_dim;
  RUNNER_CUDA_OK(cudaSetDevice(options_.device));
  RUNNER_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  RUNNER_CUDA_OK(cudaStreamCreateWithFlags(&kv_stream_, cudaStreamNonBlocking));
  layer_events_.assign(c.n_layers, nullptr);
  for (cudaEvent_t& e : layer_events_) {
    RUNNER_CUDA_OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  ASSIGN_OR_RETURN(gemm_, cuda::CublasGemm::Create());

  // Plan the weight arena.
  size_t off = 0;
  auto take = [&off](int64_t bytes) {
    const size_t at = off;
    off = AlignUp(off + static_cast<size_t>(bytes), kDeviceAlign);
    return at;
  };
  const size_t embd_off = take(vocab * hidden * 2);
  const size_t head_off = tied ? embd_off : take(vocab * hidden * 2);
  const size_t out_norm_off = take(hidden * 4);
  struct LayerOffsets {
    size_t attn_norm, qkv, o, ffn_norm, gu, down;
  };
  std::vector<LayerOffsets> lo(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    lo[l].attn_norm = take(hidden * 4);
    lo[l].qkv = take(qkv_dim_ * hidden * 2);
    lo[l].o = take(hidden * q_dim_ * 2);
    lo[l].ffn_norm = take(hidden * 4);
    lo[l].gu = take(2 * ffn * hidden * 2);
    lo[l].down = take(hidden * ffn * 2);
  }
  weight_bytes_ = static_cast<int64_t>(off);
  RUNNER_CUDA_OK(cudaMalloc(&weight_arena_, off));
  char* base = static_cast<char*>(weight_arena_);
  token_embd_ = reinterpret_cast<const bf16*>(base + embd_off);
  lm_head_ = reinterpret_cast<const bf16*>(base + head_off);
  output_norm_ = reinterpret_cast<const float*>(base + out_norm_off);

  // KV cache: zeroed once so that no uninitialized bf16 (possibly NaN) is ever in a tile.
  const int64_t layer_elems = options_.num_kv_blocks * options_.block_size * kv_dim_;
  kv_bytes_ = 2 * c.n_layers * layer_elems * 2;
  RUNNER_CUDA_OK(cudaMalloc(&kv_arena_, static_cast<size_t>(kv_bytes_)));
  RUNNER_CUDA_OK(cudaMemsetAsync(kv_arena_, 0, static_cast<size_t>(kv_bytes_), stream_));
  bf16* kv_base = static_cast<bf16*>(kv_arena_);

  layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerOffsets& o = lo[l];
    LayerDevice& d = layers_[l];
    d.attn_norm = reinterpret_cast<const float*>(base + o.attn_norm);
    d.w_qkv = reinterpret_cast<const bf16*>(base + o.qkv);
    d.w_o = reinterpret_cast<const bf16*>(base + o.o);
    d.ffn_norm = reinterpret_cast<const float*>(base + o.ffn_norm);
    d.w_gate_up = reinterpret_cast<const bf16*>(base + o.gu);
    d.w_down = reinterpret_cast<const bf16*>(base + o.down);
    d.kv.k = kv_base + (2 * l) * layer_elems;
    d.kv.v = kv_base + (2 * l + 1) * layer_elems;
    d.kv.num_blocks = options_.num_kv_blocks;
    d.kv.block_size = options_.block_size;
    d.kv.n_kv_heads = c.n_kv_heads;
    d.kv.head_dim = c.head_dim;
  }
  {
    // The KV copies' block-id buffers, sized for the whole cache now: growing them later
    // would cudaFree (a device-wide synchronization) on a transfer thread while the engine
    // thread may be capturing a decode graph.
    absl::MutexLock lock(&kv_mu_);
    const size_t ids_bytes = static_cast<size_t>(options_.num_kv_blocks) * sizeof(int32_t);
    RETURN_IF_ERROR(ReservePinned(&kv_ids_host_, &kv_ids_host_capacity_, ids_bytes));
    RETURN_IF_ERROR(ReserveDevice(&kv_ids_dev_, &kv_ids_dev_capacity_, ids_bytes));
  }
  RUNNER_CUDA_OK(cudaStreamSynchronize(stream_));
  LOG(INFO) << "CudaModelRunner: device " << options_.device << ", weights "
            << (weight_bytes_ >> 20) << " MiB bf16" << (tied ? " (tied LM head)" : "")
            << ", KV cache " << (kv_bytes_ >> 20) << " MiB (" << options_.num_kv_blocks
            << " blocks of " << options_.block_size << ")";
  return absl::OkStatus();
}

absl::Status CudaModelRunner::Upload(const ModelWeights& weights) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden;
  const int64_t vocab = c.vocab_size;
  const int64_t ffn = c.ffn_dim;
  std::vector<uint16_t> host;
  std::vector<float> row;
  RETURN_IF_ERROR(UploadMatrix(weights.token_embd(), vocab, hidden, "token_embd",
                               Mutable(token_embd_), &host, &row));
  if (lm_head_ != token_embd_) {
    RETURN_IF_ERROR(
        UploadMatrix(weights.output(), vocab, hidden, "output", Mutable(lm_head_), &host, &row));
  }
  RETURN_IF_ERROR(
      UploadVector(weights.output_norm(), hidden, "output_norm", Mutable(output_norm_)));
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = weights.layer(l);
    const LayerDevice& d = layers_[l];
    char* qkv = static_cast<char*>(Mutable(d.w_qkv));
    char* gu = static_cast<char*>(Mutable(d.w_gate_up));
    RETURN_IF_ERROR(UploadVector(w.attn_norm, hidden, "attn_norm", Mutable(d.attn_norm)));
    RETURN_IF_ERROR(UploadMatrix(w.wq, q_dim_, hidden, "attn_q", qkv, &host, &row));
    RETURN_IF_ERROR(
        UploadMatrix(w.wk, kv_dim_, hidden, "attn_k", qkv + q_dim_ * hidden * 2, &host, &row));
    RETURN_IF_ERROR(UploadMatrix(w.wv, kv_dim_, hidden, "attn_v",
                                 qkv + (q_dim_ + kv_dim_) * hidden * 2, &host, &row));
    RETURN_IF_ERROR(UploadMatrix(w.wo, hidden, q_dim_, "attn_output", Mutable(d.w_o), &host, &row));
    RETURN_IF_ERROR(UploadVector(w.ffn_norm, hidden, "ffn_norm", Mutable(d.ffn_norm)));
    RETURN_IF_ERROR(UploadMatrix(w.w_gate, ffn, hidden, "ffn_gate", gu, &host, &row));
    RETURN_IF_ERROR(
        UploadMatrix(w.w_up, ffn, hidden, "ffn_up", gu + ffn * hidden * 2, &host, &row));
    RETURN_IF_ERROR(
        UploadMatrix(w.w_down, hidden, ffn, "ffn_down", Mutable(d.w_down), &host, &row));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::FillSynthetic(uint64_t seed) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden;
  const int64_t ffn = c.ffn_dim;
  // A pool of N(0, 0.02) bf16 values; each matrix is tiled with pieces of it taken at random
  // 16-byte-aligned offsets (device-to-device copies at memory bandwidth).
  constexpr int64_t kPoolElems = int64_t{8} << 20;   // 16 MiB
  constexpr int64_t kPieceElems = int64_t{1} << 20;  // 2 MiB per copy
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<uint16_t> pool(static_cast<size_t>(kPoolElems));
  for (uint16_t& v : pool) v = FloatToBf16(normal(rng));
  void* pool_dev = nullptr;
  RUNNER_CUDA_OK(cudaMalloc(&pool_dev, pool.size() * sizeof(uint16_t)));
  const absl::Status filled = [&]() -> absl::Status {
    RUNNER_CUDA_OK(
        cudaMemcpy(pool_dev, pool.data(), pool.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
    const auto* pool_base = static_cast<const uint16_t*>(pool_dev);
    std::uniform_int_distribution<int64_t> piece_at(0, (kPoolElems - kPieceElems) / 8);
    auto fill = [&](const bf16* dst, int64_t elems) -> absl::Status {
      auto* out = static_cast<uint16_t*>(Mutable(dst));
      for (int64_t i = 0; i < elems; i += kPieceElems) {
        const int64_t n = std::min(kPieceElems, elems - i);
        RUNNER_CUDA_OK(cudaMemcpyAsync(out + i, pool_base + 8 * piece_at(rng), n * 2,
                                       cudaMemcpyDeviceToDevice, stream_));
      }
      return absl::OkStatus();
    };
    std::vector<float> norm(static_cast<size_t>(hidden));
    auto fill_norm = [&](const float* dst) -> absl::Status {
      for (float& v : norm) v = 1.0f + normal(rng);
      // Synchronous: `norm` is rewritten for the next vector.
      RUNNER_CUDA_OK(cudaMemcpy(Mutable(dst), norm.data(), norm.size() * sizeof(float),
                                cudaMemcpyHostToDevice));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(fill(token_embd_, c.vocab_size * hidden));
    if (lm_head_ != token_embd_) RETURN_IF_ERROR(fill(lm_head_, c.vocab_size * hidden));
    RETURN_IF_ERROR(fill_norm(output_norm_));
    for (const LayerDevice& d : layers_) {
      RETURN_IF_ERROR(fill_norm(d.attn_norm));
      RETURN_IF_ERROR(fill(d.w_qkv, qkv_dim_ * hidden));
      RETURN_IF_ERROR(fill(d.w_o, hidden * q_dim_));
      RETURN_IF_ERROR(fill_norm(d.ffn_norm));
      RETURN_IF_ERROR(fill(d.w_gate_up, 2 * ffn * hidden));
      RETURN_IF_ERROR(fill(d.w_down, hidden * ffn));
    }
    return absl::OkStatus();
  }();
  const cudaError_t synced = cudaStreamSynchronize(stream_);
  const cudaError_t freed = cudaFree(pool_dev);
  RETURN_IF_ERROR(filled);
  if (synced != cudaSuccess) return CudaError(synced, "synthetic weights (cudaStreamSynchronize)");
  if (freed != cudaSuccess) return CudaError(freed, "cudaFree(pool)");
  LOG(INFO) << "CudaModelRunner: synthetic weights for " << c.name << " (seed " << seed << ")";
  return absl::OkStatus();
}

CudaModelRunner::~CudaModelRunner() {
  if (cudaSetDevice(options_.device) != cudaSuccess) return;  // nothing can be freed
  for (cudaStream_t s : {stream_, kv_stream_}) {
    if (s == nullptr) continue;
    const cudaError_t e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) LOG(WARNING) << "cudaStreamSynchronize: " << cudaGetErrorName(e);
  }
  for (cudaEvent_t ev : layer_events_) {
    if (ev == nullptr) continue;
    const cudaError_t e = cudaEventDestroy(ev);
    if (e != cudaSuccess) LOG(WARNING) << "cudaEventDestroy: " << cudaGetErrorName(e);
  }
  for (DecodeGraph& g : graphs_) {
    if (g.exec != nullptr) {
      const cudaError_t e = cudaGraphExecDestroy(g.exec);
      if (e != cudaSuccess) LOG(WARNING) << "cudaGraphExecDestroy: " << cudaGetErrorName(e);
    }
    if (g.arena != nullptr) {
      const cudaError_t e = cudaFree(g.arena);
      if (e != cudaSuccess) LOG(WARNING) << "cudaFree(graph arena): " << cudaGetErrorName(e);
    }
  }
  gemm_.reset();
  absl::MutexLock kv_lock(&kv_mu_);
  for (void* p : {weight_arena_, kv_arena_, scratch_, meta_dev_, kv_ids_dev_}) {
    if (p == nullptr) continue;
    const cudaError_t e = cudaFree(p);
    if (e != cudaSuccess) LOG(WARNING) << "cudaFree: " << cudaGetErrorName(e);
  }
  for (void* p : {meta_host_, logits_host_, kv_ids_host_}) {
    if (p == nullptr) continue;
    const cudaError_t e = cudaFreeHost(p);
    if (e != cudaSuccess) LOG(WARNING) << "cudaFreeHost: " << cudaGetErrorName(e);
  }
  for (cudaStream_t s : {stream_, kv_stream_}) {
    if (s == nullptr) continue;
    const cudaError_t e = cudaStreamDestroy(s);
    if (e != cudaSuccess) LOG(WARNING) << "cudaStreamDestroy: " << cudaGetErrorName(e);
  }
}

absl::Status CudaModelRunner::ReserveDevice(void** ptr, size_t* capacity, size_t bytes) {
  if (bytes <= *capacity && *ptr != nullptr) return absl::OkStatus();
  const size_t grown =
      std::max(AlignUp(std::max<size_t>(bytes, 1), kDeviceAlign), *capacity + *capacity / 2);
  if (*ptr != nullptr) RUNNER_CUDA_OK(cudaFree(*ptr));
  *ptr = nullptr;
  *capacity = 0;
  RUNNER_CUDA_OK(cudaMalloc(ptr, grown));
  *capacity = grown;
  return absl::OkStatus();
}

absl::Status CudaModelRunner::ReservePinned(void** ptr, size_t* capacity, size_t bytes) {
  if (bytes <= *capacity && *ptr != nullptr) return absl::OkStatus();
  const size_t grown =
      std::max(AlignUp(std::max<size_t>(bytes, 1), kDeviceAlign), *capacity + *capacity / 2);
  if (*ptr != nullptr) RUNNER_CUDA_OK(cudaFreeHost(*ptr));
  *ptr = nullptr;
  *capacity = 0;
  RUNNER_CUDA_OK(cudaHostAlloc(ptr, grown, cudaHostAllocDefault));
  *capacity = grown;
  return absl::OkStatus();
}

absl::Status CudaModelRunner::ValidateBatch(absl::Span<const ForwardSeq> seqs) const {
  const ModelConfig& c = config_;
  const int bs = options_.block_size;
  // Grid limits of the attention kernels (sequences on gridDim.z / gridDim.y).
  if (seqs.size() > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d sequences in one step; at most 65535", seqs.size()));
  }
  RETURN_IF_ERROR(ValidateForwardBatch(c, seqs, bs, options_.num_kv_blocks));
  int64_t n_tokens = 0;
  for (const ForwardSeq& s : seqs) n_tokens += static_cast<int64_t>(s.tokens.size());
  if (n_tokens > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat("%d tokens in one step", n_tokens));
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunner::Forward(absl::Span<const ForwardSeq> seqs,
                                      std::vector<float>* logits) {
  ASSIGN_OR_RETURN(const int n_logits, Run(seqs, /*greedy=*/false));
  const size_t n_out = static_cast<size_t>(n_logits) * config_.vocab_size;
  logits->resize(n_out);
  if (n_out > 0) std::memcpy(logits->data(), logits_host_, n_out * sizeof(float));
  return absl::OkStatus();
}

absl::Status CudaModelRunner::ForwardGreedy(absl::Span<const ForwardSeq> seqs,
                                            std::vector<int32_t>* tokens) {
  ASSIGN_OR_RETURN(const int n_logits, Run(seqs, /*greedy=*/true));
  tokens->resize(static_cast<size_t>(n_logits));
  if (n_logits > 0) std::memcpy(tokens->data(), logits_host_, n_logits * sizeof(int32_t));
  return absl::OkStatus();
}

absl::StatusOr<int> CudaModelRunner::Run(absl::Span<const ForwardSeq> seqs, bool greedy) {
  RETURN_IF_ERROR(ValidateBatch(seqs));
  const ModelConfig& c = config_;
  const int bs = options_.block_size;
  const int n_seqs = static_cast<int>(seqs.size());
  if (n_seqs == 0) return 0;
  RUNNER_CUDA_OK(cudaSetDevice(options_.device));
  if (options_.use_cuda_graphs && use_decode_kernel_ && n_seqs <= kMaxGraphBatch &&
      std::all_of(seqs.begin(), seqs.end(),
                  [](const ForwardSeq& s) { return s.tokens.size() == 1; })) {
    absl::StatusOr<int> graphed = RunGraph(seqs, greedy);
    if (graphed.ok() || !graph_capture_failed_) return graphed;
    // Capture is not possible here: warn once, run this and every later step eagerly.
    LOG(ERROR) << "CudaModelRunner: CUDA graph capture failed, graphs off: " << graphed.status();
    options_.use_cuda_graphs = false;
  }

  // Internal order: one-token sequences first (their rows feed the decode kernel as one dense
  // batch), then the rest in the caller's order. Logits come back in the caller's order.
  order_.clear();
  for (int i = 0; i < n_seqs; ++i) {
    if (use_decode_kernel_ && seqs[i].tokens.size() == 1) order_.push_back(i);
  }
  const int n_dec = static_cast<int>(order_.size());
  for (int i = 0; i < n_seqs; ++i) {
    if (!(use_decode_kernel_ && seqs[i].tokens.size() == 1)) order_.push_back(i);
  }
  const int n_pre = n_seqs - n_dec;

  int64_t n_tokens = 0;
  int n_logits = 0;
  int max_blocks = 1;
  int max_dec_len = 0;
  int max_pre_q = 0;
  for (int j = 0; j < n_seqs; ++j) {
    const ForwardSeq& s = seqs[order_[j]];
    const int n = static_cast<int>(s.tokens.size());
    const int end = s.start_pos + n;
    n_tokens += n;
    n_logits += s.compute_logits ? 1 : 0;
    max_blocks = std::max(max_blocks, (end + bs - 1) / bs);
    if (j < n_dec) {
      max_dec_len = std::max(max_dec_len, end);
    } else {
      max_pre_q = std::max(max_pre_q, n);
    }
  }

  // Metadata layout (16-byte aligned sections) and staging.
  meta_ = PlanMeta(n_tokens, n_logits, n_seqs, max_blocks, n_dec, n_pre);
  RETURN_IF_ERROR(ReservePinned(&meta_host_, &meta_host_capacity_, meta_.total));
  RETURN_IF_ERROR(ReserveDevice(&meta_dev_, &meta_dev_capacity_, meta_.total));
  char* hb = static_cast<char*>(meta_host_);
  auto* ids = reinterpret_cast<int32_t*>(hb + meta_.ids);
  auto* positions = reinterpret_cast<int32_t*>(hb + meta_.positions);
  auto* slots = reinterpret_cast<int64_t*>(hb + meta_.slots);
  auto* logit_rows = reinterpret_cast<int32_t*>(hb + meta_.logit_rows);
  auto* block_tables = reinterpret_cast<int32_t*>(hb + meta_.block_tables);
  auto* dec_seq_lens = reinterpret_cast<int32_t*>(hb + meta_.dec_seq_lens);
  auto* pre_cu_q = reinterpret_cast<int32_t*>(hb + meta_.pre_cu_q);
  auto* pre_start = reinterpret_cast<int32_t*>(hb + meta_.pre_start);

  last_row_.assign(n_seqs, 0);
  int64_t t = 0;
  pre_cu_q[0] = 0;
  for (int j = 0; j < n_seqs; ++j) {
    const ForwardSeq& s = seqs[order_[j]];
    const int n = static_cast<int>(s.tokens.size());
    const int end = s.start_pos + n;
    for (int k = 0; k < n; ++k, ++t) {
      const int32_t pos = s.start_pos + k;
      ids[t] = s.tokens[k];
      positions[t] = pos;
      slots[t] = static_cast<int64_t>(s.block_table[pos / bs]) * bs + pos % bs;
    }
    last_row_[order_[j]] = t - 1;
    const int used = (end + bs - 1) / bs;
    int32_t* table = block_tables + static_cast<int64_t>(j) * max_blocks;
    std::copy_n(s.block_table.data(), used, table);
    std::fill(table + used, table + max_blocks, 0);  // never read: past the sequence
    if (j < n_dec) {
      dec_seq_lens[j] = end;
    } else {
      const int p = j - n_dec;
      pre_cu_q[p + 1] = pre_cu_q[p] + n;
      pre_start[p] = s.start_pos;
    }
  }
  int r = 0;
  for (int i = 0; i < n_seqs; ++i) {
    if (seqs[i].compute_logits) logit_rows[r++] = static_cast<int32_t>(last_row_[i]);
  }

  size_t dec_ws_bytes = 0;
  if (n_dec > 0) {
    cuda::DecodeAttentionArgs a;
    a.batch = n_dec;
    a.max_seq_len = max_dec_len;
    a.n_heads = c.n_heads;
    dec_ws_bytes = cuda::DecodeAttentionWorkspaceBytes(a, layers_[0].kv);
  }
  scratch_layout_ = PlanScratch(n_tokens, n_logits, n_dec, dec_ws_bytes);
  RETURN_IF_ERROR(ReserveDevice(&scratch_, &scratch_capacity_, scratch_layout_.total));
  RETURN_IF_ERROR(ReservePinned(
      &logits_host_, &logits_host_capacity_,
      static_cast<size_t>(n_logits) * (greedy ? sizeof(int32_t) : c.vocab_size * sizeof(float))));

  // What this step writes: a KV read of other blocks need not wait for its layer events.
  step_writes_.Begin(absl::MakeConstSpan(slots, static_cast<size_t>(n_tokens)), bs);
  const absl::Status enqueued =
      Enqueue(static_cast<char*>(meta_dev_), meta_, static_cast<char*>(scratch_), scratch_layout_,
              n_tokens, n_logits, n_dec, n_pre, max_blocks, max_dec_len, max_pre_q, dec_ws_bytes,
              greedy, /*copy_io=*/true);
  // Always drain the stream: the staging buffers are rewritten by the next step.
  const cudaError_t synced = cudaStreamSynchronize(stream_);
  step_writes_.End();
  RETURN_IF_ERROR(enqueued);
  if (synced != cudaSuccess) return CudaError(synced, "forward pass (cudaStreamSynchronize)");
  return n_logits;
}

CudaModelRunner::MetaLayout CudaModelRunner::PlanMeta(int64_t n_tokens, int n_logits, int n_seqs,
                                                      int max_blocks, int n_dec, int n_pre) {
  MetaLayout m;
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off = AlignUp(off + bytes, 16);
    return at;
  };
  m.ids = take(n_tokens * 4);
  m.positions = take(n_tokens * 4);
  m.slots = take(n_tokens * 8);
  m.logit_rows = take(static_cast<size_t>(n_logits) * 4);
  m.block_tables = take(static_cast<size_t>(n_seqs) * max_blocks * 4);
  m.dec_seq_lens = take(static_cast<size_t>(n_dec) * 4);
  m.pre_cu_q = take(static_cast<size_t>(n_pre + 1) * 4);
  m.pre_start = take(static_cast<size_t>(n_pre) * 4);
  m.total = off;
  return m;
}

CudaModelRunner::ScratchLayout CudaModelRunner::PlanScratch(int64_t n_tokens, int n_logits,
                                                            int n_dec, size_t dec_ws_bytes) const {
  const ModelConfig& c = config_;
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off = AlignUp(off + bytes, kDeviceAlign);
    return at;
  };
  const size_t T = static_cast<size_t>(n_tokens);
  ScratchLayout s;
  s.x = take(T * c.hidden * 4);
  s.h = take(T * c.hidden * 2);
  s.qkv = take(T * qkv_dim_ * 2);
  s.q_dec = take(static_cast<size_t>(n_dec) * q_dim_ * 2);
  s.attn = take(T * q_dim_ * 2);
  s.gu = take(T * 2 * c.ffn_dim * 2);
  s.act = take(T * c.ffn_dim * 2);
  s.last = take(static_cast<size_t>(n_logits) * c.hidden * 2);
  s.logits = take(static_cast<size_t>(n_logits) * c.vocab_size * 4);
  s.tokens = take(static_cast<size_t>(n_logits) * 4);
  s.dec_ws = take(dec_ws_bytes);
  s.total = off;
  return s;
}

absl::Status CudaModelRunner::CaptureGraph(DecodeGraph* g, int bucket, int plan_len) {
  const int bs = options_.block_size;
  const int max_blocks = (plan_len + bs - 1) / bs;
  cuda::DecodeAttentionArgs a;
  a.batch = bucket;
  a.max_seq_len = plan_len;
  a.n_heads = config_.n_heads;
  const size_t dec_ws_bytes = cuda::DecodeAttentionWorkspaceBytes(a, layers_[0].kv);
  const MetaLayout meta = PlanMeta(bucket, bucket, bucket, max_blocks, bucket, 0);
  const ScratchLayout sl = PlanScratch(bucket, bucket, bucket, dec_ws_bytes);
  const size_t scratch_offset = AlignUp(meta.total, kDeviceAlign);
  const size_t need = scratch_offset + sl.total;
  if (g->arena == nullptr || g->arena_bytes < need) {
    // The old executable graph reads the old arena: it goes with it.
    if (g->exec != nullptr) {
      RUNNER_CUDA_OK(cudaGraphExecDestroy(g->exec));
      g->exec = nullptr;
    }
    const size_t bytes = std::max(need, g->arena_bytes + g->arena_bytes / 2);
    if (g->arena != nullptr) RUNNER_CUDA_OK(cudaFree(g->arena));
    g->arena = nullptr;
    g->arena_bytes = 0;
    RUNNER_CUDA_OK(cudaMalloc(&g->arena, bytes));
    g->arena_bytes = bytes;
    // Defined contents (no NaN patterns) before the first replay.
    RUNNER_CUDA_OK(cudaMemsetAsync(g->arena, 0, bytes, stream_));
  }
  g->bucket = bucket;
  g->plan_len = 0;  // valid again once captured
  g->max_blocks = max_blocks;
  g->scratch_offset = scratch_offset;
  g->meta = meta;
  g->scratch = sl;
  g->dec_ws_bytes = dec_ws_bytes;

  char* base = static_cast<char*>(g->arena);
  // Warm-up outside the capture: the same launches once over padding rows only (slot -1: no
  // KV write; context 0: zero attention), so that every kernel is loaded (lazy module
  // loading) and cuBLAS has set up these shapes before the capture sees them.
  {
    RETURN_IF_ERROR(ReservePinned(&meta_host_, &meta_host_capacity_, meta.total));
    std::memset(meta_host_, 0, meta.total);
    char* hb = static_cast<char*>(meta_host_);
    auto* slots = reinterpret_cast<int64_t*>(hb + meta.slots);
    auto* logit_rows = reinterpret_cast<int32_t*>(hb + meta.logit_rows);
    for (int i = 0; i < bucket; ++i) {
      slots[i] = -1;
      logit_rows[i] = i;
    }
    const absl::Status warmed = [&]() -> absl::Status {
      RUNNER_CUDA_OK(
          cudaMemcpyAsync(base, meta_host_, meta.total, cudaMemcpyHostToDevice, stream_));
      return Enqueue(base, meta, base + scratch_offset, sl, bucket, bucket, bucket, /*n_pre=*/0,
                     max_blocks, plan_len, /*max_pre_q=*/0, dec_ws_bytes, /*greedy=*/true,
                     /*copy_io=*/false);
    }();
    // meta_host_ is rewritten next: drain the copy (and the warm-up) first.
    const cudaError_t synced = cudaStreamSynchronize(stream_);
    RETURN_IF_ERROR(warmed);
    if (synced != cudaSuccess) return CudaError(synced, "decode graph warm-up");
  }
  cudaGraph_t graph = nullptr;
  RUNNER_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
  const absl::Status enqueued =
      Enqueue(base, meta, base + scratch_offset, sl, bucket, bucket, bucket, /*n_pre=*/0,
              max_blocks, plan_len, /*max_pre_q=*/0, dec_ws_bytes, /*greedy=*/true,
              /*copy_io=*/false);
  const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
  if (!enqueued.ok() || ended != cudaSuccess) {
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    if (g->exec != nullptr) (void)cudaGraphExecDestroy(g->exec);
    g->exec = nullptr;
    RETURN_IF_ERROR(enqueued);
    return CudaError(ended, "decode graph capture (cudaStreamEndCapture)");
  }
  ++graph_stats_.captures;
  bool updated = false;
  if (g->exec != nullptr) {
    // Same topology with new sizes/pointers: update in place (cheaper than instantiating).
    cudaGraphExecUpdateResultInfo info{};
    if (cudaGraphExecUpdate(g->exec, graph, &info) == cudaSuccess) {
      updated = true;
      ++graph_stats_.updates;
    } else {
      (void)cudaGetLastError();
      (void)cudaGraphExecDestroy(g->exec);
      g->exec = nullptr;
    }
  }
  cudaError_t inst = cudaSuccess;
  if (!updated) {
    inst = cudaGraphInstantiate(&g->exec, graph, 0);
    ++graph_stats_.instantiates;
  }
  const cudaError_t destroyed = cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    g->exec = nullptr;
    return CudaError(inst, "cudaGraphInstantiate(decode step)");
  }
  if (destroyed != cudaSuccess) return CudaError(destroyed, "cudaGraphDestroy");
  g->plan_len = plan_len;
  return absl::OkStatus();
}

absl::StatusOr<int> CudaModelRunner::RunGraph(absl::Span<const ForwardSeq> seqs, bool greedy) {
  const ModelConfig& c = config_;
  const int bs = options_.block_size;
  const int n = static_cast<int>(seqs.size());
  int bucket = 1, index = 0;
  while (bucket < n) {
    bucket *= 2;
    ++index;
  }
  int max_len = 1;
  int n_logits = 0;
  for (const ForwardSeq& s : seqs) {
    max_len = std::max(max_len, s.start_pos + 1);
    n_logits += s.compute_logits ? 1 : 0;
  }
  const int plan_len = static_cast<int>(AlignUp(max_len, kGraphContextGranule));
  graph_capture_failed_ = false;
  DecodeGraph& g = graphs_[index];
  if (g.exec == nullptr || g.plan_len != plan_len) {
    if (absl::Status s = CaptureGraph(&g, bucket, plan_len); !s.ok()) {
      graph_capture_failed_ = true;
      return s;
    }
  }

  // Stage the inputs in the graph's layout; padded rows: token 0 at position 0, slot -1 (no
  // KV write), context 0 (zero attention output), block table zeros (never read).
  RETURN_IF_ERROR(ReservePinned(&meta_host_, &meta_host_capacity_, g.meta.total));
  std::memset(meta_host_, 0, g.meta.total);
  char* hb = static_cast<char*>(meta_host_);
  auto* ids = reinterpret_cast<int32_t*>(hb + g.meta.ids);
  auto* positions = reinterpret_cast<int32_t*>(hb + g.meta.positions);
  auto* slots = reinterpret_cast<int64_t*>(hb + g.meta.slots);
  auto* logit_rows = reinterpret_cast<int32_t*>(hb + g.meta.logit_rows);
  auto* block_tables = reinterpret_cast<int32_t*>(hb + g.meta.block_tables);
  auto* seq_lens = reinterpret_cast<int32_t*>(hb + g.meta.dec_seq_lens);
  for (int i = 0; i < bucket; ++i) {
    logit_rows[i] = i;
    if (i >= n) {
      slots[i] = -1;
      continue;
    }
    const ForwardSeq& s = seqs[i];
    const int pos = s.start_pos;
    ids[i] = s.tokens[0];
    positions[i] = pos;
    slots[i] = static_cast<int64_t>(s.block_table[pos / bs]) * bs + pos % bs;
    const int used = (pos + 1 + bs - 1) / bs;
    std::copy_n(s.block_table.data(), used, block_tables + static_cast<int64_t>(i) * g.max_blocks);
    seq_lens[i] = pos + 1;
  }
  const size_t row_bytes = greedy ? sizeof(int32_t) : c.vocab_size * sizeof(float);
  RETURN_IF_ERROR(ReservePinned(&logits_host_, &logits_host_capacity_,
                                static_cast<size_t>(n_logits) * row_bytes));

  const absl::Status enqueued = [&]() -> absl::Status {
    RUNNER_CUDA_OK(
        cudaMemcpyAsync(g.arena, meta_host_, g.meta.total, cudaMemcpyHostToDevice, stream_));
    RUNNER_CUDA_OK(cudaGraphLaunch(g.exec, stream_));
    const char* src = static_cast<const char*>(g.arena) + g.scratch_offset +
                      (greedy ? g.scratch.tokens : g.scratch.logits);
    char* dst = static_cast<char*>(logits_host_);
    // Rows of the sequences with compute_logits, in order: one copy per run.
    int out = 0;
    for (int i = 0; i < n;) {
      if (!seqs[i].compute_logits) {
        ++i;
        continue;
      }
      int run = 1;
      while (i + run < n && seqs[i + run].compute_logits) ++run;
      RUNNER_CUDA_OK(cudaMemcpyAsync(dst + out * row_bytes, src + i * row_bytes, run * row_bytes,
                                     cudaMemcpyDeviceToHost, stream_));
      out += run;
      i += run;
    }
    return absl::OkStatus();
  }();
  const cudaError_t synced = cudaStreamSynchronize(stream_);
  RETURN_IF_ERROR(enqueued);
  if (synced != cudaSuccess) return CudaError(synced, "decode graph (cudaStreamSynchronize)");
  ++graph_stats_.launches;
  return n_logits;
}

absl::Status CudaModelRunner::Enqueue(char* md, const MetaLayout& meta, char* sd,
                                      const ScratchLayout& sl, int64_t n_tokens, int n_logits,
                                      int n_dec, int n_pre, int max_blocks, int max_dec_len,
                                      int max_pre_q, size_t dec_ws_bytes, bool greedy,
                                      bool copy_io) {
  const ModelConfig& c = config_;
  const int64_t hidden = c.hidden;
  const int64_t ffn = c.ffn_dim;
  const float eps = c.rms_norm_eps;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const cuda::RopeLayout rope = ToCudaRope(c.rope_layout);
  cudaStream_t st = stream_;

  const auto* d_ids = reinterpret_cast<const int32_t*>(md + meta.ids);
  const auto* d_positions = reinterpret_cast<const int32_t*>(md + meta.positions);
  const auto* d_slots = reinterpret_cast<const int64_t*>(md + meta.slots);
  const auto* d_logit_rows = reinterpret_cast<const int32_t*>(md + meta.logit_rows);
  const auto* d_block_tables = reinterpret_cast<const int32_t*>(md + meta.block_tables);
  const auto* d_dec_seq_lens = reinterpret_cast<const int32_t*>(md + meta.dec_seq_lens);
  const auto* d_pre_cu_q = reinterpret_cast<const int32_t*>(md + meta.pre_cu_q);
  const auto* d_pre_start = reinterpret_cast<const int32_t*>(md + meta.pre_start);
  auto* x = reinterpret_cast<float*>(sd + sl.x);
  auto* h = reinterpret_cast<bf16*>(sd + sl.h);
  auto* qkv = reinterpret_cast<bf16*>(sd + sl.qkv);
  auto* q_dec = reinterpret_cast<bf16*>(sd + sl.q_dec);
  auto* attn = reinterpret_cast<bf16*>(sd + sl.attn);
  auto* gu = reinterpret_cast<bf16*>(sd + sl.gu);
  auto* act = reinterpret_cast<bf16*>(sd + sl.act);
  auto* last = reinterpret_cast<bf16*>(sd + sl.last);
  auto* d_logits = reinterpret_cast<float*>(sd + sl.logits);
  auto* d_tokens = reinterpret_cast<int32_t*>(sd + sl.tokens);
  void* dec_ws = dec_ws_bytes > 0 ? sd + sl.dec_ws : nullptr;

  if (copy_io) {
    RUNNER_CUDA_OK(cudaMemcpyAsync(md, meta_host_, meta.total, cudaMemcpyHostToDevice, st));
  }
  RETURN_IF_ERROR(
      cuda::EmbeddingGatherF32(token_embd_, d_ids, n_tokens, c.vocab_size, hidden, x, st));

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerDevice& L = layers_[l];
    // Attention block: x += Wo · attention(rope(Wqkv · norm(x))).
    RETURN_IF_ERROR(cuda::RmsNormF32ToBf16(x, nullptr, n_tokens, hidden, L.attn_norm, eps, h, st));
    RETURN_IF_ERROR(
        gemm_->Linear(h, L.w_qkv, n_tokens, hidden, qkv_dim_, qkv, cuda::GemmOut::kBf16, st));
    // Q and K heads are adjacent in a qkv row: one launch rotates both.
    RETURN_IF_ERROR(cuda::Rope(qkv, d_positions, n_tokens, c.n_heads + c.n_kv_heads, c.head_dim,
                               qkv_dim_, c.rope_theta, rope, st));
    RETURN_IF_ERROR(cuda::WritePagedKv(qkv + q_dim_, qkv + q_dim_ + kv_dim_, d_slots, n_tokens,
                                       qkv_dim_, L.kv, st));
    if (copy_io) {
      // The layer's KV is written once this event completes: a ReadKvLayer from another
      // thread waits for it on the device, so the layer may be reported now.
      RUNNER_CUDA_OK(cudaEventRecord(layer_events_[l], st));
      NotifyLayerDone(l);
      ++layers_notified_;
    }
    if (n_dec > 0) {
      // The decode kernel reads dense queries: gather the Q part of the first n_dec rows.
      RUNNER_CUDA_OK(cudaMemcpy2DAsync(q_dec, q_dim_ * sizeof(bf16), qkv, qkv_dim_ * sizeof(bf16),
                                       q_dim_ * sizeof(bf16), n_dec, cudaMemcpyDeviceToDevice, st));
      cuda::DecodeAttentionArgs a;
      a.q = q_dec;
      a.out = attn;
      a.seq_lens = d_dec_seq_lens;
      a.block_tables = d_block_tables;
      a.max_blocks_per_seq = max_blocks;
      a.batch = n_dec;
      a.max_seq_len = max_dec_len;
      a.n_heads = c.n_heads;
      a.scale = scale;
      a.workspace = dec_ws;
      a.workspace_bytes = dec_ws_bytes;
      RETURN_IF_ERROR(cuda::DecodeAttention(a, L.kv, st));
    }
    if (n_pre > 0) {
      cuda::PrefillAttentionArgs p;
      p.q = qkv + n_dec * qkv_dim_;
      p.out = attn + n_dec * q_dim_;
      p.q_stride = qkv_dim_;
      p.out_stride = 0;
      p.cu_seqlens_q = d_pre_cu_q;
      p.n_seqs = n_pre;
      p.max_seqlen_q = max_pre_q;
      p.n_heads = c.n_heads;
      p.n_kv_heads = c.n_kv_heads;
      p.head_dim = c.head_dim;
      p.scale = scale;
      p.cache = &L.kv;
      p.block_tables = d_block_tables + static_cast<int64_t>(n_dec) * max_blocks;
      p.max_blocks_per_seq = max_blocks;
      p.start_pos = d_pre_start;
      RETURN_IF_ERROR(cuda::PrefillAttention(p, st));
    }
    RETURN_IF_ERROR(gemm_->Linear(attn, L.w_o, n_tokens, q_dim_, hidden, x, cuda::GemmOut::kF32, st,
                                  /*beta=*/1.0f));

    // SwiGLU MLP: x += Wdown · (silu(Wgate · norm(x)) * (Wup · norm(x))).
    RETURN_IF_ERROR(cuda::RmsNormF32ToBf16(x, nullptr, n_tokens, hidden, L.ffn_norm, eps, h, st));
    RETURN_IF_ERROR(
        gemm_->Linear(h, L.w_gate_up, n_tokens, hidden, 2 * ffn, gu, cuda::GemmOut::kBf16, st));
    RETURN_IF_ERROR(cuda::SwiGlu(gu, gu + ffn, n_tokens, ffn, 2 * ffn, act, st));
    RETURN_IF_ERROR(gemm_->Linear(act, L.w_down, n_tokens, ffn, hidden, x, cuda::GemmOut::kF32, st,
                                  /*beta=*/1.0f));
  }

  if (n_logits > 0) {
    RETURN_IF_ERROR(
        cuda::RmsNormF32ToBf16(x, d_logit_rows, n_logits, hidden, output_norm_, eps, last, st));
    RETURN_IF_ERROR(gemm_->Linear(last, lm_head_, n_logits, hidden, c.vocab_size, d_logits,
                                  cuda::GemmOut::kF32, st));
    if (!copy_io) {
      // Graph capture: the tokens are always computed; the caller copies out what it needs.
      RETURN_IF_ERROR(cuda::ArgmaxRows(d_logits, n_logits, c.vocab_size, d_tokens, st));
    } else if (greedy) {
      RETURN_IF_ERROR(cuda::ArgmaxRows(d_logits, n_logits, c.vocab_size, d_tokens, st));
      RUNNER_CUDA_OK(cudaMemcpyAsync(logits_host_, d_tokens,
                                     static_cast<size_t>(n_logits) * sizeof(int32_t),
                                     cudaMemcpyDeviceToHost, st));
    } else {
      RUNNER_CUDA_OK(cudaMemcpyAsync(logits_host_, d_logits,
                                     static_cast<size_t>(n_logits) * c.vocab_size * sizeof(float),
                                     cudaMemcpyDeviceToHost, st));
    }
  }
  return absl::OkStatus();
}

int64_t CudaModelRunner::KvLayerBytes(int64_t num_blocks) const {
  return 2 * num_blocks * options_.block_size * kv_dim_ * static_cast<int64_t>(sizeof(bf16));
}

absl::Status CudaModelRunner::ReadKvLayer(int layer, absl::Span<const int32_t> blocks, void* dst) {
  return CopyKvLayer(layer, blocks, dst, /*to_packed=*/true);
}

absl::Status CudaModelRunner::WriteKvLayer(int layer, absl::Span<const int32_t> blocks,
                                           const void* src) {
  return CopyKvLayer(layer, blocks, const_cast<void*>(src), /*to_packed=*/false);
}

absl::Status CudaModelRunner::CopyKvLayer(int layer, absl::Span<const int32_t> blocks, void* packed,
                                          bool to_packed) {
  RETURN_IF_ERROR(ValidateKvAccess(config_, layer, blocks, options_.num_kv_blocks));
  if (blocks.empty()) return absl::OkStatus();
  if (packed == nullptr) return absl::InvalidArgumentError("null KV buffer");
  absl::MutexLock lock(&kv_mu_);
  RUNNER_CUDA_OK(cudaSetDevice(options_.device));
  cudaStream_t st = kv_stream_;
  // A read of blocks the eager step in flight writes starts after that step's write of the
  // layer (recorded before the layer was reported). Other blocks were written by finished
  // steps: no wait (the event may already belong to the next step's layer).
  if (to_packed && step_writes_.Touches(blocks)) {
    RUNNER_CUDA_OK(cudaStreamWaitEvent(st, layer_events_[layer], 0));
  }
  const size_t block_bytes = static_cast<size_t>(options_.block_size) * kv_dim_ * sizeof(bf16);
  const size_t half = blocks.size() * block_bytes;  // K of every block, then V
  const cuda::PagedKvCache& kv = layers_[layer].kv;
  const size_t n_blocks = blocks.size();
  if (options_.kv_copy_kernel && block_bytes % 16 == 0 &&
      reinterpret_cast<uintptr_t>(packed) % 16 == 0 && IsDeviceMemory(packed)) {
    // One gather/scatter launch for every block of K and V; the ids go over in one copy.
    RETURN_IF_ERROR(ReservePinned(&kv_ids_host_, &kv_ids_host_capacity_, n_blocks * 4));
    RETURN_IF_ERROR(ReserveDevice(&kv_ids_dev_, &kv_ids_dev_capacity_, n_blocks * 4));
    std::memcpy(kv_ids_host_, blocks.data(), n_blocks * 4);
    const absl::Status enqueued = [&]() -> absl::Status {
      RUNNER_CUDA_OK(cudaMemcpyAsync(kv_ids_dev_, kv_ids_host_, n_blocks * 4,
                                     cudaMemcpyHostToDevice, st));
      return cuda::CopyKvBlocks(kv.k, kv.v, static_cast<const int32_t*>(kv_ids_dev_),
                                static_cast<int64_t>(n_blocks), static_cast<int64_t>(block_bytes),
                                packed, to_packed, st);
    }();
    const cudaError_t synced = cudaStreamSynchronize(st);
    RETURN_IF_ERROR(enqueued);
    if (synced != cudaSuccess) return CudaError(synced, "KV layer copy kernel (sync)");
    ++kv_kernel_copies_;
    return absl::OkStatus();
  }
  const absl::Status enqueued = [&]() -> absl::Status {
    for (int part = 0; part < 2; ++part) {
      char* cache = reinterpret_cast<char*>(part == 0 ? kv.k : kv.v);
      char* buf = static_cast<char*>(packed) + part * half;
      // Runs of consecutive ids are one copy (allocators hand out runs).
      for (size_t i = 0; i < blocks.size();) {
        size_t n = 1;
        while (i + n < blocks.size() && blocks[i + n] == blocks[i] + static_cast<int32_t>(n)) ++n;
        char* c_at = cache + static_cast<size_t>(blocks[i]) * block_bytes;
        char* b_at = buf + i * block_bytes;
        RUNNER_CUDA_OK(cudaMemcpyAsync(to_packed ? b_at : c_at, to_packed ? c_at : b_at,
                                       n * block_bytes, cudaMemcpyDefault, st));
        i += n;
      }
    }
    return absl::OkStatus();
  }();
  const cudaError_t synced = cudaStreamSynchronize(st);
  RETURN_IF_ERROR(enqueued);
  if (synced != cudaSuccess) return CudaError(synced, "KV layer copy (cudaStreamSynchronize)");
  ++kv_memcpy_copies_;
  return absl::OkStatus();
}

RunnerBackend CudaRunnerBackend() {
  RunnerBackend backend;
  backend.name = "cuda";
  backend.kv_dtypes = {KvDtype::kBF16};
  backend.make = [](const ModelWeights& weights,
                    const RunnerOptions& options) -> absl::StatusOr<std::unique_ptr<ModelRunner>> {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || options.device_index >= count) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no CUDA device ", options.device_index, ": ",
          e != cudaSuccess ? absl::StrCat("cudaGetDeviceCount: ", cudaGetErrorName(e), " (",
                                          cudaGetErrorString(e), ")")
                           : absl::StrCat("this machine has ", count)));
    }
    CudaModelRunnerOptions cuda_options;
    cuda_options.device = options.device_index;
    cuda_options.num_kv_blocks = options.num_kv_blocks;
    cuda_options.block_size = options.block_size;
    ASSIGN_OR_RETURN(std::unique_ptr<CudaModelRunner> runner,
                     CudaModelRunner::Create(weights, cuda_options));
    return std::unique_ptr<ModelRunner>(std::move(runner));
  };
  return backend;
}

}  // namespace tandem
