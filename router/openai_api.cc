#include "router/openai_api.h"

#include <limits>
#include <optional>
#include <utility>

#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace tandem::router::openai {
namespace {

using nlohmann::json;

// JSON nested deeper than this is refused before it is parsed: no request needs it, and
// it bounds the work a hostile body can cause.
constexpr int kMaxJsonDepth = 64;

std::string Dump(const json& value) {
  // NOTE: replace, not throw, on invalid UTF-8: a model may emit any bytes.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json NullIfEmpty(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

// Whether `body` nests arrays and objects at most kMaxJsonDepth deep (strings skipped).
bool DepthWithinLimit(std::string_view body) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// Reads the fields of one request object; each method returns false after setting error_.
class RequestReader {
 public:
  RequestReader(const json& body, Error* error) : body_(body), error_(error) {}

  const json* Get(const char* name) const {
    auto it = body_.find(name);
    if (it == body_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  bool Fail(std::string message, std::string param) {
    *error_ = BadRequest(std::move(message), std::move(param));
    return false;
  }

  bool String(const char* name, std::string* out) {
    const json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_string()) return Fail(Cat("'", name, "' must be a string"), name);
    *out = v->get<std::string>();
    return true;
  }

  bool Bool(const char* name, bool* out) {
    const json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_boolean()) return Fail(Cat("'", name, "' must be a boolean"), name);
    *out = v->get<bool>();
    return true;
  }

  bool Number(const char* name, std::optional<double>* out) {
    const json* v = Get(name);
    if (v == nullptr) return true;
    if (!v->is_number()) return Fail(Cat("'", name, "' must be a number"), name);
    *out = v->get<double>();
    return true;
  }

  bool Integer(const char* name, std::optional<int64_t>* out) {
    const json* v = Get(name);
    if (v == nullptr) return true;
    if (v->is_number_unsigned()) {
      const uint64_t u = v->get<uint64_t>();
      *out = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                 ? std::numeric_limits<int64_t>::max()
                 : static_cast<int64_t>(u);
      return true;
    }
    if (!v->is_number_integer()) return Fail(Cat("'", name, "' must be an integer"), name);
    *out = v->get<int64_t>();
    return true;
  }

  // An option tandem does not implement, refused unless it has its no-op value, so nobody
  // gets silently different output from what they asked for.
  bool Unsupported(const char* name, const json& no_op) {
    const json* v = Get(name);
    if (v == nullptr || *v == no_op) return true;
    return Fail(Cat("'", name, "' is not supported by tandem"), name);
  }
  bool UnsupportedUnlessEmpty(const char* name) {
    const json* v = Get(name);
    if (v == nullptr || ((v->is_array() || v->is_object() || v->is_string()) && v->empty())) {
      return true;
    }
    return Fail(Cat("'", name, "' is not supported by tandem"), name);
  }

 private:
  const json& body_;
  Error* error_;
};

int32_t ClampToInt32(int64_t v) {
  if (v > std::numeric_limits<int32_t>::max()) return std::numeric_limits<int32_t>::max();
  if (v < std::numeric_limits<int32_t>::min()) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(v);
}

bool ReadTokenIds(const json& array, v1::TokenIds* out) {
  for (const json& id : array) {
    if (!id.is_number_integer()) return false;
    out->add_ids(ClampToInt32(id.get<int64_t>()));
  }
  return true;
}

// prompt: a string, an array of one string, an array of token ids, or an array of one
// array of token ids.
bool ReadPrompt(RequestReader& r, const json* prompt, v1::GenerateRequest* request) {
  if (prompt == nullptr) return r.Fail("'prompt' is required", "prompt");
  if (prompt->is_string()) {
    request->set_prompt(prompt->get<std::string>());
    return true;
  }
  if (!prompt->is_array()) {
    return r.Fail("'prompt' must be a string, an array of strings or an array of token ids",
                  "prompt");
  }
  if (prompt->empty()) return r.Fail("'prompt' must not be empty", "prompt");
  const json& first = prompt->front();
  if (first.is_number_integer()) {
    if (!ReadTokenIds(*prompt, request->mutable_token_ids())) {
      return r.Fail("'prompt' token ids must all be integers", "prompt");
    }
    return true;
  }
  if (prompt->size() > 1) {
    return r.Fail(Cat("'prompt' holds ", prompt->size(),
                      " prompts; tandem takes one per request (send them as separate requests)"),
                  "prompt");
  }
  if (first.is_string()) {
    request->set_prompt(first.get<std::string>());
    return true;
  }
  if (first.is_array() && ReadTokenIds(first, request->mutable_token_ids())) return true;
  return r.Fail("'prompt' must be a string, an array of strings or an array of token ids",
                "prompt");
}

// messages: [{role, content}], content a string or an array of {"type": "text", "text"}.
bool ReadMessages(RequestReader& r, const json* messages, v1::GenerateRequest* request) {
  if (messages == nullptr) return r.Fail("'messages' is required", "messages");
  if (!messages->is_array() || messages->empty()) {
    return r.Fail("'messages' must be a non-empty array", "messages");
  }
  v1::ChatMessages* chat = request->mutable_chat();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string param = Cat("messages[", i, "]");
    if (!m.is_object()) return r.Fail(Cat("'", param, "' must be an object"), param);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return r.Fail(Cat("'", param, ".role' must be a string"), Cat(param, ".role"));
    }
    std::string role_name = role->get<std::string>();
    // OpenAI's newer name for the system role.
    if (role_name == "developer") role_name = "system";
    std::string text;
    auto content = m.find("content");
    if (content != m.end() && content->is_string()) {
      text = content->get<std::string>();
    } else if (content != m.end() && content->is_array()) {
      for (const json& part : *content) {
        auto type = part.is_object() ? part.find("type") : part.end();
        auto part_text = part.is_object() ? part.find("text") : part.end();
        if (type == part.end() || *type != "text" || part_text == part.end() ||
            !part_text->is_string()) {
          return r.Fail(Cat("'", param, ".content' parts must be {\"type\": \"text\", \"text\": "
                                        "...}; tandem serves a text-only model"),
                        Cat(param, ".content"));
        }
        text += part_text->get<std::string>();
      }
    } else if (content != m.end() && !content->is_null()) {
      return r.Fail(Cat("'", param, ".content' must be a string or an array of text parts"),
                    Cat(param, ".content"));
    }
    v1::ChatMessage* out = chat->add_messages();
    out->set_role(std::move(role_name));
    out->set_content(std::move(text));
  }
  return true;
}

