// A generation request as the engine sees it, and what the engine reports back per step.
#ifndef TANDEM_ENGINE_REQUEST_H_
#define TANDEM_ENGINE_REQUEST_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "engine/sampler.h"

namespace tandem {

using RequestId = int64_t;

enum class FinishReason {
  kNone,       // still running
  kStop,       // end-of-generation token or a stop string
  kLength,     // max_tokens reached
  kContext,    // the model's context length reached
  kAborted,    // cancelled by the caller
};
std::string_view FinishReasonName(FinishReason reason);

struct GenerationParams {
  SamplingParams sampling;
  int32_t max_tokens = 256;
  std::vector<std::string> stop;  // stop strings; the text ends before the first match
  bool ignore_eos = false;
  // Prefill worker: stop after the first token (max_tokens must be 1) and keep the KV
  // blocks until Engine::ReleaseKv, so they can be sent to a decode worker.
  bool hold_kv = false;
};

// What the caller hands to Engine::AddRequest.
struct GenerationRequest {
  std::vector<int32_t> prompt_tokens;
  GenerationParams params;
};

// One request's progress in one engine step.
struct RequestOutput {
  RequestId id = 0;
  std::vector<int32_t> new_tokens;  // sampled this step (0 or 1 today)
  std::string new_text;             // text completed this step; never a broken UTF-8 sequence
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_prompt_tokens = 0;
  int32_t num_cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int32_t num_generated_tokens = 0;
  bool finished() const { return finish_reason != FinishReason::kNone; }
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_REQUEST_H_
