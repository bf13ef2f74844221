#include "engine/engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/model_store.h"
#include "engine/runner_registry.h"

namespace tandem {
namespace {

// Request ids below zero are the engine's own scratch sequences.
constexpr RequestId kScratchSeqId = -1;

// Largest n <= end such that text[begin, n) does not end inside a UTF-8 sequence.
size_t Utf8SafeEnd(const std::string& text, size_t begin, size_t end) {
  while (end > begin && end < text.size() &&
         (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) {
    --end;
  }
  return end;
}

}  // namespace

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kContext: return "context";
    case FinishReason::kAborted: return "aborted";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::FromModelPath(const std::string& path,
                                                              const EngineOptions& options) {
  ASSIGN_OR_RETURN(LoadedModel model, LoadModel(path, /*with_weights=*/true));
  if (model.chat_template == nullptr) {
    LOG(WARNING) << "no chat template: " << model.chat_template_error;
  }
  return Create(std::move(model.weights), std::move(model.tokenizer),
                std::move(model.chat_template), options);
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    std::unique_ptr<ModelWeights> weights, std::unique_ptr<Tokenizer> tokenizer,
    std::unique_ptr<ChatTemplate> chat_template, const EngineOptions& options) {
  if (weights == nullptr) return absl::InvalidArgumentError("no weights");
  const ModelConfig& c = weights->config();
  if (options.block_size <= 0 || options.block_size > 1024) {
    return absl::InvalidArgumentError(
        absl::StrFormat("block_size %d must be in [1, 1024]", options.block_size));
  }
  if (options.max_batch_tokens <= 0 || options.max_num_seqs <= 0) {
    return absl::InvalidArgumentError("max_batch_tokens and max_num_seqs must be positive");
  }
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  engine->max_context_ =
      options.max_context > 0 ? std::min(options.max_context, c.context_length) : c.context_length;

  ASSIGN_OR_RETURN(const DeviceSpec device, ParseDevice(options.device));
  ASSIGN_OR_RETURN(const RunnerBackend backend, FindRunnerBackend(device.backend));
  KvDtype kv_dtype = options.kv_dtype;
  if (std::find(backend.kv_dtypes.begin(), backend.kv_dtypes.end(), kv_dtype) ==
      backend.kv_dtypes.end()) {
    if (kv_dtype != KvDtype::kF16 || backend.kv_dtypes.empty()) {
      return absl::InvalidArgumentError(Cat(
          "the ", backend.name, " backend does not keep the KV cache in ", KvDtypeName(kv_dtype)));
    }
    kv_dtype = backend.kv_dtypes.front();  // the default f16 means "the backend's own"
  }
  engine->options_.kv_dtype = kv_dtype;
  const int64_t block_bytes =
      2ll * c.n_layers * c.n_kv_heads * c.head_dim * KvDtypeBytes(kv_dtype) * options.block_size;
  int64_t num_blocks = options.num_kv_blocks;
  if (num_blocks <= 0) num_blocks = options.kv_cache_bytes / block_bytes;
  if (num_blocks < 2) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KV cache of %d bytes holds %d blocks of %d bytes; need at least 2",
        options.kv_cache_bytes, num_blocks, block_bytes));
  }

  RunnerOptions runner_options;
  runner_options.device_index = device.index;
  runner_options.num_threads = options.num_threads;
  runner_options.num_kv_blocks = num_blocks;
  runner_options.block_size = options.block_size;
  runner_options.kv_dtype = kv_dtype;
  runner_options.exact_matmul = options.exact_matmul;
  ASSIGN_OR_RETURN(engine->runner_, backend.make(*weights, runner_options));

  KvCacheOptions kv_options;
  kv_options.num_blocks = num_blocks;
  kv_options.block_size = options.block_size;
  kv_options.enable_prefix_caching = options.enable_prefix_caching;
  engine->kv_cache_ = std::make_unique<KvCacheManager>(kv_options);

  SchedulerOptions sched_options;
  sched_options.max_batch_tokens = options.max_batch_tokens;
  sched_options.max_num_seqs = options.max_num_seqs;
  engine->scheduler_ = std::make_unique<Scheduler>(sched_options, *engine->kv_cache_);

  engine->weights_ = std::move(weights);
  engine->tokenizer_ = std::move(tokenizer);
  engine->chat_template_ = std::move(chat_template);
  return engine;
}

Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return weights_->config(); }