bool ReadStop(RequestReader& r, v1::SamplingParams* sampling) {
  const json* stop = r.Get("stop");
  if (stop == nullptr) return true;
  if (stop->is_string()) {
    sampling->add_stop(stop->get<std::string>());
    return true;
  }
  if (!stop->is_array()) return r.Fail("'stop' must be a string or an array of strings", "stop");
  for (const json& s : *stop) {
    if (!s.is_string()) return r.Fail("'stop' must be a string or an array of strings", "stop");
    sampling->add_stop(s.get<std::string>());
  }
  return true;
}

bool ReadSampling(RequestReader& r, Endpoint endpoint, v1::SamplingParams* sampling) {
  std::optional<int64_t> max_tokens, max_completion_tokens, top_k, seed, n;
  std::optional<double> temperature, top_p;
  if (!r.Integer("max_tokens", &max_tokens) ||
      !r.Integer("max_completion_tokens", &max_completion_tokens) ||
      !r.Number("temperature", &temperature) || !r.Number("top_p", &top_p) ||
      !r.Integer("top_k", &top_k) || !r.Integer("seed", &seed) || !r.Integer("n", &n)) {
    return false;
  }
  if (n.has_value() && *n != 1) {
    return r.Fail(Cat("'n' must be 1 (tandem returns one choice per request), got ", *n), "n");
  }
  // max_completion_tokens is OpenAI's newer name; it wins when both are given.
  if (max_completion_tokens.has_value()) max_tokens = max_completion_tokens;
  if (max_tokens.has_value()) {
    sampling->set_max_tokens(ClampToInt32(*max_tokens));
  } else if (endpoint == Endpoint::kCompletions) {
    sampling->set_max_tokens(kDefaultCompletionMaxTokens);
  }
  if (temperature.has_value()) sampling->set_temperature(static_cast<float>(*temperature));
  if (top_p.has_value()) sampling->set_top_p(static_cast<float>(*top_p));
  // vLLM's convention: top_k -1 keeps every token, as 0 does here.
  if (top_k.has_value()) sampling->set_top_k(*top_k == -1 ? 0 : ClampToInt32(*top_k));
  if (seed.has_value()) sampling->set_seed(static_cast<uint64_t>(*seed));
  bool ignore_eos = false;
  if (!r.Bool("ignore_eos", &ignore_eos)) return false;
  sampling->set_ignore_eos(ignore_eos);
  return ReadStop(r, sampling);
}

