// The Llama forward pass on one CUDA device: the same model as engine/cpu_model_runner.h
// with bf16 weights, activations and paged KV cache, an fp32 residual stream and fp32 logits.
//
// Weights (any GGML type) are dequantized on the host at construction and uploaded as bf16
// into one device arena; Q|K|V and gate|up are concatenated so each is one GEMM. Each
// Forward stages its metadata in one pinned buffer (one host-to-device copy), enqueues the
// whole pass on the runner's stream and synchronizes once, after the logits copy. Decode
// steps (one token per sequence) replay a CUDA graph of the whole pass instead (see
// CudaModelRunnerOptions::use_cuda_graphs).
// CreateSynthetic fills the arena with random values on the device instead (benchmarks at
// real sizes without host weights).
#ifndef TANDEM_ENGINE_CUDA_CUDA_MODEL_RUNNER_H_
#define TANDEM_ENGINE_CUDA_CUDA_MODEL_RUNNER_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/model_config.h"
#include "engine/model_runner.h"
#include "engine/model_weights.h"
#include "engine/runner_registry.h"
#include "engine/step_kv_writes.h"
#include "kernels/cuda/cuda_kernels.h"

namespace tandem {

struct CudaModelRunnerOptions {
  int device = 0;
  int64_t num_kv_blocks = 1024;
  int block_size = 16;
  // One-token sequences go to the flash-decoding kernel; false sends every sequence to the
  // prefill kernel (which handles one query too): a cross-check for tests.
  bool decode_kernel = true;
  // Decode steps (every sequence feeds exactly 1 token, decode_kernel on, at most
  // kMaxGraphBatch sequences) replay a CUDA graph of the whole step (embedding, every layer,
  // final norm, LM head, argmax) captured for the batch rounded up to a power of two (padded
  // rows write no KV and attend to nothing). The graph reads its inputs from fixed device
  // buffers filled by one host-to-device copy before the launch; it is re-captured (or
  // updated in place) when the step's context, rounded up to 64 tokens, changes, so the
  // decode attention split plan equals the non-graph one. false: every kernel is launched
  // one by one (the previous path). Each bucket keeps its own device buffers.
  bool use_cuda_graphs = true;
  // ReadKvLayer/WriteKvLayer: one gather/scatter kernel per call copies every block of K and
  // V between the cache and a packed device buffer (16-byte accesses); false, or a packed
  // buffer that is not device memory or not 16-byte aligned: one cudaMemcpyAsync per run of
  // consecutive block ids (the previous path).
  bool kv_copy_kernel = true;
};

// One thread (the engine thread) calls Forward; it may differ from the constructing thread
// (Forward selects the device itself). ReadKvLayer and WriteKvLayer may be called from other
// threads, also while Forward runs: they run on their own stream under their own lock, on
// blocks the running step does not write (the engine's contract for held and reserved
// blocks).
//
// Layers as they land: the eager path records an event after each layer's KV write and
// reports the layer (NotifyLayerDone) as soon as that layer is enqueued; a later
// ReadKvLayer of the layer waits for the event on the device when the step in flight
// writes the blocks it reads (StepKvWrites), so a prefill worker's transfer thread streams
// layer l while layer l + 1 computes, and a read after the step does not wait for the next. Decode steps run as graphs report
// nothing (the engine reports the layers after Forward returns).
class CudaModelRunner : public ModelRunner {
 public:
  // Uploads the weights; `weights` may be freed afterwards. FAILED_PRECONDITION for a model
  // the kernels cannot run (head_dim other than 64/128, odd dims), INTERNAL for CUDA/cuBLAS
  // failures (out of memory included).
  static absl::StatusOr<std::unique_ptr<CudaModelRunner>> Create(
      const ModelWeights& weights, const CudaModelRunnerOptions& options);
  // Random bf16 weights for `config`, made on the device without host weights (an 8B model
  // starts in seconds): matrices ~ N(0, 0.02), tiled device-to-device from a 16 MiB pool of
  // values drawn on the host from `seed` at random 16-byte-aligned offsets; norm weights
  // ~ 1 + N(0, 0.02). Same seed, same weights. For benchmarks: the values mean nothing.
  static absl::StatusOr<std::unique_ptr<CudaModelRunner>> CreateSynthetic(
      const ModelConfig& config, const CudaModelRunnerOptions& options, uint64_t seed);
  ~CudaModelRunner() override;
  CudaModelRunner(const CudaModelRunner&) = delete;
  CudaModelRunner& operator=(const CudaModelRunner&) = delete;

