// The request coordinator: carries one validated Generate request through its decode
// worker D (Reserve, Stream) and, unless D prefills it locally, a prefill worker P
// (Prefill, retried on another P), forwarding D's deltas to the client and completing the
// final message. A failed D is replaced: the request resumes on another D from the tokens
// generated so far. Client cancellation or deadline cancels both legs (docs/SERVING.md).
//
// Every call is asynchronous (gRPC's callback API, one reactor per call): a request waiting
// in the prefill gate, for a decode worker, or for its tokens holds no thread, so the
// router's threads do not grow with the requests in flight.
//
// Thread-safe.
#ifndef TANDEM_ROUTER_REQUEST_COORDINATOR_H_
#define TANDEM_ROUTER_REQUEST_COORDINATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/time/time.h"
#include "common/timer_queue.h"
#include "grpcpp/grpcpp.h"
#include "router/placement.h"
#include "router/prefill_gate.h"
#include "router/router_metrics.h"
#include "router/router_model.h"
#include "router/router_options.h"
#include "router/validate.h"
#include "router/worker_channels.h"
#include "router/worker_registry.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router {

class RequestCoordinator {
 public:
  // Every reference (and `metrics`, optional) must outlive the coordinator.
  RequestCoordinator(const RouterOptions& options, const RouterModel& model,
                     WorkerRegistry& registry, Placement& placement, WorkerChannels& channels,
                     RouterMetrics* metrics = nullptr);
  RequestCoordinator(const RequestCoordinator&) = delete;
  RequestCoordinator& operator=(const RequestCoordinator&) = delete;

  // Starts `request` (already validated into `validated`) and returns the reactor that
  // runs it to its end: deltas, then one final message, then the call's status: OK,
  // CANCELLED (the client left), or the error that ended it (UNAVAILABLE,
  // RESOURCE_EXHAUSTED, a worker's INVALID_ARGUMENT, ...). `received` is when the router got
  // the request (timings count from it); `on_done` runs once gRPC is done with the call.
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                           const v1::GenerateRequest& request,
                                                           ValidatedRequest validated,
                                                           absl::Time received,
                                                           std::function<void()> on_done);

  // Counts a request refused before Generate (validation, a full queue) in
  // tandem:requests_total; Generate counts every other.
  void CountRejected(const grpc::Status& status) {
    if (metrics_ != nullptr) metrics_->CountRequest(status);
  }

  // A request id unique within this router process (and, with a random prefix, likely
  // across routers): "rt-1a2b3c4d-17".
  std::string NewRequestId();

 private:
  friend class GenerateCall;

  const RouterOptions& options_;
  const RouterModel& model_;
  WorkerRegistry& registry_;
  Placement& placement_;
  WorkerChannels& channels_;
  RouterMetrics* const metrics_;
  const std::string id_prefix_;
  std::atomic<uint64_t> next_request_{1};
  PrefillGate prefill_gate_;
  // The calls' backoffs, pauses and queue deadlines. Last: it goes first, with any call a
  // timer still holds, while what the calls use is still there.
  TimerQueue timers_;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_REQUEST_COORDINATOR_H_