bool RefuseUnsupported(RequestReader& r, Endpoint endpoint) {
  const bool ok = r.Unsupported("presence_penalty", 0) && r.Unsupported("frequency_penalty", 0) &&
                  r.Unsupported("repetition_penalty", 1) && r.UnsupportedUnlessEmpty("logit_bias") &&
                  r.Unsupported("best_of", 1) && r.Unsupported("echo", false) &&
                  r.UnsupportedUnlessEmpty("suffix") && r.Unsupported("top_logprobs", 0) &&
                  r.UnsupportedUnlessEmpty("tools") && r.UnsupportedUnlessEmpty("functions") &&
                  r.Unsupported("min_tokens", 0);
  if (!ok) return false;
  // logprobs: a count on /v1/completions, a boolean on chat.
  if (!(endpoint == Endpoint::kCompletions ? r.Unsupported("logprobs", 0)
                                           : r.Unsupported("logprobs", false))) {
    return false;
  }
  const json* format = r.Get("response_format");
  if (format != nullptr &&
      !(format->is_object() && format->contains("type") && (*format)["type"] == "text")) {
    return r.Fail("'response_format' other than {\"type\": \"text\"} is not supported by tandem",
                  "response_format");
  }
  return true;
}

json Usage(const v1::GenerateFinal& final) {
  return json{{"prompt_tokens", final.prompt_tokens()},
              {"completion_tokens", final.completion_tokens()},
              {"total_tokens", final.prompt_tokens() + final.completion_tokens()},
              {"prompt_tokens_details", {{"cached_tokens", final.cached_prompt_tokens()}}}};
}

// What every response object starts with; `chunk`: a streamed chunk's object name.
json Envelope(const ResponseContext& context, bool chunk) {
  const bool chat = context.endpoint == Endpoint::kChatCompletions;
  return json{{"id", context.id},
              {"object", chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                              : "text_completion"},
              {"created", context.created},
              {"model", context.model}};
}

json ChunkEnvelope(const ResponseContext& context, json choice, bool include_usage) {
  json chunk = Envelope(context, /*chunk=*/true);
  chunk["choices"] = json::array({std::move(choice)});
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

std::string Event(const json& value) { return Cat("data: ", Dump(value), "\n\n"); }

// One streamed choice: a chat delta or a completion's text.
json StreamChoice(const ResponseContext& context, json delta_or_text, json finish_reason) {
  if (context.endpoint == Endpoint::kChatCompletions) {
    return json{{"index", 0},
                {"delta", std::move(delta_or_text)},
                {"logprobs", nullptr},
                {"finish_reason", std::move(finish_reason)}};
  }
  return json{{"index", 0},
              {"text", std::move(delta_or_text)},
              {"logprobs", nullptr},
              {"finish_reason", std::move(finish_reason)}};
}

}  // namespace

std::string ErrorJson(const Error& error) {
  return Dump(json{{"error",
                    {{"message", error.message},
                     {"type", error.type},
                     {"param", NullIfEmpty(error.param)},
                     {"code", NullIfEmpty(error.code)}}}});
}

Error BadRequest(std::string message, std::string param) {
  return Error{400, "invalid_request_error", std::move(message), std::move(param), ""};
}

Error ErrorFromStatus(absl::StatusCode code, std::string message) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition: {
      // Validation names the field first: "sampling.top_p must be ...", "prompt has ...",
      // "chat.messages[0].role ...", "token_ids.ids[3] = ...".
      std::string param;
      std::string_view m = message;
      if (m.starts_with("sampling.")) {
        m.remove_prefix(sizeof("sampling.") - 1);
        param = std::string(m.substr(0, m.find_first_of(" [")));
      } else if (m.starts_with("chat")) {
        param = "messages";
      } else if (m.starts_with("prompt") || m.starts_with("token_ids")) {
        param = "prompt";
      }
      return BadRequest(std::move(message), std::move(param));
    }
    case absl::StatusCode::kUnauthenticated:
      return {401, "authentication_error", std::move(message), "", "invalid_api_key"};
    case absl::StatusCode::kPermissionDenied:
      return {403, "permission_error", std::move(message), "", ""};
    case absl::StatusCode::kNotFound:
      return {404, "not_found_error", std::move(message), "", ""};
    case absl::StatusCode::kResourceExhausted:
      return {429, "rate_limit_error", std::move(message), "", "overloaded"};
    case absl::StatusCode::kUnavailable:
      return {503, "service_unavailable", std::move(message), "", "unavailable"};
    case absl::StatusCode::kDeadlineExceeded:
      return {504, "timeout", std::move(message), "", ""};
    case absl::StatusCode::kCancelled:
      return {499, "cancelled", std::move(message), "", ""};
    case absl::StatusCode::kUnimplemented:
      return {501, "not_implemented", std::move(message), "", ""};
    default:
      return {500, "internal_error", std::move(message), "", ""};
  }
}

Error ErrorFromStatus(const absl::Status& status) {
  return ErrorFromStatus(status.code(), std::string(status.message()));
}

