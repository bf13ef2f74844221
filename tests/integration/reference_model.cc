#include "tests/integration/reference_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backends/backends.h"
#include "tests/testing/test_env.h"

namespace tandem::integration {

absl::StatusOr<ReferenceModel*> ReferenceModel::Default() {
  static absl::Mutex mu(absl::kConstInit);
  static ReferenceModel* instance = nullptr;
  absl::MutexLock lock(&mu);
  if (instance != nullptr) return instance;
  RegisterBuiltinBackends();
  EngineOptions options;
  options.num_threads = 1;
  options.device = testing::TestDevice();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::FromModelPath(testing::DefaultModelPath(), options);
  if (!engine.ok()) return engine.status();
  instance = new ReferenceModel(*std::move(engine));
  return instance;
}

std::vector<int32_t> ReferenceModel::TokenizePrompt(const std::string& text) const {
  const Tokenizer& tokenizer = *engine_->tokenizer();
  std::vector<int32_t> ids;
  if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  std::vector<int32_t> body = tokenizer.Encode(text, /*parse_special=*/false);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReferenceModel::TokenizeChat(
    const std::vector<ChatMessage>& messages) const {
  if (engine_->chat_template() == nullptr) {
    return absl::FailedPreconditionError("the model has no chat template");
  }
  absl::StatusOr<std::string> text = engine_->chat_template()->Render(messages, true);
  if (!text.ok()) return text.status();
  const Tokenizer& tokenizer = *engine_->tokenizer();
  std::vector<int32_t> ids;
  if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) ids.push_back(tokenizer.bos_id());
  std::vector<int32_t> body = tokenizer.Encode(*text, /*parse_special=*/true);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

absl::StatusOr<std::vector<int32_t>> ReferenceModel::TokenizeUserChat(
    const std::string& user_message) const {
  return TokenizeChat({ChatMessage{"user", user_message}});
}

absl::StatusOr<ReferenceOutput> ReferenceModel::Greedy(const std::vector<int32_t>& prompt,
                                                       int max_tokens, bool ignore_eos) {
  GenerationRequest request;
  request.prompt_tokens = prompt;
  request.params.max_tokens = max_tokens;
  request.params.sampling.temperature = 0.0f;
  request.params.ignore_eos = ignore_eos;
  return Run(request);
}

absl::StatusOr<ReferenceOutput> ReferenceModel::Run(const GenerationRequest& request) {
  const GenerationParams& p = request.params;
  const std::string key = absl::StrCat(
      absl::StrJoin(request.prompt_tokens, ","), "|", p.max_tokens, "|", p.ignore_eos ? 1 : 0, "|",
      p.sampling.temperature, "|", p.sampling.top_p, "|", p.sampling.top_k, "|",
      p.sampling.seed.has_value() ? absl::StrCat(*p.sampling.seed) : "-", "|",
      absl::StrJoin(p.stop, "\x1f"));
  absl::MutexLock lock(&mu_);
  if (auto it = memo_.find(key); it != memo_.end()) return it->second;
  absl::StatusOr<GenerationResult> result = engine_->Generate(request);
  if (!result.ok()) return result.status();
  ReferenceOutput out{result->tokens, result->text, result->finish_reason};
  memo_[key] = out;
  return out;
}

}  // namespace tandem::integration
