#include "router/worker_registry.h"

#include <algorithm>
#include <utility>

#include "common/strings.h"

namespace tandem::router {

WorkerRegistry::WorkerRegistry(WorkerRegistryOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::string> WorkerRegistry::Register(const v1::RegisterRequest& request,
                                                     std::string* replaced) {
  if (request.address().empty()) {
    return absl::InvalidArgumentError("address must be set (the worker's host:port)");
  }
  std::string_view role_name;
  switch (request.role()) {
    case v1::WORKER_ROLE_PREFILL:
      role_name = "prefill";
      break;
    case v1::WORKER_ROLE_DECODE:
      role_name = "decode";
      break;
    default:
      return absl::InvalidArgumentError(
          Cat("role must be WORKER_ROLE_PREFILL or WORKER_ROLE_DECODE, got ",
              static_cast<int>(request.role())));
  }
  if (request.kv_layout().model_fingerprint() != options_.model_fingerprint) {
    return absl::FailedPreconditionError(
        Cat("worker at ", request.address(), " serves model fingerprint '",
            request.kv_layout().model_fingerprint(), "' (model '", request.model(),
            "'); this router's model has fingerprint '", options_.model_fingerprint, "'"));
  }

  absl::MutexLock lock(&mu_);
  for (auto it = workers_.begin(); it != workers_.end(); ++it) {
    if (it->second.view.address == request.address()) {
      if (replaced != nullptr) *replaced = it->first;
      workers_.erase(it);
      break;
    }
  }
  std::string id = Cat(role_name, "-", next_worker_++);
  Entry entry;
  entry.view.id = id;
  entry.view.address = request.address();
  entry.view.role = request.role();
  entry.view.block_size =
      request.kv_layout().block_size() > 0 ? request.kv_layout().block_size() : 16;
  entry.view.load = request.load();
  entry.view.transports.assign(request.transports().begin(), request.transports().end());
  entry.view.device_uuid = request.device_uuid();
  entry.view.draining = request.load().draining();
  entry.last_beat = options_.clock();
  workers_.emplace(id, std::move(entry));
  return id;
}

absl::Status WorkerRegistry::Heartbeat(const std::string& worker_id, const v1::WorkerLoad& load,
                                       bool* began_draining) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(Cat("worker '", worker_id, "' is not registered; register again"));
  }
  Entry& e = it->second;
  e.view.load = load;
  if (began_draining != nullptr) *began_draining = load.draining() && !e.view.draining;
  if (load.draining()) e.view.draining = true;
  e.last_beat = options_.clock();
  ++e.beats;
  return absl::OkStatus();
}

absl::Status WorkerRegistry::Deregister(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) {
    return absl::NotFoundError(Cat("worker '", worker_id, "' is not registered"));
  }
  it->second.view.draining = true;
  return absl::OkStatus();
}

bool WorkerRegistry::Remove(const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  return workers_.erase(worker_id) > 0;
}

std::vector<std::string> WorkerRegistry::ReapExpired() {
  const absl::Time now = options_.clock();
  const absl::Duration limit = options_.heartbeat_interval * options_.missed_beats;
  std::vector<std::string> reaped;
  absl::MutexLock lock(&mu_);
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (now - it->second.last_beat > limit) {
      reaped.push_back(it->first);
      workers_.erase(it++);
    } else {
      ++it;
    }
  }
  std::sort(reaped.begin(), reaped.end());
  return reaped;
}

WorkerView WorkerRegistry::ViewLocked(const Entry& entry) const {
  WorkerView view = entry.view;
  for (const auto& [id, charge] : entry.charges) {
    ++view.inflight_requests;
    view.inflight_prompt_tokens += charge.prompt_tokens;
    if (entry.beats <= charge.beats_at_charge + 1) view.unreported_blocks += charge.blocks;
  }
  return view;
}

std::vector<WorkerView> WorkerRegistry::Snapshot() const {
  std::vector<WorkerView> views;
  {
    absl::ReaderMutexLock lock(&mu_);
    views.reserve(workers_.size());
    for (const auto& [id, entry] : workers_) views.push_back(ViewLocked(entry));
  }
  std::sort(views.begin(), views.end(),
            [](const WorkerView& a, const WorkerView& b) { return a.id < b.id; });
  return views;
}

std::optional<WorkerView> WorkerRegistry::Find(const std::string& worker_id) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return std::nullopt;
  return ViewLocked(it->second);
}

WorkerRegistry::ChargeId WorkerRegistry::Charge(const std::string& worker_id, int64_t prompt_tokens,
                                                int64_t blocks) {
  absl::MutexLock lock(&mu_);
  const ChargeId id = next_charge_++;
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) {
    it->second.charges[id] = ChargeEntry{prompt_tokens, blocks, it->second.beats};
  }
  return id;
}

void WorkerRegistry::Release(const std::string& worker_id, ChargeId charge) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(worker_id);
  if (it != workers_.end()) it->second.charges.erase(charge);
}

}  // namespace tandem::router
