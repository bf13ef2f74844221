// The public Generation service (generation.proto): validation and admission for
// Generate (the RequestCoordinator does the rest), ListModels and Health. gRPC's callback
// API: no thread waits on a call.
#ifndef TANDEM_ROUTER_GENERATION_SERVICE_H_
#define TANDEM_ROUTER_GENERATION_SERVICE_H_

#include <atomic>

#include "grpcpp/grpcpp.h"
#include "router/request_coordinator.h"
#include "router/router_model.h"
#include "router/router_options.h"
#include "router/worker_registry.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::router {

class GenerationService final : public v1::Generation::CallbackService {
 public:
  // Every reference must outlive the service.
  GenerationService(const RouterOptions& options, const RouterModel& model,
                    WorkerRegistry& registry, RequestCoordinator& coordinator);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* context,
                                   const v1::HealthRequest* request,
                                   v1::HealthResponse* response) override;

  // Requests admitted and not finished.
  int in_flight() const { return in_flight_.load(); }

 private:
  const RouterOptions& options_;
  const RouterModel& model_;
  WorkerRegistry& registry_;
  RequestCoordinator& coordinator_;
  std::atomic<int> in_flight_{0};
};

// Health's answer from a registry snapshot.
v1::HealthResponse MakeHealth(RouterMode mode, absl::Span<const WorkerView> workers);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_GENERATION_SERVICE_H_
