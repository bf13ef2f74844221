#include "router/validate.h"

#include <cmath>
#include <string>
#include <utility>

#include "common/strings.h"
#include "engine/chat_template.h"

namespace tandem::router {
namespace {

absl::Status ValidateSampling(const v1::SamplingParams& s) {
  if (s.has_max_tokens() && s.max_tokens() <= 0) {
    return absl::InvalidArgumentError(Cat("sampling.max_tokens must be > 0, got ", s.max_tokens()));
  }
  if (s.has_temperature() && !(std::isfinite(s.temperature()) && s.temperature() >= 0)) {
    return absl::InvalidArgumentError(
        Cat("sampling.temperature must be a finite number >= 0, got ", s.temperature()));
  }
  if (s.has_top_p() && !(s.top_p() > 0 && s.top_p() <= 1)) {  // NaN fails both
    return absl::InvalidArgumentError(Cat("sampling.top_p must be in (0, 1], got ", s.top_p()));
  }
  if (s.has_top_k() && s.top_k() < 0) {
    return absl::InvalidArgumentError(Cat("sampling.top_k must be >= 0, got ", s.top_k()));
  }
  if (s.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(Cat("sampling.stop has ", s.stop_size(), " strings; at most ",
                                          kMaxStopStrings, " are allowed"));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).empty()) {
      return absl::InvalidArgumentError(Cat("sampling.stop[", i, "] must not be empty"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> PromptTokens(const v1::GenerateRequest& request,
                                                  const RouterModel& model) {
  const Tokenizer& tokenizer = model.tokenizer();
  std::vector<int32_t> tokens;
  auto with_bos = [&](std::vector<int32_t> ids) {
    if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) ids.insert(ids.begin(), tokenizer.bos_id());
    return ids;
  };
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      if (request.prompt().empty()) return absl::InvalidArgumentError("prompt must not be empty");
      tokens = with_bos(tokenizer.Encode(request.prompt(), /*parse_special=*/false));
      if (tokens.empty()) {
        return absl::InvalidArgumentError(
            "prompt encodes to no tokens (bytes the vocabulary lacks)");
      }
      return tokens;
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return absl::InvalidArgumentError("token_ids.ids must not be empty");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
          return absl::InvalidArgumentError(Cat("token_ids.ids[", i, "] = ", ids[i],
                                                " is outside the vocabulary [0, ",
                                                tokenizer.vocab_size(), ")"));
        }
      }
      return std::vector<int32_t>(ids.begin(), ids.end());
    }
    case v1::GenerateRequest::kChat: {
      const auto& messages = request.chat().messages();
      if (messages.empty()) return absl::InvalidArgumentError("chat.messages must not be empty");
      std::vector<ChatMessage> chat;
      chat.reserve(messages.size());
      for (int i = 0; i < messages.size(); ++i) {
        const std::string& role = messages[i].role();
        if (role != "system" && role != "user" && role != "assistant") {
          return absl::InvalidArgumentError(Cat("chat.messages[", i, "].role must be system, ",
                                                "user or assistant, got '", role, "'"));
        }
        chat.push_back({role, messages[i].content()});
      }
      if (model.chat_template() == nullptr) {
        return absl::InvalidArgumentError(
            Cat("chat: model '", model.id(), "' has no chat template tandem can render"));
      }
      absl::StatusOr<std::string> text = model.chat_template()->Render(chat, true);
      if (!text.ok()) return absl::InvalidArgumentError(Cat("chat: ", text.status().message()));
      tokens = with_bos(tokenizer.Encode(*text, /*parse_special=*/true));
      return tokens;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("input must be set: one of prompt, token_ids or chat");
}

}  // namespace

absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                         const RouterModel& model) {
  if (!model.Matches(request.model())) {
    return absl::InvalidArgumentError(
        Cat("model '", request.model(), "' is not served; this router serves '", model.id(), "'"));
  }
  if (!v1::PrefillMode_IsValid(request.mode())) {
    return absl::InvalidArgumentError(
        Cat("mode ", static_cast<int>(request.mode()), " is not a PrefillMode"));
  }
  if (absl::Status s = ValidateSampling(request.sampling()); !s.ok()) return s;
  absl::StatusOr<std::vector<int32_t>> tokens = PromptTokens(request, model);
  if (!tokens.ok()) return tokens.status();

  const int64_t n_prompt = static_cast<int64_t>(tokens->size());
  const int64_t context = model.context_length();
  if (n_prompt >= context) {
    return absl::InvalidArgumentError(
        Cat("prompt has ", n_prompt, " tokens; the context is ", context));
  }
  ValidatedRequest out;
  out.sampling = request.sampling();
  if (!out.sampling.has_max_tokens()) out.sampling.set_max_tokens(context - n_prompt);
  const int64_t max_tokens = out.sampling.max_tokens();
  if (n_prompt + max_tokens > context) {
    return absl::InvalidArgumentError(Cat("sampling.max_tokens ", max_tokens, " plus the prompt's ",
                                          n_prompt, " tokens exceeds the context of ", context,
                                          " (at most ", context - n_prompt, ")"));
  }
  out.prompt_tokens = std::move(*tokens);
  return out;
}

}  // namespace tandem::router
