#include "router/openai_frontend.h"

#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"
#include "router/openai_api.h"
#include "service/convert.h"
#include "service/metrics.h"

namespace tandem::router {
namespace {

using openai::Endpoint;

constexpr std::string_view kJson = "application/json";

void SendJson(HttpResponse& response, int status, std::string body) {
  response.Send(status, {{"Content-Type", std::string(kJson)}}, std::move(body));
}

void SendError(HttpResponse& response, const openai::Error& error) {
  HttpHeaders headers = {{"Content-Type", std::string(kJson)}};
  if (error.http_status == 401) headers.emplace_back("WWW-Authenticate", "Bearer");
  response.Send(error.http_status, std::move(headers), openai::ErrorJson(error));
}

// The client's credentials travel on to the Generation service, which checks them again:
// one rule for both ports.
void ForwardCredentials(const HttpRequest& request, grpc::ClientContext& context) {
  if (const std::string* v = request.Header("authorization")) {
    context.AddMetadata("authorization", *v);
  }
  if (const std::string* v = request.Header("x-api-key")) context.AddMetadata("x-api-key", *v);
}

// One Generate call on the in-process channel, answering one HTTP request. Deletes itself
// in OnDone. The connection's close callback may run on any thread at any time, before or
// after OnDone, so it reaches the call only through `cancel`, never `this`.
class GenerateBridge final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  struct Cancel {
    absl::Mutex mu;
    grpc::ClientContext* context ABSL_GUARDED_BY(mu) = nullptr;  // null once the call is done
  };

  GenerateBridge(openai::ParsedRequest parsed, openai::ResponseContext context,
                 std::shared_ptr<HttpResponse> response)
      : parsed_(std::move(parsed)),
        ctx_(std::move(context)),
        response_(std::move(response)),
        cancel_(std::make_shared<Cancel>()) {
    absl::MutexLock lock(&cancel_->mu);
    cancel_->context = &context_;
  }

  void Start(v1::Generation::Stub& stub, const HttpRequest& request) {
    ForwardCredentials(request, context_);
    stub.async()->Generate(&context_, &parsed_.request, this);
    // Set before the call starts: a client already gone cancels it at once.
    response_->OnClose([cancel = cancel_] {
      absl::MutexLock lock(&cancel->mu);
      if (cancel->context != nullptr) cancel->context->TryCancel();
    });
    StartRead(&message_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    if (message_.has_final()) {
      final_ = message_.final();
    } else if (message_.has_delta() && !message_.delta().text().empty()) {
      const std::string& text = message_.delta().text();
      if (parsed_.stream) {
        std::string events = StartStreamOnce();
        events += openai::TextChunk(ctx_, text, parsed_.include_usage);
        if (!response_->Write(events)) context_.TryCancel();
      } else {
        text_ += text;
      }
    }
    StartRead(&message_);
  }

  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&cancel_->mu);
      cancel_->context = nullptr;
    }
    if (status.ok() && final_.has_value()) {
      if (parsed_.stream) {
        std::string events = StartStreamOnce();
        events += openai::FinishChunk(ctx_, *final_, parsed_.include_usage);
        if (parsed_.include_usage) events += openai::UsageChunk(ctx_, *final_);
        events += openai::kDoneEvent;
        response_->Write(events);
        response_->End();
      } else {
        SendJson(*response_, 200, openai::CompletionJson(ctx_, text_, *final_));
      }
    } else {
      const openai::Error error =
          status.ok() ? openai::ErrorFromStatus(absl::StatusCode::kInternal,
                                                "the generation ended without a final message")
                      : openai::ErrorFromStatus(static_cast<absl::StatusCode>(status.error_code()),
                                                status.error_message());
      if (stream_started_) {
        // The status line is gone: the error travels as an event, as vLLM sends it.
        response_->Write(Cat(openai::ErrorEvent(error), openai::kDoneEvent));
        response_->End();
      } else {
        SendError(*response_, error);
      }
    }
    delete this;
  }

 private:
  // The response head and, for chat, the assistant-role chunk, the first time only.
  std::string StartStreamOnce() {
    if (stream_started_) return "";
    stream_started_ = true;
    response_->StartStream(200, {{"Content-Type", "text/event-stream; charset=utf-8"},
                                 {"Cache-Control", "no-cache"},
                                 {"X-Accel-Buffering", "no"}});
    if (ctx_.endpoint == Endpoint::kChatCompletions) {
      return openai::RoleChunk(ctx_, parsed_.include_usage);
    }
    return "";
  }

  openai::ParsedRequest parsed_;
  const openai::ResponseContext ctx_;
  std::shared_ptr<HttpResponse> response_;
  std::shared_ptr<Cancel> cancel_;
  grpc::ClientContext context_;
  v1::GenerateResponse message_;
  std::optional<v1::GenerateFinal> final_;
  std::string text_;  // the whole answer, when not streamed
  bool stream_started_ = false;
};

