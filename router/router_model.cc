#include "router/router_model.h"

#include <filesystem>
#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/model_store.h"

namespace tandem::router {

absl::StatusOr<std::unique_ptr<RouterModel>> RouterModel::Load(const std::string& path) {
  ASSIGN_OR_RETURN(LoadedModel info, LoadModel(path, /*with_weights=*/false));
  std::unique_ptr<RouterModel> model(new RouterModel());
  model->path_ = path;
  std::filesystem::path p(path);
  model->id_ = p.extension() == ".gguf" ? p.stem().string() : p.filename().string();
  model->config_ = std::move(info.config);
  model->fingerprint_ = model->config_.Fingerprint();
  model->tokenizer_ = std::move(info.tokenizer);
  if (info.chat_template != nullptr) {
    model->chat_template_ = std::move(*info.chat_template);
  } else {
    LOG(WARNING) << "model " << model->id_
                 << ": chat requests will be refused: " << info.chat_template_error;
  }
  return model;
}

bool RouterModel::Matches(std::string_view model) const {
  return model.empty() || model == id_ || (!config_.name.empty() && model == config_.name);
}

}  // namespace tandem::router
