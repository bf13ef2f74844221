// The router's HTTP API (docs/SERVING.md, "HTTP API"): OpenAI-compatible /v1/completions,
// /v1/chat/completions (streamed as server-sent events or whole), /v1/models, and /health
// and /metrics for load balancers and Prometheus.
//
// A request is parsed on the HTTP event loop and then runs as an asynchronous call on the
// router's own Generation service through an in-process channel, so validation,
// admission, placement, retries and cancellation are the gRPC path's, and no thread waits
// on an HTTP connection. A client that disconnects cancels its call, which cancels both
// legs on the workers.
#ifndef TANDEM_ROUTER_OPENAI_FRONTEND_H_
#define TANDEM_ROUTER_OPENAI_FRONTEND_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"
#include "router/openai_api.h"
#include "router/router_model.h"
#include "service/http_server.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::router {

struct OpenAiFrontendHooks {
  // OK, or UNAUTHENTICATED saying why, for a /v1/ request (keys are checked there only:
  // /health and /metrics stay open for probes and scrapers, as in vLLM).
  std::function<absl::Status(const HttpRequest&)> authorize;
  // The Prometheus text for GET /metrics.
  std::function<std::string()> metrics_text;
  // The router's health for GET /health.
  std::function<v1::HealthResponse()> health;
};

class OpenAiFrontend {
 public:
  // `channel` reaches the router's Generation service (in-process). `model` must outlive
  // the frontend.
  OpenAiFrontend(const RouterModel& model, std::shared_ptr<grpc::Channel> channel,
                 OpenAiFrontendHooks hooks);

  // The HttpHandler: answers at once or starts the call that answers later.
  void Handle(HttpRequest request, std::shared_ptr<HttpResponse> response);

 private:
  void HandleGenerate(bool chat, const HttpRequest& request,
                      std::shared_ptr<HttpResponse> response);
  std::string NewId(bool chat);
  // 404 model_not_found for a model this router does not serve.
  openai::Error ModelNotFound(std::string_view model) const;

  const RouterModel& model_;
  std::unique_ptr<v1::Generation::Stub> stub_;
  OpenAiFrontendHooks hooks_;
  const int64_t started_;  // "created" of the model object: when the router started
  const std::string id_prefix_;
  std::atomic<uint64_t> next_id_{1};
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_OPENAI_FRONTEND_H_