absl::Status Engine::ValidateRequest(const GenerationRequest& request) const {
  const ModelConfig& c = config();
  const int64_t n_prompt = static_cast<int64_t>(request.prompt_tokens.size());
  if (n_prompt == 0) return absl::InvalidArgumentError("prompt is empty");
  for (int32_t t : request.prompt_tokens) {
    if (t < 0 || t >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrFormat("prompt token %d is outside the vocabulary of %d", t, c.vocab_size));
    }
  }
  const GenerationParams& p = request.params;
  if (p.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("max_tokens must be positive, got %d", p.max_tokens));
  }
  if (n_prompt >= max_context_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prompt of %d tokens does not fit the context of %d tokens", n_prompt, max_context_));
  }
  if (p.max_tokens > max_context_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_tokens %d exceeds the context of %d tokens", p.max_tokens, max_context_));
  }
  // Generation that would run past the context stops there (FinishReason::kContext).
  const int64_t max_len = std::min<int64_t>(n_prompt + p.max_tokens, max_context_);
  const int64_t blocks_needed = (max_len + options_.block_size - 1) / options_.block_size;
  if (blocks_needed > kv_cache_->num_total_blocks()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "request needs %d KV blocks but the cache holds %d", blocks_needed,
        kv_cache_->num_total_blocks()));
  }
  RETURN_IF_ERROR(p.sampling.Validate(c.vocab_size));
  for (const std::string& stop : p.stop) {
    if (stop.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  if (!p.stop.empty() && tokenizer_ == nullptr) {
    return absl::InvalidArgumentError("stop strings need a tokenizer");
  }
  if (p.hold_kv && p.max_tokens != 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a request that holds its KV for a decode worker generates one token; max_tokens is %d",
        p.max_tokens));
  }
  return absl::OkStatus();

}

std::unique_ptr<Sequence> Engine::MakeSequence(GenerationRequest request) {
  auto seq = std::make_unique<Sequence>();
  seq->id = next_id_++;
  seq->num_prompt_tokens = static_cast<int32_t>(request.prompt_tokens.size());
  seq->tokens = std::move(request.prompt_tokens);
  seq->params = std::move(request.params);
  seq->sampler = std::make_unique<Sampler>(seq->params.sampling);
  if (tokenizer_ != nullptr) {
    seq->detokenizer = std::make_unique<IncrementalDetokenizer>(*tokenizer_);
  }
  seq->arrival_time = absl::Now();
  return seq;
}

absl::StatusOr<RequestId> Engine::AddRequest(GenerationRequest request) {
  RETURN_IF_ERROR(ValidateRequest(request));
  std::unique_ptr<Sequence> seq = MakeSequence(std::move(request));
  const RequestId id = seq->id;
  scheduler_->Add(std::move(seq));
  return id;
}

void Engine::Abort(RequestId id) {
  if (reserved_.contains(id)) {
    CancelReservation(id);
  } else if (scheduler_->Find(id) != nullptr) {
    scheduler_->Remove(id);  // the blocks are free at once
  } else {
    return;
  }
  RequestOutput out;
  out.id = id;
  out.finish_reason = FinishReason::kAborted;
  pending_outputs_.push_back(std::move(out));
}

bool Engine::HasWork() const {
  return scheduler_->HasWork() || !pending_outputs_.empty() || !reserved_.empty();
}

void Engine::Finish(Sequence& seq, RequestOutput out) {
  out.num_prompt_tokens = seq.num_prompt_tokens;
  out.num_cached_prompt_tokens = seq.num_cached_prompt_tokens;
  out.num_generated_tokens = seq.num_generated();
  const RequestId id = seq.id;
  if (out.finished()) scheduler_->Remove(id, /*keep_blocks=*/seq.params.hold_kv);
  pending_outputs_.push_back(std::move(out));
}