  const ModelConfig& config() const override { return config_; }
  int64_t num_kv_blocks() const override { return options_.num_kv_blocks; }
  int block_size() const override { return options_.block_size; }
  // Device bytes of the bf16 KV cache (K and V, every layer) and of the weights.
  int64_t kv_cache_bytes() const { return kv_bytes_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  absl::Status Forward(absl::Span<const ForwardSeq> seqs, std::vector<float>* logits) override;
  // Forward with greedy sampling on the device: `tokens` gets the argmax (first on ties, as
  // std::max_element over Forward's logits) of every sequence with compute_logits, in order.
  // Only [n_logits] int32 cross to the host instead of [n_logits, vocab] fp32.
  absl::Status ForwardGreedy(absl::Span<const ForwardSeq> seqs,
                             std::vector<int32_t>* tokens) override;
  bool greedy_on_device() const override { return true; }

  // KV access (see ModelRunner): `dst`/`src` are device memory (host memory works too:
  // cudaMemcpyDefault). Device buffers go through one gather/scatter kernel
  // (kv_copy_kernel); otherwise runs of consecutive block ids are copied as one piece. The
  // copies run on the KV stream (after the layer's last recorded write, for a read) and are
  // synchronized before returning. Thread-safe (see the class comment).
  bool kv_on_device() const override { return true; }
  KvDtype kv_dtype() const override { return KvDtype::kBF16; }
  int64_t KvLayerBytes(int64_t num_blocks) const override;
  absl::Status ReadKvLayer(int layer, absl::Span<const int32_t> blocks, void* dst) override;
  absl::Status WriteKvLayer(int layer, absl::Span<const int32_t> blocks, const void* src) override;

  // Largest decode batch replayed as a CUDA graph (buckets 1, 2, 4, ..., kMaxGraphBatch).
  static constexpr int kMaxGraphBatch = 256;
  struct GraphStats {
    int64_t captures = 0;      // graphs captured (each is instantiated or updated into one)
    int64_t instantiates = 0;  // cudaGraphInstantiate calls
    int64_t updates = 0;       // successful cudaGraphExecUpdate calls (no new instantiate)
    int64_t launches = 0;      // decode steps run as a graph
  };
  const GraphStats& graph_stats() const { return graph_stats_; }
  // Turns the graph path on or off for later steps (captured graphs are kept): benchmarks
  // compare both on one runner.
  void set_use_cuda_graphs(bool on) { options_.use_cuda_graphs = on; }
  bool use_cuda_graphs() const { return options_.use_cuda_graphs; }
  // Turns the KV copy kernel on or off for later ReadKvLayer/WriteKvLayer calls.
  void set_kv_copy_kernel(bool on) { options_.kv_copy_kernel = on; }
  // KV layer copies done by the gather/scatter kernel and by cudaMemcpyAsync runs.
  int64_t kv_kernel_copies() const { return kv_kernel_copies_.load(); }
  int64_t kv_memcpy_copies() const { return kv_memcpy_copies_.load(); }
  // Layers reported through NotifyLayerDone while Forward ran (eager steps only).
  int64_t layers_notified() const { return layers_notified_; }

  // The stream every Forward runs on (idle between calls), and the one KV copies run on.
  cudaStream_t stream() const { return stream_; }
  cudaStream_t kv_stream() const { return kv_stream_; }
  int device() const override { return options_.device; }

 private:
  using bf16 = cuda::bf16;

  struct LayerDevice {
    const float* attn_norm = nullptr;  // [hidden]
    const bf16* w_qkv = nullptr;       // [q_dim + 2 * kv_dim, hidden]: Q rows, K rows, V rows
    const bf16* w_o = nullptr;         // [hidden, q_dim]
    const float* ffn_norm = nullptr;   // [hidden]
    const bf16* w_gate_up = nullptr;   // [2 * ffn, hidden]: gate rows, then up rows
    const bf16* w_down = nullptr;      // [hidden, ffn]
    cuda::PagedKvCache kv;             // this layer's K and V
  };

  // One step's metadata as laid out in the staging buffers (byte offsets).
  struct MetaLayout {
    size_t ids = 0;           // int32 [T]
    size_t positions = 0;     // int32 [T]
    size_t slots = 0;         // int64 [T]
    size_t logit_rows = 0;    // int32 [n_logits]: token row of each logits row
    size_t block_tables = 0;  // int32 [n_seqs, max_blocks]: decode rows first
    size_t dec_seq_lens = 0;  // int32 [n_dec]
    size_t pre_cu_q = 0;      // int32 [n_pre + 1]
    size_t pre_start = 0;     // int32 [n_pre]
    size_t total = 0;
  };

  // Step activations carved from one device arena (byte offsets).
  struct ScratchLayout {
    size_t x = 0;       // fp32 [T, hidden] residual stream
    size_t h = 0;       // bf16 [T, hidden] normed input
    size_t qkv = 0;     // bf16 [T, q_dim + 2 * kv_dim]
    size_t q_dec = 0;   // bf16 [n_dec, q_dim] dense queries for the decode kernel
    size_t attn = 0;    // bf16 [T, q_dim]
    size_t gu = 0;      // bf16 [T, 2 * ffn]
    size_t act = 0;     // bf16 [T, ffn]
    size_t last = 0;    // bf16 [n_logits, hidden]
    size_t logits = 0;  // fp32 [n_logits, vocab]
    size_t tokens = 0;  // int32 [n_logits] greedy tokens (ForwardGreedy)
    size_t dec_ws = 0;  // decode attention workspace
    size_t total = 0;
  };

  // A captured decode step for one batch bucket: its own device buffers (metadata, then
  // scratch) so that no later reallocation moves what the graph reads.
  struct DecodeGraph {
    int bucket = 0;      // padded batch
    int plan_len = 0;    // max_seq_len given to decode attention: a multiple of 64
    int max_blocks = 0;  // block table width: ceil(plan_len / block_size)
    void* arena = nullptr;
    size_t arena_bytes = 0;
    size_t scratch_offset = 0;  // scratch starts here in arena
    MetaLayout meta;
    ScratchLayout scratch;
    size_t dec_ws_bytes = 0;
    cudaGraphExec_t exec = nullptr;
  };

  CudaModelRunner(const ModelConfig& config, const CudaModelRunnerOptions& options);
  static MetaLayout PlanMeta(int64_t n_tokens, int n_logits, int n_seqs, int max_blocks, int n_dec,
                             int n_pre);
  ScratchLayout PlanScratch(int64_t n_tokens, int n_logits, int n_dec, size_t dec_ws_bytes) const;
  // The graph path of Run (every sequence one token, n_seqs <= kMaxGraphBatch).
  absl::StatusOr<int> RunGraph(absl::Span<const ForwardSeq> seqs, bool greedy);
  // (Re)captures `g` for `bucket` sequences and `plan_len`.
  absl::Status CaptureGraph(DecodeGraph* g, int bucket, int plan_len);
  // FAILED_PRECONDITION / INVALID_ARGUMENT for what the kernels cannot run.
  static absl::Status CheckSupported(const ModelConfig& config,
                                     const CudaModelRunnerOptions& options);
  // Stream, cuBLAS, the weight arena (pointers set, contents undefined) and the zeroed KV
  // cache.
  absl::Status Allocate(bool tied);
  absl::Status Upload(const ModelWeights& weights);
  absl::Status FillSynthetic(uint64_t seed);
  absl::Status ValidateBatch(absl::Span<const ForwardSeq> seqs) const;
  // Forward and ForwardGreedy: `greedy` leaves [n_logits] int32 tokens in logits_host_,
  // otherwise [n_logits, vocab] fp32 logits; returns n_logits.
  absl::StatusOr<int> Run(absl::Span<const ForwardSeq> seqs, bool greedy);
  // Copies one layer's K and V of `blocks` between the cache and a packed buffer.
  absl::Status CopyKvLayer(int layer, absl::Span<const int32_t> blocks, void* packed,
                           bool to_packed);
  // Grows a device or pinned buffer to at least `bytes` (contents are not kept).
  absl::Status ReserveDevice(void** ptr, size_t* capacity, size_t bytes);
  absl::Status ReservePinned(void** ptr, size_t* capacity, size_t bytes);
  // Enqueues the step; Forward synchronizes whatever the outcome.
  // `md`/`meta`: device metadata; `sd`/`sl`: scratch. copy_io: copy meta_host_ in first and
  // the results to logits_host_ last (the eager path); false (graph capture): neither, and the
  // argmax always runs.
  absl::Status Enqueue(char* md, const MetaLayout& meta, char* sd, const ScratchLayout& sl,
                       int64_t n_tokens, int n_logits, int n_dec, int n_pre, int max_blocks,
                       int max_dec_len, int max_pre_q, size_t dec_ws_bytes, bool greedy,
                       bool copy_io);

  ModelConfig config_;
  CudaModelRunnerOptions options_;
  int64_t q_dim_ = 0;
  int64_t kv_dim_ = 0;
  int64_t qkv_dim_ = 0;
  bool use_decode_kernel_ = true;  // option, and the kernel's n_heads / n_kv_heads <= 8

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::CublasGemm> gemm_;

  void* weight_arena_ = nullptr;  // device: every weight and norm vector
  int64_t weight_bytes_ = 0;
  void* kv_arena_ = nullptr;  // device: [n_layers][K, V][num_blocks, block_size, n_kv, hd]
  int64_t kv_bytes_ = 0;
  const bf16* token_embd_ = nullptr;    // [vocab, hidden]
  const bf16* lm_head_ = nullptr;       // [vocab, hidden]; token_embd_ when tied
  const float* output_norm_ = nullptr;  // [hidden]
  std::vector<LayerDevice> layers_;

  // Grown to the largest step seen.
  void* scratch_ = nullptr;  // device, ScratchLayout
  size_t scratch_capacity_ = 0;
  void* meta_dev_ = nullptr;  // device copy of the staged metadata
  size_t meta_dev_capacity_ = 0;
  void* meta_host_ = nullptr;  // pinned, MetaLayout
  size_t meta_host_capacity_ = 0;
  void* logits_host_ = nullptr;  // pinned fp32 [n_logits, vocab], or int32 [n_logits] tokens
  size_t logits_host_capacity_ = 0;
  MetaLayout meta_;
  ScratchLayout scratch_layout_;

  // Decode graphs, one per bucket (index log2(bucket)).
  std::vector<DecodeGraph> graphs_;
  GraphStats graph_stats_;
  bool graph_capture_failed_ = false;
  // KV copies (ReadKvLayer / WriteKvLayer), on their own stream under kv_mu_: block ids
  // staged in pinned memory, copied to the device for the copy kernel.
  absl::Mutex kv_mu_;
  cudaStream_t kv_stream_ = nullptr;
  void* kv_ids_host_ ABSL_GUARDED_BY(kv_mu_) = nullptr;
  size_t kv_ids_host_capacity_ ABSL_GUARDED_BY(kv_mu_) = 0;
  void* kv_ids_dev_ ABSL_GUARDED_BY(kv_mu_) = nullptr;
  size_t kv_ids_dev_capacity_ ABSL_GUARDED_BY(kv_mu_) = 0;
  std::atomic<int64_t> kv_kernel_copies_{0};
  std::atomic<int64_t> kv_memcpy_copies_{0};
  // [n_layers]: recorded on stream_ after the layer's KV write of each eager step.
  std::vector<cudaEvent_t> layer_events_;
  // The blocks the eager step in flight writes (graph-replayed decode steps write only
  // their own sequences' newest slots, which no transfer reads).
  StepKvWrites step_writes_;
  int64_t layers_notified_ = 0;

  // Host-side step bookkeeping.
  std::vector<int> order_;         // internal sequence order: 1-token (decode) ones first
  std::vector<int64_t> last_row_;  // [n_seqs] internal token row of each sequence's last token
};

// The "cuda" entry of the engine's backend table (engine/runner_registry.h): a
// CudaModelRunner on device `RunnerOptions::device_index` with bf16 KV.
// FAILED_PRECONDITION when the machine has no such CUDA device.
RunnerBackend CudaRunnerBackend();

}  // namespace tandem

#endif  // TANDEM_ENGINE_CUDA_CUDA_MODEL_RUNNER_H_
