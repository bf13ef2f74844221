// The Registry gRPC service (worker.proto) over a WorkerRegistry, and the reaper thread
// that drops workers whose heartbeats stopped. Joins, leaves and drains are logged.
#ifndef TANDEM_ROUTER_REGISTRY_SERVICE_H_
#define TANDEM_ROUTER_REGISTRY_SERVICE_H_

#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "router/worker_registry.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {

class RegistryService final : public v1::Registry::Service {
 public:
  // `registry` must outlive this service. Starts the reaper thread. With
  // `require_peer_certificate` (the router serves TLS), every call from a peer without a
  // client certificate verified by the router's --tls-ca is refused with UNAUTHENTICATED.
  explicit RegistryService(WorkerRegistry& registry, bool require_peer_certificate = false);
  // Stops the reaper. Stop the gRPC server first.
  ~RegistryService() override;

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Heartbeats(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::HeartbeatAck, v1::Heartbeat>* stream) override;
  grpc::Status Deregister(grpc::ServerContext* context, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse* response) override;

 private:
  void ReapLoop();
  // UNAUTHENTICATED (and a log line) for an unverified peer when certificates are required.
  grpc::Status CheckPeer(const grpc::ServerContext& context, const char* method) const;

  WorkerRegistry& registry_;
  const bool require_peer_certificate_;
  absl::Mutex mu_;
  // The open heartbeat stream of each worker, cancelled when the reaper drops the worker.
  absl::flat_hash_map<std::string, grpc::ServerContext*> streams_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread reaper_;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_REGISTRY_SERVICE_H_
