// The single-process reference: the default model in one Engine (one thread, default
// options otherwise), tokenizing prompts and chats the way the router is specified to, and
// generating greedily. Disaggregated output is compared token for token against it.
//
// Thread-safe: one engine behind a mutex; results are memoized.
#ifndef TANDEM_TESTS_INTEGRATION_REFERENCE_MODEL_H_
#define TANDEM_TESTS_INTEGRATION_REFERENCE_MODEL_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"

namespace tandem::integration {

struct ReferenceOutput {
  std::vector<int32_t> tokens;
  std::string text;
  FinishReason finish_reason = FinishReason::kNone;
};

class ReferenceModel {
 public:
  // The process-wide instance for testing::DefaultModelPath(), loaded on first use.
  static absl::StatusOr<ReferenceModel*> Default();

  // Raw text, as GenerateRequest.prompt: no special-token parsing (BOS when the model asks).
  std::vector<int32_t> TokenizePrompt(const std::string& text) const;
  // GenerateRequest.chat: the model's chat template with the generation prompt, special
  // tokens parsed.
  absl::StatusOr<std::vector<int32_t>> TokenizeChat(const std::vector<ChatMessage>& messages) const;
  absl::StatusOr<std::vector<int32_t>> TokenizeUserChat(const std::string& user_message) const;

  // Greedy (temperature 0) generation of up to `max_tokens` tokens after `prompt`.
  absl::StatusOr<ReferenceOutput> Greedy(const std::vector<int32_t>& prompt, int max_tokens,
                                         bool ignore_eos = false);
  // Any request (sampling parameters, stop strings), memoized.
  absl::StatusOr<ReferenceOutput> Run(const GenerationRequest& request);

  int32_t context_length() const { return engine_->max_context(); }
  int32_t vocab_size() const { return engine_->config().vocab_size; }
  const Engine& engine() const { return *engine_; }

 private:
  explicit ReferenceModel(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {}

  absl::Mutex mu_;
  std::unique_ptr<Engine> engine_;  // Generate under mu_; the tokenizer is immutable
  std::map<std::string, ReferenceOutput> memo_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::integration

#endif  // TANDEM_TESTS_INTEGRATION_REFERENCE_MODEL_H_
