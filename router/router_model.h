// The router's model: its tokenizer, chat template and shape, read from the GGUF metadata
// alone (the router never loads weights).
//
// Immutable once loaded; thread-safe.
#ifndef TANDEM_ROUTER_ROUTER_MODEL_H_
#define TANDEM_ROUTER_ROUTER_MODEL_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace tandem::router {

class RouterModel {
 public:
  // `path` is a GGUF file; the id is its file name without ".gguf"
  // ("SmolLM2-135M-Instruct.Q4_1").
  static absl::StatusOr<std::unique_ptr<RouterModel>> Load(const std::string& path);

  // The id ListModels reports and requests name.
  const std::string& id() const { return id_; }
  // Whether a request's `model` field names this model: empty, the id, or the GGUF's
  // general.name.
  bool Matches(std::string_view model) const;

  const ModelConfig& config() const { return config_; }
  const std::string& fingerprint() const { return fingerprint_; }
  int context_length() const { return config_.context_length; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // Null when the GGUF has no chat template tandem can render.
  const ChatTemplate* chat_template() const {
    return chat_template_.has_value() ? &*chat_template_ : nullptr;
  }
  const std::string& path() const { return path_; }

 private:
  RouterModel() = default;

  std::string path_;
  std::string id_;
  ModelConfig config_;
  std::string fingerprint_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_MODEL_H_
