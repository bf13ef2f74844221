#include "engine/backends/engine_flags.h"

#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/backends/backends.h"
#include "engine/model_store.h"
#include "engine/runner_registry.h"

namespace tandem {

std::vector<FlagSpec> EngineFlagSpecs() {
  return {
      {"model", false,
       "'default' (SmolLM2-135M-Instruct Q4_1), a GGUF path or a Hugging Face directory"},
      {"device", false, "cpu (default), cuda or cuda:N: the backend that runs the model"},
      {"threads", false, "compute threads (default: every core)"},
      {"kv-cache-mb", false, "KV cache memory in MiB (default 512)"},
      {"max-batch-tokens", false, "tokens per engine step (default 512)"},
      {"max-num-seqs", false, "sequences per engine step (default 64)"},
      {"kv-f32", true, "keep the KV cache in fp32 instead of fp16"},
      {"no-prefix-cache", true, "disable prefix caching"},
      {"exact", true, "fp32 reference matmuls (slow; for checking precision)"},
  };
}

absl::StatusOr<EngineOptions> EngineOptionsFromArgs(const Args& args) {
  EngineOptions options;
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", 0));
  ASSIGN_OR_RETURN(int64_t kv_mb, args.GetInt("kv-cache-mb", 512));
  ASSIGN_OR_RETURN(int64_t batch_tokens, args.GetInt("max-batch-tokens", 512));
  ASSIGN_OR_RETURN(int64_t num_seqs, args.GetInt("max-num-seqs", 64));
  if (threads < 0 || threads > 1024) return absl::InvalidArgumentError("--threads out of range");
  if (kv_mb <= 0) return absl::InvalidArgumentError("--kv-cache-mb must be positive");
  if (batch_tokens <= 0 || batch_tokens > (1 << 20)) {
    return absl::InvalidArgumentError("--max-batch-tokens out of range");
  }
  if (num_seqs <= 0 || num_seqs > 4096) {
    return absl::InvalidArgumentError("--max-num-seqs out of range");
  }
  options.num_threads = static_cast<int>(threads);
  options.kv_cache_bytes = kv_mb << 20;
  options.max_batch_tokens = static_cast<int32_t>(batch_tokens);
  options.max_num_seqs = static_cast<int32_t>(num_seqs);
  options.kv_dtype = args.Has("kv-f32") ? KvDtype::kF32 : KvDtype::kF16;
  options.enable_prefix_caching = !args.Has("no-prefix-cache");
  options.exact_matmul = args.Has("exact");
  RegisterBuiltinBackends();
  options.device = args.GetString("device", "cpu");
  ASSIGN_OR_RETURN(const DeviceSpec device, ParseDevice(options.device));
  RETURN_IF_ERROR(FindRunnerBackend(device.backend).status());
  if (device.backend != "cpu" && (options.kv_dtype == KvDtype::kF32 || options.exact_matmul)) {
    return absl::InvalidArgumentError(
        Cat("--kv-f32 and --exact are for the cpu backend; ", device.backend,
            " keeps bf16 weights and KV"));
  }
  return options;
}

absl::StatusOr<std::string> ModelPathFromArgs(const Args& args) {
  return ResolveModelPath(args.GetString("model", "default"));
}

}  // namespace tandem
