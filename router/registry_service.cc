#include "router/registry_service.h"

#include <optional>
#include <utility>

#include "common/logging.h"
#include "common/strings.h"
#include "service/grpc_status.h"

namespace tandem::router {
namespace {

std::string_view RoleName(v1::WorkerRole role) {
  return role == v1::WORKER_ROLE_PREFILL ? "prefill" : "decode";
}

}  // namespace

RegistryService::RegistryService(WorkerRegistry& registry, bool require_peer_certificate)
    : registry_(registry), require_peer_certificate_(require_peer_certificate),
      reaper_([this] { ReapLoop(); }) {}

grpc::Status RegistryService::CheckPeer(const grpc::ServerContext& context,
                                        const char* method) const {
  if (!require_peer_certificate_) return grpc::Status::OK;
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) return grpc::Status::OK;
  LOG(WARNING) << "registry: refused " << method << " from " << context.peer()
               << ": no client certificate signed by --tls-ca";
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "the Registry takes only workers with a client certificate signed by the "
                      "router's --tls-ca (give the worker --tls-cert, --tls-key and --tls-ca)");
}

RegistryService::~RegistryService() {
  stop_.Notify();
  reaper_.join();
}

grpc::Status RegistryService::Register(grpc::ServerContext* context,
                                       const v1::RegisterRequest* request,
                                       v1::RegisterResponse* response) {
  if (grpc::Status s = CheckPeer(*context, "Register"); !s.ok()) return s;
  std::string replaced;
  absl::StatusOr<std::string> id = registry_.Register(*request, &replaced);
  if (!id.ok()) {
    LOG(WARNING) << "registry: refused a " << RoleName(request->role()) << " worker at "
                 << request->address() << ": " << id.status();
    return ToGrpcStatus(id.status());
  }
  if (!replaced.empty()) {
    LOG(INFO) << "registry: " << replaced << " at " << request->address()
              << " registered again; it is now " << *id;
    absl::MutexLock lock(&mu_);
    if (auto it = streams_.find(replaced); it != streams_.end()) it->second->TryCancel();
  }
  LOG(INFO) << "registry: " << *id << " joined (" << RoleName(request->role()) << " at "
            << request->address() << ", " << request->load().free_kv_blocks() << "/"
            << request->load().total_kv_blocks() << " KV blocks free)";
  response->set_worker_id(*id);
  response->set_heartbeat_interval_s(absl::ToDoubleSeconds(registry_.options().heartbeat_interval));
  return grpc::Status::OK;
}

grpc::Status RegistryService::Heartbeats(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::HeartbeatAck, v1::Heartbeat>* stream) {
  if (grpc::Status s = CheckPeer(*context, "Heartbeats"); !s.ok()) return s;
  v1::Heartbeat beat;
  if (!stream->Read(&beat)) return grpc::Status::OK;  // closed before the first beat
  const std::string id = beat.worker_id();
  bool began_draining = false;
  if (absl::Status s = registry_.Heartbeat(id, beat.load(), &began_draining); !s.ok()) {
    return ToGrpcStatus(s);
  }
  if (began_draining) LOG(INFO) << "registry: " << id << " is draining";
  {
    absl::MutexLock lock(&mu_);
    if (auto it = streams_.find(id); it != streams_.end()) it->second->TryCancel();
    streams_[id] = context;
  }
  grpc::Status result = grpc::Status::OK;
  while (true) {
    if (!stream->Write(v1::HeartbeatAck())) break;
    if (!stream->Read(&beat)) break;
    if (!beat.worker_id().empty() && beat.worker_id() != id) {
      result = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            Cat("this stream belongs to '", id, "', not '", beat.worker_id(), "'"));
      break;
    }
    bool began_draining = false;
    if (absl::Status s = registry_.Heartbeat(id, beat.load(), &began_draining); !s.ok()) {
      result = ToGrpcStatus(s);  // reaped or replaced: the worker registers again
      break;
    }
    if (began_draining) LOG(INFO) << "registry: " << id << " is draining";
  }
  // A newer stream for the same worker supersedes this one: then the worker stays.
  bool superseded = true;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = streams_.find(id); it != streams_.end() && it->second == context) {
      streams_.erase(it);
      superseded = false;
    }
  }
  if (!superseded && result.error_code() != grpc::StatusCode::NOT_FOUND) {
    std::optional<WorkerView> view = registry_.Find(id);
    if (view.has_value() && registry_.Remove(id)) {
      LOG(INFO) << "registry: " << id << " left (" << RoleName(view->role) << " at "
                << view->address << ": heartbeat stream ended"
                << (view->draining ? " after draining" : "") << ")";
    }
  }
  return result;
}

grpc::Status RegistryService::Deregister(grpc::ServerContext* context,
                                         const v1::DeregisterRequest* request,
                                         v1::DeregisterResponse* response) {
  if (grpc::Status s = CheckPeer(*context, "Deregister"); !s.ok()) return s;
  if (absl::Status s = registry_.Deregister(request->worker_id()); !s.ok()) {
    return ToGrpcStatus(s);
  }
  LOG(INFO) << "registry: " << request->worker_id() << " is draining (deregistered)";
  return grpc::Status::OK;
}

void RegistryService::ReapLoop() {
  const absl::Duration period = registry_.options().heartbeat_interval / 2;
  while (!stop_.WaitForNotificationWithTimeout(period)) {
    for (const std::string& id : registry_.ReapExpired()) {
      LOG(WARNING) << "registry: " << id << " dropped: no heartbeat for "
                   << registry_.options().missed_beats << " intervals";
      absl::MutexLock lock(&mu_);
      if (auto it = streams_.find(id); it != streams_.end()) it->second->TryCancel();
    }
  }
}

}  // namespace tandem::router
