#include "router/router.h"

#include <chrono>
#include <limits>
#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/model_store.h"

namespace tandem::router {
namespace {

std::string HostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return Cat("[", host, "]:", port);
  }
  return Cat(host, ":", port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Router>> Router::Start(RouterOptions options) {
  std::unique_ptr<Router> router(new Router(std::move(options)));
  const RouterOptions& o = router->options_;
  ASSIGN_OR_RETURN(std::string path, ResolveModelPath(o.model));
  ASSIGN_OR_RETURN(router->model_, RouterModel::Load(path));

  WorkerRegistryOptions registry_options;
  registry_options.model_fingerprint = router->model_->fingerprint();
  registry_options.heartbeat_interval = o.heartbeat_interval;
  router->registry_ = std::make_unique<WorkerRegistry>(std::move(registry_options));
  PlacementOptions placement_options;
  placement_options.prefill_policy = o.prefill_policy;
  router->placement_ = std::make_unique<Placement>(placement_options);
  router->channels_ = std::make_unique<WorkerChannels>();
  router->coordinator_ = std::make_unique<RequestCoordinator>(
      o, *router->model_, *router->registry_, *router->placement_, *router->channels_);
  router->generation_ = std::make_unique<GenerationService>(o, *router->model_, *router->registry_,
                                                            *router->coordinator_);
  router->registry_service_ = std::make_unique<RegistryService>(*router->registry_);

  grpc::ServerBuilder builder;
  const std::string listen = HostPort(o.host, o.port);
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &router->port_);
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
  return router;
}

std::string Router::address() const { return HostPort(options_.host, port_); }

void Router::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(grace));
}

Router::~Router() {
  Shutdown(absl::Seconds(1));
  // Members go in reverse order: the server before the services it calls.
  server_.reset();
}

}  // namespace tandem::router
