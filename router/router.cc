#include "router/router.h"

#include <chrono>
#include <limits>
#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/model_store.h"

namespace tandem::router {

absl::StatusOr<std::unique_ptr<Router>> Router::Start(RouterOptions options) {
  std::unique_ptr<Router> router(new Router(std::move(options)));
  const RouterOptions& o = router->options_;
  ASSIGN_OR_RETURN(router->tls_, LoadTlsFiles(o.tls));
  ASSIGN_OR_RETURN(std::string path, ResolveModelPath(o.model));
  ASSIGN_OR_RETURN(router->model_, RouterModel::Load(path));

  WorkerRegistryOptions registry_options;
  registry_options.model_fingerprint = router->model_->fingerprint();
  registry_options.heartbeat_interval = o.heartbeat_interval;
  router->registry_ = std::make_unique<WorkerRegistry>(std::move(registry_options));
  PlacementOptions placement_options;
  placement_options.prefill_policy = o.prefill_policy;
  router->placement_ = std::make_unique<Placement>(placement_options);
  router->metrics_ = std::make_unique<metrics::Registry>(
      metrics::ConstLabels{{"model_name", router->model_->id()}});
  router->router_metrics_ =
      std::make_unique<RouterMetrics>(*router->metrics_, *router->registry_);
  // With --tls-ca: mutual TLS to the workers (the router's certificate, theirs verified).
  router->channels_ = std::make_unique<WorkerChannels>(MakeChannelCredentials(router->tls_));
  router->coordinator_ = std::make_unique<RequestCoordinator>(
      o, *router->model_, *router->registry_, *router->placement_, *router->channels_,
      router->router_metrics_.get());
  router->generation_ = std::make_unique<GenerationService>(o, *router->model_, *router->registry_,
                                                            *router->coordinator_);
  router->registry_service_ =
      std::make_unique<RegistryService>(*router->registry_, router->tls_.has_identity());

  grpc::ServerBuilder builder;
  const std::string listen = HostPort(o.host, o.port);
  // Public clients need no certificate (API keys authenticate them); a worker's is verified
  // when presented, and the Registry requires one.
  const ClientCertPolicy client_certs =
      o.tls.ca.empty() ? ClientCertPolicy::kNone : ClientCertPolicy::kRequestAndVerify;
  builder.AddListeningPort(listen, MakeServerCredentials(router->tls_, client_certs),
                           &router->port_);
  builder.SetMaxReceiveMessageSize(std::numeric_limits<int>::max());
  // NOTE: gRPC sets SO_REUSEPORT by default, so a second router on a taken port would
  // start and share the traffic; it must fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(router->generation_.get());
  builder.RegisterService(router->registry_service_.get());
  router->server_ = builder.BuildAndStart();
  if (router->server_ == nullptr || router->port_ == 0) {
    router->shut_down_ = true;
    return absl::UnavailableError(Cat("cannot listen on ", listen));
  }
  if (o.http_port >= 0) RETURN_IF_ERROR(router->StartHttp());
  return router;
}

absl::Status Router::StartHttp() {
  const RouterOptions& o = options_;
  OpenAiFrontendHooks hooks;
  hooks.authorize = [this](const HttpRequest& request) {
    const std::string* authorization = request.Header("authorization");
    const std::string* x_api_key = request.Header("x-api-key");
    return options_.api_keys.Check(authorization != nullptr ? *authorization : "",
                                   x_api_key != nullptr ? *x_api_key : "");
  };
  hooks.metrics_text = [this] { return metrics_->TextExposition(); };
  hooks.health = [this] { return MakeHealth(options_.mode, registry_->Snapshot()); };
  // The HTTP API calls the Generation service in-process: one path for both ports.
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(std::numeric_limits<int>::max());
  frontend_ = std::make_unique<OpenAiFrontend>(*model_, server_->InProcessChannel(args),
                                               std::move(hooks));
  HttpServerOptions http;
  http.host = o.http_host.empty() ? o.host : o.http_host;
  http.port = o.http_port;
  http.threads = o.http_threads;
  http.tls_cert_file = o.tls.cert;
  http.tls_key_file = o.tls.key;
  absl::StatusOr<std::unique_ptr<HttpServer>> server =
      HttpServer::Start(std::move(http), [frontend = frontend_.get()](
                                             HttpRequest request,
                                             std::shared_ptr<HttpResponse> response) {
        frontend->Handle(std::move(request), std::move(response));
      });
  if (!server.ok()) {
    Shutdown(absl::ZeroDuration());
    return server.status();
  }
  http_ = std::move(*server);
  return absl::OkStatus();
}

std::string Router::http_address() const {
  if (http_ == nullptr) return "";
  return HostPort(options_.http_host.empty() ? options_.host : options_.http_host,
                  http_->port());
}

std::string Router::address() const { return HostPort(options_.host, port_); }

void Router::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  // HTTP first: its connections close, which cancels their calls on the gRPC server.
  if (http_ != nullptr) http_->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(grace));
}

Router::~Router() {
  Shutdown(absl::Seconds(1));
  // Members go in reverse order: the server before the services it calls.
  server_.reset();
}

}  // namespace tandem::router
