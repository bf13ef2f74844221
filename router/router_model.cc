#include "router/router_model.h"

#include <filesystem>
#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/gguf_file.h"

namespace tandem::router {

absl::StatusOr<std::unique_ptr<RouterModel>> RouterModel::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  std::unique_ptr<RouterModel> model(new RouterModel());
  model->path_ = path;
  std::filesystem::path p(path);
  model->id_ = p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
  ASSIGN_OR_RETURN(model->config_, ModelConfigFromGguf(*gguf));
  model->fingerprint_ = model->config_.Fingerprint();
  ASSIGN_OR_RETURN(model->tokenizer_, Tokenizer::FromGguf(*gguf));
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromGguf(*gguf);
  if (chat.ok()) {
    model->chat_template_ = std::move(*chat);
  } else {
    LOG(WARNING) << "model " << model->id_ << ": chat requests will be refused: " << chat.status();
  }
  return model;
}

bool RouterModel::Matches(std::string_view model) const {
  return model.empty() || model == id_ || (!config_.name.empty() && model == config_.name);
}

}  // namespace tandem::router
