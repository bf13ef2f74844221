// tandem-router in one object: the model's metadata, the worker registry, placement, the
// request coordinator, and one gRPC server with Generation and Registry. main.cc runs one;
// tests may run one in-process on port 0.
#ifndef TANDEM_ROUTER_ROUTER_H_
#define TANDEM_ROUTER_ROUTER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "router/generation_service.h"
#include "router/openai_frontend.h"
#include "router/placement.h"
#include "router/registry_service.h"
#include "router/request_coordinator.h"
#include "router/router_metrics.h"
#include "router/router_model.h"
#include "router/router_options.h"
#include "router/worker_channels.h"
#include "router/worker_registry.h"
#include "service/http_server.h"
#include "service/metrics.h"

namespace tandem::router {

class Router {
 public:
  // Loads the model's metadata (ResolveModelPath(options.model)) and starts serving.
  // UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Router>> Start(RouterOptions options);
  ~Router();  // Shutdown(absl::Seconds(1)) unless done already
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // The port actually bound (options.port, or the free one picked for 0).
  int port() const { return port_; }
  // "host:port" as bound, e.g. "0.0.0.0:50051".
  std::string address() const;
  // The HTTP API's port and "host:port" as bound; -1 and "" without one (http_port -1).
  int http_port() const { return http_ != nullptr ? http_->port() : -1; }
  std::string http_address() const;
  const RouterOptions& options() const { return options_; }
  // The keys Generate, ListModels and the HTTP API require (options().api_keys).
  const ApiKeys& api_keys() const { return options_.api_keys; }
  // The PEM contents of options().tls, checked at Start (empty without TLS).
  const TlsPem& tls() const { return tls_; }
  const RouterModel& model() const { return *model_; }
  WorkerRegistry& registry() { return *registry_; }
  // The router's Prometheus metrics (model_name on every sample); serve
  // metrics().TextExposition() as /metrics. Thread-safe.
  metrics::Registry& metrics() { return *metrics_; }

  // Stops accepting calls and cancels those still running after `grace`. Idempotent;
  // one thread at a time.
  void Shutdown(absl::Duration grace);

 private:
  explicit Router(RouterOptions options) : options_(std::move(options)) {}
  // The OpenAI-compatible HTTP API beside the gRPC server (options_.http_*).
  absl::Status StartHttp();

  RouterOptions options_;
  TlsPem tls_;
  int port_ = 0;
  std::unique_ptr<RouterModel> model_;
  std::unique_ptr<WorkerRegistry> registry_;
  // After registry_ (its callback reads it), before what records into it.
  std::unique_ptr<metrics::Registry> metrics_;
  std::unique_ptr<RouterMetrics> router_metrics_;
  std::unique_ptr<Placement> placement_;
  std::unique_ptr<WorkerChannels> channels_;
  std::unique_ptr<RequestCoordinator> coordinator_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<RegistryService> registry_service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<OpenAiFrontend> frontend_;
  std::unique_ptr<HttpServer> http_;  // last: it goes first
  bool shut_down_ = false;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_H_
