#include "service/convert.h"

#include <string>
#include <utility>
#include <vector>

#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace tandem {

GenerationParams GenerationParamsFromProto(const v1::SamplingParams& sampling) {
  GenerationParams params;
  params.max_tokens = sampling.max_tokens();
  if (sampling.has_temperature()) params.sampling.temperature = sampling.temperature();
  if (sampling.has_top_p()) params.sampling.top_p = sampling.top_p();
  if (sampling.has_top_k()) params.sampling.top_k = sampling.top_k();
  if (sampling.has_seed()) params.sampling.seed = sampling.seed();
  params.stop.assign(sampling.stop().begin(), sampling.stop().end());
  params.ignore_eos = sampling.ignore_eos();
  return params;
}

v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kContext:
      return v1::FINISH_REASON_CONTEXT;
    case FinishReason::kAborted:
      return v1::FINISH_REASON_ABORTED;
    case FinishReason::kNone:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

const char* FinishReasonText(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CONTEXT:
      return "context";
    case v1::FINISH_REASON_ABORTED:
      return "aborted";
    default:
      return "unspecified";
  }
}

const char* PrefillLocationText(v1::PrefillLocation location) {
  switch (location) {
    case v1::PREFILL_LOCATION_REMOTE:
      return "remote";
    case v1::PREFILL_LOCATION_LOCAL:
      return "local";
    default:
      return "unspecified";
  }
}

absl::StatusOr<v1::PrefillMode> PrefillModeFromText(const std::string& mode) {
  if (mode.empty()) return v1::PREFILL_MODE_UNSPECIFIED;
  if (mode == "disaggregated") return v1::PREFILL_MODE_DISAGGREGATED;
  if (mode == "collocated") return v1::PREFILL_MODE_COLLOCATED;
  if (mode == "auto") return v1::PREFILL_MODE_AUTO;
  return absl::InvalidArgumentError(
      Cat("--mode '", mode, "': expected disaggregated, collocated or auto"));
}

v1::KvLayoutProto KvLayoutToProto(const KvLayout& layout) {
  v1::KvLayoutProto proto;
  proto.set_model_fingerprint(layout.model_fingerprint);
  proto.set_n_layers(layout.n_layers);
  proto.set_n_kv_heads(layout.n_kv_heads);
  proto.set_head_dim(layout.head_dim);
  proto.set_block_size(layout.block_size);
  proto.set_dtype(KvDtypeName(layout.dtype));
  proto.set_fingerprint(layout.Fingerprint());
  return proto;
}

absl::StatusOr<KvLayout> KvLayoutFromProto(const v1::KvLayoutProto& proto) {
  KvLayout layout;
  layout.model_fingerprint = proto.model_fingerprint();
  layout.n_layers = proto.n_layers();
  layout.n_kv_heads = proto.n_kv_heads();
  layout.head_dim = proto.head_dim();
  layout.block_size = proto.block_size();
  if (proto.dtype() == "f16") {
    layout.dtype = KvDtype::kF16;
  } else if (proto.dtype() == "f32") {
    layout.dtype = KvDtype::kF32;
  } else if (proto.dtype() == "bf16") {
    layout.dtype = KvDtype::kBF16;
  } else {
    return absl::InvalidArgumentError(Cat("KV layout dtype '", proto.dtype(), "' is unknown"));
  }
  if (layout.Fingerprint() != proto.fingerprint()) {
    return absl::InvalidArgumentError(Cat("KV layout fingerprint ", proto.fingerprint(),
                                          " does not match its fields (",
                                          layout.ToString(), ")"));
  }
  return layout;
}

v1::WorkerLoad WorkerLoadFromStats(const EngineStats& stats) {
  v1::WorkerLoad load;
  load.set_running_sequences(stats.running);
  load.set_waiting_sequences(stats.waiting);
  load.set_free_kv_blocks(stats.free_kv_blocks);
  load.set_total_kv_blocks(stats.total_kv_blocks);
  return load;
}

nlohmann::json HealthJson(const v1::HealthResponse& health) {
  nlohmann::json workers = nlohmann::json::array();
  for (const v1::WorkerStatus& w : health.workers()) {
    workers.push_back({{"id", w.id()},
                       {"role", w.role()},
                       {"address", w.address()},
                       {"free_kv_blocks", w.free_kv_blocks()},
                       {"total_kv_blocks", w.total_kv_blocks()},
                       {"running_sequences", w.running_sequences()},
                       {"queued_prompt_tokens", w.queued_prompt_tokens()},
                       {"draining", w.draining()},
                       {"transports", std::vector<std::string>(w.transports().begin(),
                                                               w.transports().end())},
                       {"device_uuid", w.device_uuid()}});
  }
  return nlohmann::json{{"serving", health.serving()},
                        {"status", health.serving() ? "ok" : "unavailable"},
                        {"mode", health.mode()},
                        {"prefill_workers", health.prefill_workers()},
                        {"decode_workers", health.decode_workers()},
                        {"workers", std::move(workers)}};
}

}  // namespace tandem