std::string NewIdPrefix() {
  std::random_device rd;
  return absl::StrFormat("%08x%08x", rd(), rd());
}

}  // namespace

OpenAiFrontend::OpenAiFrontend(const RouterModel& model, std::shared_ptr<grpc::Channel> channel,
                               OpenAiFrontendHooks hooks)
    : model_(model),
      stub_(v1::Generation::NewStub(std::move(channel))),
      hooks_(std::move(hooks)),
      started_(absl::ToUnixSeconds(absl::Now())),
      id_prefix_(NewIdPrefix()) {}

openai::Error OpenAiFrontend::ModelNotFound(std::string_view model) const {
  return {404, "invalid_request_error",
          Cat("model '", model, "' does not exist; this router serves '", model_.id(), "'"), "model",
          "model_not_found"};
}

std::string OpenAiFrontend::NewId(bool chat) {
  return Cat(chat ? "chatcmpl-" : "cmpl-", id_prefix_, "-",
             next_id_.fetch_add(1, std::memory_order_relaxed));
}

void OpenAiFrontend::Handle(HttpRequest request, std::shared_ptr<HttpResponse> response) {
  const std::string& path = request.path;
  const bool get = request.method == "GET";
  const bool post = request.method == "POST";
  auto wrong_method = [&](std::string_view allowed) {
    response->Send(405, {{"Content-Type", std::string(kJson)}, {"Allow", std::string(allowed)}},
                   openai::ErrorJson({405, "invalid_request_error",
                                      Cat(request.method, " is not allowed on ", path, " (use ",
                                          allowed, ")"),
                                      "", "method_not_allowed"}));
  };

  if (path == "/health") {
    if (!get) return wrong_method("GET");
    const v1::HealthResponse health = hooks_.health();
    const nlohmann::json body = HealthJson(health);
    return SendJson(*response, health.serving() ? 200 : 503, body.dump());
  }
  if (path == "/metrics") {
    if (!get) return wrong_method("GET");
    return response->Send(200, {{"Content-Type", metrics::kContentType}},
                          hooks_.metrics_text());
  }
  if (!path.starts_with("/v1/")) {
    return SendError(*response, {404, "not_found_error", Cat("no route for ", path), "", ""});
  }
  if (absl::Status s = hooks_.authorize(request); !s.ok()) {
    return SendError(*response, openai::ErrorFromStatus(s));
  }
  if (path == "/v1/models") {
    if (!get) return wrong_method("GET");
    return SendJson(*response, 200,
                    openai::ModelListJson(model_.id(), started_, model_.context_length()));
  }
  if (path.starts_with("/v1/models/")) {
    if (!get) return wrong_method("GET");
    const std::string_view id = std::string_view(path).substr(sizeof("/v1/models/") - 1);
    if (!model_.Matches(id) || id.empty()) return SendError(*response, ModelNotFound(id));
    return SendJson(*response, 200,
                    openai::ModelJson(model_.id(), started_, model_.context_length()));
  }
  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    if (!post) return wrong_method("POST");
    return HandleGenerate(path == "/v1/chat/completions", request, std::move(response));
  }
  SendError(*response, {404, "not_found_error", Cat("no route for ", path), "", ""});
}

void OpenAiFrontend::HandleGenerate(bool chat, const HttpRequest& request,
                                    std::shared_ptr<HttpResponse> response) {
  const Endpoint endpoint = chat ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  openai::Error error;
  absl::StatusOr<openai::ParsedRequest> parsed = openai::ParseRequest(endpoint, request.body, &error);
  if (!parsed.ok()) return SendError(*response, error);
  if (!model_.Matches(parsed->model)) return SendError(*response, ModelNotFound(parsed->model));
  openai::ResponseContext context;
  context.endpoint = endpoint;
  context.id = NewId(chat);
  context.model = parsed->model.empty() ? model_.id() : parsed->model;
  context.created = absl::ToUnixSeconds(absl::Now());
  parsed->request.set_request_id(context.id);
  auto* bridge = new GenerateBridge(std::move(*parsed), std::move(context), std::move(response));
  bridge->Start(*stub_, request);
}

}  // namespace tandem::router
