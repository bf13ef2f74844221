// Token sampling from one sequence's logits: greedy, or top-k → temperature softmax →
// top-p (nucleus) → draw, the order vLLM applies them in.
//
// Each request owns a Sampler with its own RNG, so a seeded request draws the same tokens
// however it is batched with others.
//
// Thread contract: a Sampler is used by one thread at a time (the engine thread).
#ifndef TANDEM_ENGINE_SAMPLER_H_
#define TANDEM_ENGINE_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <random>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tandem {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;        // in (0, 1]; 1 = off
  int32_t top_k = 0;         // 0 = off; values above the vocabulary size act as off
  std::optional<uint64_t> seed;

  // INVALID_ARGUMENT naming the field: temperature < 0 or not finite, top_p outside
  // (0, 1], top_k < 0, or vocab_size <= 0.
  absl::Status Validate(int32_t vocab_size) const;
};

class Sampler {
 public:
  // `params` must have passed Validate() (CHECK-fails otherwise). Seeds the RNG from
  // params.seed, else from std::random_device.
  explicit Sampler(const SamplingParams& params);

  // Draws a token id from `logits` ([vocab]). NaN logits are never drawn (treated as -inf).
  // temperature == 0 or top_k == 1 is greedy: the lowest id among the largest logits, with
  // no random draw. Logits are never modified.
  int32_t Sample(absl::Span<const float> logits);

  // Advances the random stream past one Sample() made elsewhere: a decode engine admitting
  // a request whose first token a prefill engine sampled with the same seed continues that
  // stream, so seeded output is the same disaggregated or not. (A Sample() that met
  // non-finite logits draws nothing; that case is not mirrored.)
  void SkipSample();

  const SamplingParams& params() const { return params_; }
  // Sample() is ArgMax (no random draw).
  bool greedy() const;

 private:
  // Uniform double in [0, 1) from 53 random bits: the same on every standard library.
  double Uniform();

  int32_t SampleTopK(absl::Span<const float> logits, float max_logit);
  int32_t SampleTopP(absl::Span<const float> logits, float max_logit);
  int32_t SampleFull(absl::Span<const float> logits, float max_logit);

  SamplingParams params_;
  std::mt19937_64 rng_;
};

// Index of the largest logit, lowest id on ties, NaNs ignored; 0 if every logit is NaN.
int32_t ArgMax(absl::Span<const float> logits);

}  // namespace tandem

#endif  // TANDEM_ENGINE_SAMPLER_H_
