// The backends this binary was built with, registered in the engine's backend table
// (engine/runner_registry.h). Every binary that builds an Engine from flags gets them
// through EngineOptionsFromArgs; code that calls Engine::Create with a device other than
// "cpu" calls RegisterBuiltinBackends first.
#ifndef TANDEM_ENGINE_BACKENDS_BACKENDS_H_
#define TANDEM_ENGINE_BACKENDS_BACKENDS_H_

namespace tandem {

// Registers "cuda" when the build has the CUDA backend (TANDEM_WITH_CUDA). Idempotent and
// thread-safe.
void RegisterBuiltinBackends();

}  // namespace tandem

#endif  // TANDEM_ENGINE_BACKENDS_BACKENDS_H_
