// The single-process engine: weights, backend, paged KV cache, scheduler and samplers. One
// thread owns it and calls Step() in a loop; each step schedules, runs one forward pass and
// returns what every request produced.
//
// Not thread-safe: engine thread only. Workers put a command queue in front of it.
#ifndef TANDEM_ENGINE_ENGINE_H_
#define TANDEM_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/chat_template.h"
#include "engine/kv_cache_manager.h"
#include "engine/model_runner.h"
#include "engine/model_weights.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/tokenizer.h"
#include "kernels/cpu/attention.h"

namespace tandem {

struct EngineOptions {
  std::string device = "cpu";             // "cpu", "cuda" or "cuda:N" (engine/runner_registry.h)
  int num_threads = 0;                    // 0: every core
  int64_t kv_cache_bytes = 512ll << 20;   // KV memory; sets the block count
  int64_t num_kv_blocks = 0;              // overrides kv_cache_bytes when > 0
  int block_size = 16;
  KvDtype kv_dtype = KvDtype::kF16;       // kF16 means "the backend's default" (bf16 on CUDA)
  int32_t max_batch_tokens = 512;
  int32_t max_num_seqs = 64;
  bool enable_prefix_caching = true;
  bool exact_matmul = false;  // fp32 reference matmuls (golden tests)
  int32_t max_context = 0;    // 0: the model's context length
};

struct EngineStats {
  int64_t steps = 0;
  int64_t prompt_tokens_computed = 0;   // prefill tokens fed (cache hits excluded)
  int64_t generated_tokens = 0;
  int64_t preemptions = 0;
  int32_t running = 0;
  int32_t waiting = 0;
  int64_t free_kv_blocks = 0;
  int64_t total_kv_blocks = 0;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_prompt_tokens = 0;
  absl::Duration time_to_first_token;
  absl::Duration total_time;
};

class Engine {
 public:
  // Loads a model (weights, tokenizer, chat template) from a GGUF file or a Hugging Face
  // directory (engine/model_store.h: LoadModel).
  static absl::StatusOr<std::unique_ptr<Engine>> FromModelPath(const std::string& path,
                                                               const EngineOptions& options);
  // `tokenizer` and `chat_template` may be null: token ids in and out, no stop strings.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::unique_ptr<ModelWeights> weights, std::unique_ptr<Tokenizer> tokenizer,
      std::unique_ptr<ChatTemplate> chat_template, const EngineOptions& options);
  ~Engine();

  // Validates and queues a request. INVALID_ARGUMENT names the problem (empty prompt,
  // prompt or max_tokens beyond the context, bad sampling parameters).
  absl::StatusOr<RequestId> AddRequest(GenerationRequest request);
  // Finishes the request with kAborted at the next Step and frees its blocks at once.
  void Abort(RequestId id);
  bool HasWork() const;
  // One scheduling step and forward pass.
  absl::StatusOr<std::vector<RequestOutput>> Step();

  // Runs one request to completion, calling `on_output` for each step's output.
  absl::StatusOr<GenerationResult> Generate(
      GenerationRequest request,
      const std::function<void(const RequestOutput&)>& on_output = nullptr);

  // --- Disaggregation, prefill side ---
  // Blocks of a finished GenerationParams::hold_kv request, in token order; NOT_FOUND when
  // the request holds none.
  absl::StatusOr<std::vector<int32_t>> HeldBlocks(RequestId id) const;
  // Frees a hold_kv request's blocks (after the decode worker acknowledged them, or at a
  // deadline). Full blocks stay in the prefix cache.
  void ReleaseKv(RequestId id);