absl::StatusOr<std::vector<int32_t>> Engine::HeldBlocks(RequestId id) const {
  if (scheduler_->Find(id) != nullptr || !kv_cache_->Contains(id)) {
    return absl::NotFoundError(absl::StrFormat("request %d holds no KV blocks", id));
  }
  return kv_cache_->BlockTable(id);
}

void Engine::ReleaseKv(RequestId id) {
  if (scheduler_->Find(id) == nullptr) kv_cache_->Free(id);
}

absl::StatusOr<Engine::Reservation> Engine::Reserve(GenerationRequest request,
                                                    absl::Time deadline) {
  RETURN_IF_ERROR(ValidateRequest(request));
  if (request.params.hold_kv) {
    return absl::InvalidArgumentError("a decode reservation cannot hold its KV");
  }
  std::unique_ptr<Sequence> seq = MakeSequence(std::move(request));
  if (!kv_cache_->Allocate(seq->id, seq->num_prompt_tokens)) {
    kv_cache_->Free(seq->id);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "no room for %d prompt tokens: %d of %d KV blocks free", seq->num_prompt_tokens,
        kv_cache_->num_free_blocks(), kv_cache_->num_total_blocks()));
  }
  Reservation reservation;
  reservation.id = seq->id;
  reservation.blocks = kv_cache_->BlockTable(seq->id);
  reservation.deadline = deadline;
  reserved_[reservation.id] = {std::move(seq), deadline};
  return reservation;
}

absl::Status Engine::AdmitPrefilled(RequestId id, int32_t first_token) {
  auto it = reserved_.find(id);
  if (it == reserved_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("no reservation %d (cancelled, expired or already admitted)", id));
  }
  if (first_token < 0 || first_token >= config().vocab_size) {
    CancelReservation(id);
    return absl::InvalidArgumentError(
        absl::StrFormat("first token %d is outside the vocabulary", first_token));
  }
  std::unique_ptr<Sequence> seq = std::move(it->second.seq);
  reserved_.erase(it);
  // The prompt's KV arrived; blocks that became full are shareable like locally computed ones.
  seq->num_computed = seq->num_prompt_tokens;
  kv_cache_->CommitTokens(id, seq->tokens, seq->num_computed);
  // The prefill engine drew the first token from the same seeded stream: continue it.
  seq->sampler->SkipSample();
  RequestOutput out;
  out.id = id;
  out.finish_reason = AppendToken(*seq, first_token, out);
  Sequence& ref = *seq;
  scheduler_->AddPrefilled(std::move(seq));
  Finish(ref, std::move(out));
  return absl::OkStatus();
}

std::vector<RequestOutput> Engine::TakePendingOutputs() {
  std::vector<RequestOutput> outputs = std::move(pending_outputs_);
  pending_outputs_.clear();
  return outputs;
}

absl::Status Engine::ExtendReservation(RequestId id, absl::Time deadline) {
  auto it = reserved_.find(id);
  if (it == reserved_.end()) {
    return absl::NotFoundError(
        absl::StrFormat("no reservation %d (cancelled, expired or already admitted)", id));
  }
  it->second.deadline = std::max(it->second.deadline, deadline);
  return absl::OkStatus();
}

void Engine::CancelReservation(RequestId id) {
  if (reserved_.erase(id) == 0) return;
  kv_cache_->Free(id);
}

void Engine::ExpireReservations(absl::Time now) {
  std::vector<RequestId> expired;
  for (const auto& [id, pending] : reserved_) {
    if (pending.deadline <= now) expired.push_back(id);
  }
  for (RequestId id : expired) Abort(id);
}

