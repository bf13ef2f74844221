// Fuzzes the HTTP API's request parser (router/openai_api.h): any body must give a request
// or a 400 naming why, never a crash, and a parsed request must render back without
// throwing, whatever bytes it carries.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "router/openai_api.h"

using tandem::router::openai::Endpoint;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (Endpoint endpoint : {Endpoint::kCompletions, Endpoint::kChatCompletions}) {
    tandem::router::openai::Error error;
    absl::StatusOr<tandem::router::openai::ParsedRequest> parsed =
        tandem::router::openai::ParseRequest(endpoint, body, &error);
    if (!parsed.ok()) {
      if (error.http_status != 400 || error.message.empty()) std::abort();
      (void)tandem::router::openai::ErrorJson(error);
      continue;
    }
    tandem::router::openai::ResponseContext context{endpoint, "id", parsed->model, 0};
    tandem::v1::GenerateFinal final;
    final.set_finish_reason(tandem::v1::FINISH_REASON_STOP);
    const std::string& text = parsed->request.prompt();
    if (tandem::router::openai::CompletionJson(context, text, final).empty()) std::abort();
    if (tandem::router::openai::TextChunk(context, text, parsed->include_usage).empty()) {
      std::abort();
    }
  }
  return 0;
}