absl::StatusOr<ParsedRequest> ParseRequest(Endpoint endpoint, std::string_view body,
                                           Error* error) {
  auto fail = [&] { return absl::InvalidArgumentError(error->message); };
  if (!DepthWithinLimit(body)) {
    *error = BadRequest(Cat("the body nests JSON deeper than ", kMaxJsonDepth, " levels"));
    return fail();
  }
  const json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    *error = BadRequest("the body is not valid JSON");
    return fail();
  }
  if (!parsed.is_object()) {
    *error = BadRequest("the body must be a JSON object");
    return fail();
  }
  ParsedRequest out;
  out.endpoint = endpoint;
  RequestReader r(parsed, error);
  if (!r.String("model", &out.model) || !RefuseUnsupported(r, endpoint)) return fail();
  out.request.set_model(out.model);
  const bool input_ok = endpoint == Endpoint::kChatCompletions
                            ? ReadMessages(r, r.Get("messages"), &out.request)
                            : ReadPrompt(r, r.Get("prompt"), &out.request);
  if (!input_ok || !ReadSampling(r, endpoint, out.request.mutable_sampling()) ||
      !r.Bool("stream", &out.stream)) {
    return fail();
  }
  if (const json* options = r.Get("stream_options"); options != nullptr) {
    if (!out.stream) {
      *error = BadRequest("'stream_options' is only allowed with \"stream\": true",
                          "stream_options");
      return fail();
    }
    auto include = options->is_object() ? options->find("include_usage") : options->end();
    if (!options->is_object() ||
        (include != options->end() && !include->is_boolean() && !include->is_null())) {
      *error = BadRequest("'stream_options' must be {\"include_usage\": true|false}",
                          "stream_options");
      return fail();
    }
    out.include_usage = include != options->end() && include->is_boolean() && include->get<bool>();
  }
  return out;
}

std::string_view FinishReasonName(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
    case v1::FINISH_REASON_CONTEXT:
      return "length";
    case v1::FINISH_REASON_ABORTED:
      return "abort";
    default:
      return "stop";
  }
}

std::string CompletionJson(const ResponseContext& context, std::string_view text,
                           const v1::GenerateFinal& final) {
  const std::string_view finish = FinishReasonName(final.finish_reason());
  json choice;
  if (context.endpoint == Endpoint::kChatCompletions) {
    choice = json{{"index", 0},
                  {"message", {{"role", "assistant"}, {"content", text}}},
                  {"logprobs", nullptr},
                  {"finish_reason", finish}};
  } else {
    choice =
        json{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish}};
  }
  json response = Envelope(context, /*chunk=*/false);
  response["choices"] = json::array({std::move(choice)});
  response["usage"] = Usage(final);
  return Dump(response);
}

std::string RoleChunk(const ResponseContext& context, bool include_usage) {
  return Event(ChunkEnvelope(
      context, StreamChoice(context, json{{"role", "assistant"}, {"content", ""}}, nullptr),
      include_usage));
}

std::string TextChunk(const ResponseContext& context, std::string_view text, bool include_usage) {
  json delta = context.endpoint == Endpoint::kChatCompletions ? json{{"content", text}} : json(text);
  return Event(ChunkEnvelope(context, StreamChoice(context, std::move(delta), nullptr),
                             include_usage));
}

std::string FinishChunk(const ResponseContext& context, const v1::GenerateFinal& final,
                        bool include_usage) {
  json delta = context.endpoint == Endpoint::kChatCompletions ? json::object() : json("");
  return Event(ChunkEnvelope(
      context,
      StreamChoice(context, std::move(delta), std::string(FinishReasonName(final.finish_reason()))),
      include_usage));
}

std::string UsageChunk(const ResponseContext& context, const v1::GenerateFinal& final) {
  json chunk = Envelope(context, /*chunk=*/true);
  chunk["choices"] = json::array();
  chunk["usage"] = Usage(final);
  return Event(chunk);
}

std::string ErrorEvent(const Error& error) { return Cat("data: ", ErrorJson(error), "\n\n"); }

namespace {
json ModelObject(std::string_view id, int64_t created, int32_t context_length) {
  return json{{"id", id},
              {"object", "model"},
              {"created", created},
              {"owned_by", "tandem"},
              {"root", id},
              {"max_model_len", context_length}};
}
}  // namespace

std::string ModelJson(std::string_view id, int64_t created, int32_t context_length) {
  return Dump(ModelObject(id, created, context_length));
}

std::string ModelListJson(std::string_view id, int64_t created, int32_t context_length) {
  return Dump(json{{"object", "list"},
                   {"data", json::array({ModelObject(id, created, context_length)})}});
}

}  // namespace tandem::router::openai
