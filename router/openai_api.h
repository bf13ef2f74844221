// The OpenAI-compatible API's JSON, with no I/O: requests for /v1/completions and
// /v1/chat/completions parsed into a GenerateRequest, GenerateResponses rendered as
// OpenAI's objects and server-sent-event chunks, and errors in OpenAI's shape with the
// HTTP status each status code maps to (docs/SERVING.md, "HTTP API"). No gRPC: the
// fuzzer builds it without.
#ifndef TANDEM_ROUTER_OPENAI_API_H_
#define TANDEM_ROUTER_OPENAI_API_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router::openai {

enum class Endpoint { kCompletions, kChatCompletions };

// /v1/completions without max_tokens generates this many (OpenAI's and vLLM's default);
// /v1/chat/completions without it generates until the context is full.
inline constexpr int32_t kDefaultCompletionMaxTokens = 16;

struct Error {
  int http_status = 400;
  std::string type;     // "invalid_request_error", "authentication_error", ...
  std::string message;  // for people
  std::string param;    // the request field at fault, or empty
  std::string code;     // "model_not_found", "invalid_api_key", ... or empty
};

// {"error":{"message":...,"type":...,"param":...,"code":...}} (null for empty fields).
std::string ErrorJson(const Error& error);
Error BadRequest(std::string message, std::string param = "");
// The HTTP status and type for a status code (gRPC's codes are the same numbers):
// INVALID_ARGUMENT/OUT_OF_RANGE/
// FAILED_PRECONDITION 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, CANCELLED 499,
// UNIMPLEMENTED 501, anything else 500. For 400s the param is read off the message
// ("sampling.top_p must be ..." -> "top_p").
Error ErrorFromStatus(absl::StatusCode code, std::string message);
Error ErrorFromStatus(const absl::Status& status);

struct ParsedRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  v1::GenerateRequest request;
  std::string model;  // as the client named it (echoed back); empty: none given
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses a request body. Bad JSON, a wrong type, a missing prompt or messages, n != 1, and
// options tandem does not implement (logprobs, echo, best_of > 1, tools, penalties, ...)
// give a 400 Error naming the param. Unknown fields are ignored, as vLLM does.
absl::StatusOr<ParsedRequest> ParseRequest(Endpoint endpoint, std::string_view body,
                                           Error* error);

// What a response renders from: the request's identity and the answer so far.
struct ResponseContext {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;     // "cmpl-..." or "chatcmpl-..."
  std::string model;  // the model id to report
  int64_t created = 0;
};

// OpenAI's finish_reason: "stop", "length" (max_tokens or the context), "abort".
std::string_view FinishReasonName(v1::FinishReason reason);

// The whole (non-streamed) response object.
std::string CompletionJson(const ResponseContext& context, std::string_view text,
                           const v1::GenerateFinal& final);

// One server-sent event ("data: {...}\n\n") carrying a chunk: the assistant role (chat
// only, first), a text delta, or the finish reason. With include_usage, every chunk has
// "usage": null and UsageChunk ends the stream's chunks.
std::string RoleChunk(const ResponseContext& context, bool include_usage);
std::string TextChunk(const ResponseContext& context, std::string_view text, bool include_usage);
std::string FinishChunk(const ResponseContext& context, const v1::GenerateFinal& final,
                        bool include_usage);
std::string UsageChunk(const ResponseContext& context, const v1::GenerateFinal& final);
// An error after the stream started: "data: {"error":...}\n\n".
std::string ErrorEvent(const Error& error);
inline constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";

// GET /v1/models and /v1/models/{id}.
std::string ModelJson(std::string_view id, int64_t created, int32_t context_length);
std::string ModelListJson(std::string_view id, int64_t created, int32_t context_length);

}  // namespace tandem::router::openai

#endif  // TANDEM_ROUTER_OPENAI_API_H_
