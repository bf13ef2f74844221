// The engine's command-line flags, shared by `tandem generate`, `tandem bench engine` and
// the worker processes, so every engine-backed binary reads --threads (and the rest) alike.
#ifndef TANDEM_ENGINE_BACKENDS_ENGINE_FLAGS_H_
#define TANDEM_ENGINE_BACKENDS_ENGINE_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/args.h"
#include "engine/engine.h"

namespace tandem {

// --model, --device, --threads, --kv-cache-mb, --max-batch-tokens, --max-num-seqs, --kv-f32,
// --no-prefix-cache, --exact.
std::vector<FlagSpec> EngineFlagSpecs();
// Also registers the built-in backends (engine/backends/backends.h) and checks that --device
// names one of them.
absl::StatusOr<EngineOptions> EngineOptionsFromArgs(const Args& args);
// --model default|PATH, resolved to a GGUF file or a Hugging Face directory.
absl::StatusOr<std::string> ModelPathFromArgs(const Args& args);

}  // namespace tandem

#endif  // TANDEM_ENGINE_BACKENDS_ENGINE_FLAGS_H_
