#include "router/generation_service.h"

#include <utility>

#include "common/strings.h"
#include "router/validate.h"
#include "service/grpc_status.h"

namespace tandem::router {

GenerationService::GenerationService(const RouterOptions& options, const RouterModel& model,
                                     WorkerRegistry& registry, RequestCoordinator& coordinator)
    : options_(options), model_(model), registry_(registry), coordinator_(coordinator) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  const absl::Time received = absl::Now();
  if (absl::Status s = options_.api_keys.CheckGrpc(*context); !s.ok()) {
    return RefuseStream<v1::GenerateResponse>(ToGrpcStatus(s));
  }
  absl::StatusOr<ValidatedRequest> validated = ValidateGenerateRequest(*request, model_);
  if (!validated.ok()) {
    grpc::Status refused = ToGrpcStatus(validated.status());
    coordinator_.CountRejected(refused);
    return RefuseStream<v1::GenerateResponse>(std::move(refused));
  }

  if (in_flight_.fetch_add(1) >= options_.max_queue) {
    in_flight_.fetch_sub(1);
    grpc::Status full(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      Cat("router queue full (", options_.max_queue, " requests)"));
    coordinator_.CountRejected(full);
    return RefuseStream<v1::GenerateResponse>(std::move(full));
  }
  return coordinator_.Generate(context, *request, std::move(*validated), received,
                               [this] { in_flight_.fetch_sub(1); });
}

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* context,
                                                        const v1::ListModelsRequest* request,
                                                        v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = options_.api_keys.CheckGrpc(*context); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  v1::ModelInfo* info = response->add_models();
  info->set_id(model_.id());
  info->set_context_length(model_.context_length());
  info->set_fingerprint(model_.fingerprint());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* GenerationService::Health(grpc::CallbackServerContext* context,
                                                    const v1::HealthRequest* request,
                                                    v1::HealthResponse* response) {
  // NOTE: no API key: load balancers and `tandem client --health` probe it.
  *response = MakeHealth(options_.mode, registry_.Snapshot());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

v1::HealthResponse MakeHealth(RouterMode mode, absl::Span<const WorkerView> workers) {
  v1::HealthResponse health;
  int prefill = 0;
  int decode = 0;
  for (const WorkerView& w : workers) {
    const bool is_prefill = w.role == v1::WORKER_ROLE_PREFILL;
    if (!w.draining) ++(is_prefill ? prefill : decode);
    v1::WorkerStatus* s = health.add_workers();
    s->set_id(w.id);
    s->set_role(is_prefill ? "prefill" : "decode");
    s->set_address(w.address);
    s->set_free_kv_blocks(w.load.free_kv_blocks());
    s->set_total_kv_blocks(w.load.total_kv_blocks());
    s->set_running_sequences(w.load.running_sequences());
    s->set_queued_prompt_tokens(w.load.queued_prompt_tokens());
    s->set_draining(w.draining);
    s->mutable_transports()->Assign(w.transports.begin(), w.transports.end());
    s->set_device_uuid(w.device_uuid);
  }
  health.set_prefill_workers(prefill);
  health.set_decode_workers(decode);
  // Collocated and auto serve with decode workers alone; disaggregated needs both.
  health.set_serving(decode > 0 && (mode != RouterMode::kDisaggregated || prefill > 0));
  health.set_mode(std::string(RouterModeName(mode)));
  return health;
}

}  // namespace tandem::router
