// A worker's Prometheus metrics (docs/SERVING.md, Metrics): the registry every prefill and
// decode worker serves on /metrics, with model_name and role on every sample. Engine
// figures (running, waiting, KV cache, prefix cache, preemptions) are read from the
// EngineLoop's snapshot at scrape time; what the worker counts itself (tokens, KV transfers,
// reservations) goes through the cached children below: atomic operations, no lock.
#ifndef TANDEM_SERVICE_WORKER_METRICS_H_
#define TANDEM_SERVICE_WORKER_METRICS_H_

#include <functional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "service/engine_loop.h"
#include "service/metrics.h"
#include "tandem/v1/worker.pb.h"

namespace tandem {

struct WorkerMetricsOptions {
  std::string model_name;  // the router's model id (the GGUF file name without .gguf)
  std::string role;        // "prefill" | "decode"
  // KV moves out of a prefill worker ("sent") and into a decode worker ("received").
  std::string kv_direction;
};

class WorkerMetrics {
 public:
  // `loop` and `load` (the worker's CurrentLoad) must outlive the registry's scrapes; the
  // engine's step time is observed from the next loop iteration on.
  WorkerMetrics(const WorkerMetricsOptions& options, EngineLoop& loop,
                std::function<v1::WorkerLoad()> load);
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  const metrics::Registry& registry() const { return registry_; }
  metrics::Registry& registry() { return registry_; }

  // tandem:kv_transfers_total{direction,outcome}: "ok", "refused" (the decode side declined
  // the ticket: cancelled, unknown, expired) or "failed" (the channel broke).
  void CountTransfer(std::string_view outcome);
  // tandem:reservations_total{outcome} (decode): "ok" or the status code in snake case
  // ("resource_exhausted", "invalid_argument", ...).
  void CountReservation(const absl::Status& status);
  // tandem:reservation_renewals_total{outcome} (decode): tickets a prefill worker renewed
  // ("renewed") or asked for after they were gone ("lost").
  void CountRenewals(int renewed, int lost);

 private:
  metrics::Registry registry_;
  const std::string kv_direction_;
  metrics::Family<metrics::Counter>& transfers_;
  metrics::Family<metrics::Counter>& reservations_;
  metrics::Family<metrics::Counter>& renewals_;

 public:
  // Prompt tokens of the requests this worker prefilled (prefix-cache hits included).
  metrics::Counter& prompt_tokens;
  // Tokens this worker streamed (the decode worker; a prefill worker's one sampled token
  // is counted where it is streamed).
  metrics::Counter& generation_tokens;
  metrics::Counter& kv_transfer_bytes;      // {direction}
  metrics::Histogram& kv_transfer_seconds;  // {direction}: Begin to the acknowledgement
};

// "resource_exhausted" for RESOURCE_EXHAUSTED: absl's code name in lower case.
std::string StatusCodeLabel(absl::StatusCode code);

}  // namespace tandem

#endif  // TANDEM_SERVICE_WORKER_METRICS_H_
