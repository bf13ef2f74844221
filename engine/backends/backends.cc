#include "engine/backends/backends.h"

#include <mutex>

#include "engine/runner_registry.h"
#if TANDEM_HAVE_CUDA_BACKEND
#include "engine/cuda/cuda_model_runner.h"
#endif

namespace tandem {

void RegisterBuiltinBackends() {
  static std::once_flag once;
  std::call_once(once, [] {
#if TANDEM_HAVE_CUDA_BACKEND
    RegisterRunnerBackend(CudaRunnerBackend());
#endif
  });
}

}  // namespace tandem
