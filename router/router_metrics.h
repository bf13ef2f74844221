// The router's Prometheus metrics (docs/SERVING.md, Metrics), named after vLLM's with the
// "tandem:" prefix. Children are looked up once here, so recording is a few atomic
// operations, never a lock.
#ifndef TANDEM_ROUTER_ROUTER_METRICS_H_
#define TANDEM_ROUTER_ROUTER_METRICS_H_

#include <string>

#include "grpcpp/grpcpp.h"
#include "router/worker_registry.h"
#include "service/metrics.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router {

class RouterMetrics {
 public:
  // Adds the router's families to `registry` (whose constant labels carry model_name);
  // `workers` feeds tandem:workers at scrape time. Both must outlive this.
  RouterMetrics(metrics::Registry& registry, const WorkerRegistry& workers);

  // tandem:requests_total{outcome} from a call's final status.
  void CountRequest(const grpc::Status& status);
  // A request that finished with a final message (finish reason, token counts, timings).
  void CountSuccess(const v1::GenerateFinal& final);

  metrics::Counter& prompt_tokens;
  metrics::Counter& generation_tokens;
  metrics::Counter& prefill_remote;
  metrics::Counter& prefill_local;
  metrics::Counter& prefill_retries;
  metrics::Counter& decode_failovers;
  metrics::Gauge& running;
  metrics::Gauge& waiting;
  metrics::Histogram& time_to_first_token;
  metrics::Histogram& inter_token_latency;
  metrics::Histogram& e2e_latency;
  metrics::Histogram& queue_time;
  metrics::Histogram& prefill_time;
  metrics::Histogram& decode_time;
  metrics::Histogram& prompt_tokens_per_request;
  metrics::Histogram& generation_tokens_per_request;
  metrics::Histogram& kv_transfer;

 private:
  metrics::Family<metrics::Counter>& requests_;
  metrics::Family<metrics::Counter>& success_;
};

// "ok", "cancelled", "invalid_argument", "resource_exhausted", "unavailable",
// "deadline_exceeded", or "error" for any other code.
std::string OutcomeLabel(grpc::StatusCode code);
// "stop", "length", "context", "aborted", "unspecified".
std::string FinishReasonLabel(v1::FinishReason reason);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_METRICS_H_
