// The live list of workers: registration, heartbeats, draining and expiry, plus the
// router's own count of what it has in flight on each worker. The gRPC side is
// RegistryService; this class holds the state and is unit-tested with an injected clock.
//
// Thread-safe.
#ifndef TANDEM_ROUTER_WORKER_REGISTRY_H_
#define TANDEM_ROUTER_WORKER_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "router/worker_view.h"
#include "tandem/v1/worker.pb.h"

namespace tandem::router {

struct WorkerRegistryOptions {
  std::string model_fingerprint;  // ModelConfig::Fingerprint() of the router's model
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  int missed_beats = 3;  // a worker silent this many intervals is dropped
  std::function<absl::Time()> clock = [] { return absl::Now(); };
};

class WorkerRegistry {
 public:
  explicit WorkerRegistry(WorkerRegistryOptions options);
  WorkerRegistry(const WorkerRegistry&) = delete;
  WorkerRegistry& operator=(const WorkerRegistry&) = delete;

  // Adds the worker and returns its id ("prefill-1", "decode-2"). INVALID_ARGUMENT for a
  // missing address or role; FAILED_PRECONDITION naming both fingerprints when the
  // worker's model differs from the router's. A worker registering again from the same
  // address replaces its old entry (`replaced`, when given, receives the old id).
  absl::StatusOr<std::string> Register(const v1::RegisterRequest& request,
                                       std::string* replaced = nullptr);

  // A heartbeat: records the load and the time. NOT_FOUND for an unknown (expired,
  // replaced) id: the worker should register again. `load.draining` marks it draining
  // (`began_draining`, when given, tells whether this beat did).
  absl::Status Heartbeat(const std::string& worker_id, const v1::WorkerLoad& load,
                         bool* began_draining = nullptr);

  // Draining: listed, but placement skips it. NOT_FOUND for an unknown id.
  absl::Status Deregister(const std::string& worker_id);

  // Drops the worker (its heartbeat stream ended). False when it was not registered.
  bool Remove(const std::string& worker_id);

  // Drops every worker silent for `missed_beats` intervals; returns their ids.
  std::vector<std::string> ReapExpired();

  // Every registered worker, draining ones included, ordered by id.
  std::vector<WorkerView> Snapshot() const;
  std::optional<WorkerView> Find(const std::string& worker_id) const;

  // Router-side accounting. A charge is what one request adds to one worker until it is
  // released: one in-flight request, `prompt_tokens` queued for a prefill worker, and
  // `blocks` reserved on a decode worker. Blocks count in `unreported_blocks` until the
  // worker's second heartbeat after the charge (the first may have been sampled before
  // the reservation reached it). Charges on a removed worker vanish with it.
  using ChargeId = uint64_t;
  ChargeId Charge(const std::string& worker_id, int64_t prompt_tokens, int64_t blocks);
  void Release(const std::string& worker_id, ChargeId charge);

  const WorkerRegistryOptions& options() const { return options_; }

 private:
  struct ChargeEntry {
    int64_t prompt_tokens = 0;
    int64_t blocks = 0;
    uint64_t beats_at_charge = 0;
  };
  struct Entry {
    WorkerView view;  // the in-flight fields are derived in Snapshot()
    absl::Time last_beat;
    uint64_t beats = 0;
    absl::flat_hash_map<ChargeId, ChargeEntry> charges;
  };

  WorkerView ViewLocked(const Entry& entry) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const WorkerRegistryOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> workers_ ABSL_GUARDED_BY(mu_);  // by id
  uint64_t next_worker_ ABSL_GUARDED_BY(mu_) = 1;
  ChargeId next_charge_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_REGISTRY_H_
