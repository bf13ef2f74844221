// Chat prompt rendering. tandem does not run Jinja: it recognizes the ChatML templates it
// knows (after normalizing whitespace inside Jinja tags) and renders them natively.
//   <|im_start|>{role}\n{content}<|im_end|>\n   per message, then
//   <|im_start|>assistant\n                     as the generation prompt.
// Known forms: plain ChatML, and ChatML that opens with a default system message when the
// first message is not a system one (SmolLM2, Qwen2). Any other template is UNIMPLEMENTED
// with the reason, never rendered by guesswork.
//
// Immutable; thread-safe.
#ifndef TANDEM_ENGINE_CHAT_TEMPLATE_H_
#define TANDEM_ENGINE_CHAT_TEMPLATE_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf_file.h"

namespace tandem {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  // From `tokenizer.chat_template`; NOT_FOUND when the GGUF has none.
  static absl::StatusOr<ChatTemplate> FromGguf(const GgufFile& gguf);
  // From Jinja source; UNIMPLEMENTED for a template outside the known forms.
  static absl::StatusOr<ChatTemplate> FromTemplateString(std::string_view source);
  // Plain ChatML, optionally with a default system message.
  static ChatTemplate ChatMl(std::optional<std::string> default_system = std::nullopt);

  // INVALID_ARGUMENT for a role other than system/user/assistant.
  absl::StatusOr<std::string> Render(absl::Span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

  // Inserted before the first message when that one is not a system message.
  const std::optional<std::string>& default_system() const { return default_system_; }

 private:
  explicit ChatTemplate(std::optional<std::string> default_system)
      : default_system_(std::move(default_system)) {}

  std::optional<std::string> default_system_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_CHAT_TEMPLATE_H_
