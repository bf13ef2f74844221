// Backends by name: the engine builds its ModelRunner from EngineOptions::device ("cpu",
// "cuda", "cuda:1") through this table, so the engine library does not depend on any
// accelerator library. "cpu" is always there; other backends are registered by the binary
// that links them (engine/backends/backends.h: RegisterBuiltinBackends), as ggml's backend
// registry does.
#ifndef TANDEM_ENGINE_RUNNER_REGISTRY_H_
#define TANDEM_ENGINE_RUNNER_REGISTRY_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/cpu_model_runner.h"
#include "engine/model_runner.h"
#include "engine/model_weights.h"
#include "kernels/cpu/attention.h"

namespace tandem {

// "cpu", "cuda" (= "cuda:0") or "cuda:N": a backend name ([a-z][a-z0-9_]*) and, except for
// cpu, an optional device index.
struct DeviceSpec {
  std::string backend;
  int index = 0;

  std::string ToString() const;
};
// INVALID_ARGUMENT naming the text for a malformed one ("cuda:-1", "cuda:x", "cpu:1", "");
// whether the backend exists is FindRunnerBackend's question.
absl::StatusOr<DeviceSpec> ParseDevice(std::string_view text);

// What every backend gets from EngineOptions.
struct RunnerOptions {
  int device_index = 0;
  int64_t num_kv_blocks = 0;
  int block_size = 16;
  KvDtype kv_dtype = KvDtype::kF16;
  int num_threads = 0;        // CPU compute threads (0: every core)
  bool exact_matmul = false;  // CPU fp32 reference matmuls
};

// The CPU runner's options for `options` (the cpu backend's, and any backend built on it).
CpuModelRunnerOptions CpuRunnerOptionsFrom(const RunnerOptions& options);

struct RunnerBackend {
  std::string name;
  // Builds a runner; `weights` may be freed afterwards only when the backend copies them
  // (the engine keeps them alive either way).
  std::function<absl::StatusOr<std::unique_ptr<ModelRunner>>(const ModelWeights& weights,
                                                             const RunnerOptions& options)>
      make;
  // The KV dtypes the backend keeps; the first is its default (the engine's kF16 default is
  // replaced by it when the backend does not keep f16).
  std::vector<KvDtype> kv_dtypes;
};

// Adds a backend, or replaces one of the same name (thread-safe); "cpu" is built in and
// cannot be replaced.
void RegisterRunnerBackend(RunnerBackend backend);
// NOT_FOUND, naming the backends this binary has, for an unknown name.
absl::StatusOr<RunnerBackend> FindRunnerBackend(std::string_view name);
// Registered names, sorted.
std::vector<std::string> RunnerBackendNames();

}  // namespace tandem

#endif  // TANDEM_ENGINE_RUNNER_REGISTRY_H_