  // A hold_kv request whose prompt completes in the current step: its KV of one layer is in
  // `blocks` (token order, ceil(num_tokens / block_size) of them) once the hook is called.
  struct KvLayerReady {
    RequestId id = 0;
    absl::Span<const int32_t> blocks;  // valid during the call; copy to keep
    int32_t num_tokens = 0;
  };
  // Called on the engine thread during Step, once per layer in increasing order, as soon
  // as the runner has written that layer for every hold_kv request whose prompt completes
  // in this step (the first token is sampled at the end of the same step). Layer l's
  // blocks of those requests are not written again until ReleaseKv, so another thread may
  // read them while the step computes layer l + 1.
  using KvLayerHook = std::function<void(int layer, absl::Span<const KvLayerReady> ready)>;
  void SetKvLayerHook(KvLayerHook hook) { kv_layer_hook_ = std::move(hook); }

  // --- Disaggregation, decode side ---
  struct Reservation {
    RequestId id = 0;
    std::vector<int32_t> blocks;  // receive the prompt's KV here (LayerReceiver)
    absl::Time deadline;
  };
  // Validates `request` like AddRequest and reserves KV blocks for its prompt.
  // RESOURCE_EXHAUSTED when the cache cannot hold them now. A reservation not admitted by
  // `deadline` is freed by Step and reported as aborted: a lost transfer never strands
  // blocks.
  absl::StatusOr<Reservation> Reserve(GenerationRequest request, absl::Time deadline);
  // The prompt's KV is in the reserved blocks: the request joins the running batch with the
  // first token the prefill worker sampled (its text comes out of the next Step).
  absl::Status AdmitPrefilled(RequestId id, int32_t first_token);
  // Moves a reservation's deadline to `deadline` if that is later (a renewed lease).
  // NOT_FOUND when it is no longer reserved (admitted, cancelled or expired).
  absl::Status ExtendReservation(RequestId id, absl::Time deadline);
  // Frees a reservation whose transfer failed or was cancelled.
  void CancelReservation(RequestId id);
  // Outputs produced between steps (the first token of an admitted request, aborts), which
  // the next Step would otherwise return: a decode worker streams the first token at once
  // instead of one decode step later.
  std::vector<RequestOutput> TakePendingOutputs();

  // The backend, for moving KV in and out of its cache (engine thread only).
  ModelRunner& runner() { return *runner_; }
  const ModelRunner& runner() const { return *runner_; }

  // Last-position logits of a prompt, computed in a scratch sequence ([vocab]).
  absl::StatusOr<std::vector<float>> PromptLogits(const std::vector<int32_t>& tokens);

  const ModelConfig& config() const;
  const EngineOptions& options() const { return options_; }
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }
  const ChatTemplate* chat_template() const { return chat_template_.get(); }
  const KvCacheManager& kv_cache() const { return *kv_cache_; }
  int32_t max_context() const { return max_context_; }
  EngineStats stats() const;

 private:
  Engine() = default;
  absl::Status ValidateRequest(const GenerationRequest& request) const;
  std::unique_ptr<Sequence> MakeSequence(GenerationRequest request);
  // Appends a sampled token and decides whether the request is done.
  FinishReason AppendToken(Sequence& seq, int32_t token, RequestOutput& out);
  // Reports a finished sequence and drops it from the scheduler (keeping hold_kv blocks).
  void Finish(Sequence& seq, RequestOutput out);
  void ExpireReservations(absl::Time now);

  EngineOptions options_;
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_template_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<KvCacheManager> kv_cache_;
  std::unique_ptr<Scheduler> scheduler_;
  int32_t max_context_ = 0;
  RequestId next_id_ = 1;
  std::vector<RequestOutput> pending_outputs_;  // reported by the next Step
  struct PendingReservation {
    std::unique_ptr<Sequence> seq;
    absl::Time deadline;
  };
  absl::flat_hash_map<RequestId, PendingReservation> reserved_;  // awaiting their KV
  KvLayerHook kv_layer_hook_;
  std::vector<KvLayerReady> kv_ready_;  // this step's hold_kv requests completing their prompt
  std::vector<float> logits_;  // [n_sampled, vocab]
  std::vector<int32_t> greedy_tokens_;  // [n_sampled] when the runner sampled greedily
  std::vector<ForwardSeq> forward_seqs_;
  EngineStats stats_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_ENGINE_H_