FinishReason Engine::AppendToken(Sequence& seq, int32_t token, RequestOutput& out) {
  seq.tokens.push_back(token);
  out.new_tokens.push_back(token);
  FinishReason reason = FinishReason::kNone;
  const bool eog = tokenizer_ != nullptr && tokenizer_->IsEog(token);
  if (eog && !seq.params.ignore_eos) {
    reason = FinishReason::kStop;
  } else if (seq.detokenizer != nullptr) {
    seq.text += seq.detokenizer->Push(token);
  }

  // Stop strings: the text ends before the first match; matches may straddle steps.
  size_t max_stop = 0;
  for (const std::string& s : seq.params.stop) max_stop = std::max(max_stop, s.size());
  if (reason == FinishReason::kNone && max_stop > 0) {
    const size_t from = seq.text_emitted >= max_stop ? seq.text_emitted - max_stop + 1 : 0;
    size_t best = std::string::npos;
    for (const std::string& s : seq.params.stop) best = std::min(best, seq.text.find(s, from));
    if (best != std::string::npos) {
      seq.text.resize(best);
      reason = FinishReason::kStop;
    }
  }
  if (reason == FinishReason::kNone && seq.num_generated() >= seq.params.max_tokens) {
    reason = FinishReason::kLength;
  }
  if (reason == FinishReason::kNone && static_cast<int32_t>(seq.tokens.size()) >= max_context_) {
    reason = FinishReason::kContext;
  }
  if (reason != FinishReason::kNone && reason != FinishReason::kStop &&
      seq.detokenizer != nullptr) {
    seq.text += seq.detokenizer->Flush();
  }

  // Hold back a tail that could still become a stop string, never splitting a character.
  size_t end = seq.text.size();
  if (reason == FinishReason::kNone && max_stop > 1) {
    end = end >= max_stop - 1 ? end - (max_stop - 1) : 0;
    end = std::max(end, seq.text_emitted);
    end = Utf8SafeEnd(seq.text, seq.text_emitted, end);
  }
  if (end > seq.text_emitted) {
    out.new_text = seq.text.substr(seq.text_emitted, end - seq.text_emitted);
    seq.text_emitted = end;
  }
  return reason;
}

absl::StatusOr<std::vector<RequestOutput>> Engine::Step() {
  if (!reserved_.empty()) ExpireReservations(absl::Now());
  std::vector<RequestOutput> outputs = std::move(pending_outputs_);
  pending_outputs_.clear();

  SchedulerOutput sched = scheduler_->Schedule();
  stats_.preemptions += static_cast<int64_t>(sched.preempted.size());
  if (sched.empty()) return outputs;

  forward_seqs_.clear();
  for (const ScheduledSeq& s : sched.seqs) {
    ForwardSeq f;
    f.tokens = absl::MakeConstSpan(s.seq->tokens).subspan(s.start_pos, s.num_tokens);
    f.start_pos = s.start_pos;
    f.block_table = kv_cache_->BlockTable(s.seq->id);
    f.compute_logits = s.sample;
    forward_seqs_.push_back(f);
    if (s.start_pos < s.seq->num_prompt_tokens) {
      stats_.prompt_tokens_computed +=
          std::min(s.start_pos + s.num_tokens, s.seq->num_prompt_tokens) - s.start_pos;
    }
  }
  kv_ready_.clear();
  if (kv_layer_hook_) {
    for (size_t i = 0; i < sched.seqs.size(); ++i) {
      const ScheduledSeq& s = sched.seqs[i];
      if (!s.seq->params.hold_kv || !s.sample) continue;
      const int32_t n = s.seq->num_prompt_tokens;
      const int64_t num_blocks = (n + options_.block_size - 1) / options_.block_size;
      kv_ready_.push_back({s.seq->id, forward_seqs_[i].block_table.subspan(0, num_blocks), n});
    }
  }
  int layers_reported = 0;
  if (!kv_ready_.empty()) {
    runner_->set_layer_done_callback([&](int layer) {
      kv_layer_hook_(layer, kv_ready_);
      layers_reported = layer + 1;
    });
  }
  // Every sampled sequence greedy and a runner that takes the argmax where the logits are:
  // only the token ids come back.
  bool greedy = runner_->greedy_on_device();
  for (const ScheduledSeq& s : sched.seqs) {
    if (greedy && s.sample && !s.seq->sampler->greedy()) greedy = false;
  }
  absl::Status forward = greedy ? runner_->ForwardGreedy(forward_seqs_, &greedy_tokens_)
                                : runner_->Forward(forward_seqs_, &logits_);
  if (!kv_ready_.empty()) {
    runner_->set_layer_done_callback(nullptr);
    if (forward.ok()) {
      for (int l = layers_reported; l < config().n_layers; ++l) kv_layer_hook_(l, kv_ready_);
    }
  }
  RETURN_IF_ERROR(forward);
  scheduler_->OnStepDone(sched);
  ++stats_.steps;

  const int32_t vocab = config().vocab_size;
  int64_t row = 0;
  for (const ScheduledSeq& s : sched.seqs) {
    if (!s.sample) continue;
    Sequence& seq = *s.seq;
    const int32_t token =
        greedy ? greedy_tokens_[row]
               : seq.sampler->Sample(absl::MakeConstSpan(logits_).subspan(row * vocab, vocab));
    ++row;
    ++stats_.generated_tokens;
    RequestOutput out;
    out.id = seq.id;
    out.finish_reason = AppendToken(seq, token, out);
    Finish(seq, std::move(out));
  }
  outputs.insert(outputs.end(), std::make_move_iterator(pending_outputs_.begin()),
                 std::make_move_iterator(pending_outputs_.end()));
  pending_outputs_.clear();
  return outputs;
}

