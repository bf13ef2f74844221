// The engine's state for one request: its tokens, how many of them have KV in the cache,
// and its per-request sampler and detokenizer.
#ifndef TANDEM_ENGINE_SEQUENCE_H_
#define TANDEM_ENGINE_SEQUENCE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "engine/incremental_detokenizer.h"
#include "engine/request.h"
#include "engine/sampler.h"

namespace tandem {

struct Sequence {
  RequestId id = 0;
  std::vector<int32_t> tokens;  // [prompt..., generated...]
  int32_t num_prompt_tokens = 0;
  // Tokens whose KV is in the cache. Equals tokens.size() - 1 between decode steps: the last
  // sampled token is fed in the next step. Reset to 0 when the sequence is preempted.
  int32_t num_computed = 0;
  int32_t num_cached_prompt_tokens = 0;  // from the prefix cache, at first admission
  bool prefix_looked_up = false;         // prefix cache consulted for this admission
  int32_t num_preemptions = 0;
  GenerationParams params;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<IncrementalDetokenizer> detokenizer;  // null without a tokenizer
  std::string text;          // everything detokenized so far
  size_t text_emitted = 0;   // bytes of `text` already handed to the caller
  absl::Time arrival_time;

  int32_t num_generated() const {
    return static_cast<int32_t>(tokens.size()) - num_prompt_tokens;
  }
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_SEQUENCE_H_
