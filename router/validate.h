// Validation of a public GenerateRequest: every bad field is INVALID_ARGUMENT naming it,
// and a good request comes back tokenized (chat rendered with the model's template and
// its generation prompt, special tokens parsed; a raw prompt tokenized as is).
#ifndef TANDEM_ROUTER_VALIDATE_H_
#define TANDEM_ROUTER_VALIDATE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "router/router_model.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router {

inline constexpr int kMaxStopStrings = 16;

struct ValidatedRequest {
  std::vector<int32_t> prompt_tokens;
  // As the client sent it (defaults are the workers'), with max_tokens filled in when unset.
  v1::SamplingParams sampling;
};

absl::StatusOr<ValidatedRequest> ValidateGenerateRequest(const v1::GenerateRequest& request,
                                                         const RouterModel& model);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_VALIDATE_H_
