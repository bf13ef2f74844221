#include "engine/runner_registry.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/strings.h"
#include "engine/cpu_model_runner.h"

namespace tandem {
namespace {

RunnerBackend CpuBackend() {
  RunnerBackend cpu;
  cpu.name = "cpu";
  cpu.kv_dtypes = {KvDtype::kF16, KvDtype::kF32};
  cpu.make = [](const ModelWeights& weights,
                const RunnerOptions& options) -> absl::StatusOr<std::unique_ptr<ModelRunner>> {
    return std::make_unique<CpuModelRunner>(weights, CpuRunnerOptionsFrom(options));
  };
  return cpu;
}

struct Registry {
  absl::Mutex mu;
  absl::flat_hash_map<std::string, RunnerBackend> backends ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* const registry = new Registry;  // never destroyed
  return *registry;
}

}  // namespace

CpuModelRunnerOptions CpuRunnerOptionsFrom(const RunnerOptions& options) {
  CpuModelRunnerOptions cpu;
  cpu.num_threads = options.num_threads;
  cpu.num_kv_blocks = options.num_kv_blocks;
  cpu.block_size = options.block_size;
  cpu.kv_dtype = options.kv_dtype;
  cpu.exact_matmul = options.exact_matmul;
  return cpu;
}

std::string DeviceSpec::ToString() const {
  return backend == "cpu" ? backend : Cat(backend, ":", index);
}

absl::StatusOr<DeviceSpec> ParseDevice(std::string_view text) {
  DeviceSpec spec;
  const size_t colon = text.find(':');
  spec.backend = std::string(text.substr(0, colon));
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  bool ok = !spec.backend.empty() && spec.backend.front() >= 'a' && spec.backend.front() <= 'z' &&
            std::all_of(spec.backend.begin(), spec.backend.end(), [&](char c) {
              return (c >= 'a' && c <= 'z') || is_digit(c) || c == '_';
            });
  if (ok && colon != std::string_view::npos) {
    const std::string index(text.substr(colon + 1));
    ok = spec.backend != "cpu" && !index.empty() &&
         std::all_of(index.begin(), index.end(), is_digit) &&
         absl::SimpleAtoi(index, &spec.index) && spec.index < 1024;
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        Cat("device '", text, "': expected a backend and an optional device index: cpu, cuda, "
            "cuda:N"));
  }
  return spec;
}

void RegisterRunnerBackend(RunnerBackend backend) {
  Registry& r = GetRegistry();
  absl::MutexLock lock(&r.mu);
  std::string name = backend.name;
  r.backends[name] = std::move(backend);
}

absl::StatusOr<RunnerBackend> FindRunnerBackend(std::string_view name) {
  if (name == "cpu") return CpuBackend();
  Registry& r = GetRegistry();
  {
    absl::MutexLock lock(&r.mu);
    auto it = r.backends.find(std::string(name));
    if (it != r.backends.end()) return it->second;
  }
  return absl::NotFoundError(Cat("this build has no '", name, "' backend (it has: ",
                                 absl::StrJoin(RunnerBackendNames(), ", "),
                                 name == "cuda" ? "; configure with -DTANDEM_WITH_CUDA=ON" : "",
                                 ")"));
}

std::vector<std::string> RunnerBackendNames() {
  std::vector<std::string> names = {"cpu"};
  Registry& r = GetRegistry();
  {
    absl::MutexLock lock(&r.mu);
    for (const auto& [name, backend] : r.backends) {
      if (name != "cpu") names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace tandem