absl::StatusOr<GenerationResult> Engine::Generate(
    GenerationRequest request, const std::function<void(const RequestOutput&)>& on_output) {
  const absl::Time start = absl::Now();
  GenerationResult result;
  result.num_prompt_tokens = static_cast<int32_t>(request.prompt_tokens.size());
  ASSIGN_OR_RETURN(RequestId id, AddRequest(std::move(request)));
  while (result.finish_reason == FinishReason::kNone) {
    ASSIGN_OR_RETURN(std::vector<RequestOutput> outputs, Step());
    for (const RequestOutput& out : outputs) {
      if (out.id != id) continue;
      if (result.tokens.empty() && !out.new_tokens.empty()) {
        result.time_to_first_token = absl::Now() - start;
      }
      result.tokens.insert(result.tokens.end(), out.new_tokens.begin(), out.new_tokens.end());
      result.text += out.new_text;
      result.finish_reason = out.finish_reason;
      if (on_output) on_output(out);
    }
  }
  result.total_time = absl::Now() - start;
  return result;
}

absl::StatusOr<std::vector<float>> Engine::PromptLogits(const std::vector<int32_t>& tokens) {
  if (tokens.empty()) return absl::InvalidArgumentError("prompt is empty");
  if (static_cast<int64_t>(tokens.size()) > max_context_) {
    return absl::InvalidArgumentError("prompt longer than the context");
  }
  if (!kv_cache_->Allocate(kScratchSeqId, static_cast<int64_t>(tokens.size()))) {
    return absl::ResourceExhaustedError("not enough free KV blocks for the prompt");
  }
  absl::Status status;
  std::vector<float> logits;
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t start = 0; start < n && status.ok(); start += options_.max_batch_tokens) {
    const int32_t len = std::min(options_.max_batch_tokens, n - start);
    ForwardSeq f;
    f.tokens = absl::MakeConstSpan(tokens).subspan(start, len);
    f.start_pos = start;
    f.block_table = kv_cache_->BlockTable(kScratchSeqId);
    f.compute_logits = start + len == n;
    status = runner_->Forward({f}, &logits);
  }
  kv_cache_->Free(kScratchSeqId);
  RETURN_IF_ERROR(status);
  return logits;
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  s.preemptions = scheduler_->num_preemptions();
  s.running = scheduler_->num_running();
  s.waiting = scheduler_->num_waiting();
  s.free_kv_blocks = kv_cache_->num_free_blocks();
  s.total_kv_blocks = kv_cache_->num_total_blocks();
  return s;
}

}  // namespace tandem
