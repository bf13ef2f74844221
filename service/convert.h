// Conversions between the wire (proto/tandem/v1) and the engine's types, shared by the
// router and both workers so each side reads a field the same way.
#ifndef TANDEM_SERVICE_CONVERT_H_
#define TANDEM_SERVICE_CONVERT_H_

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/request.h"
#include "kvtransfer/kv_layout.h"
#include "nlohmann/json_fwd.hpp"
#include "tandem/v1/generation.pb.h"
#include "tandem/v1/worker.pb.h"

namespace tandem {

// The engine's parameters for a wire request: proto3 defaults where a field is unset
// (temperature 1, top_p 1, top_k 0). The engine validates the values.
GenerationParams GenerationParamsFromProto(const v1::SamplingParams& sampling);

v1::FinishReason FinishReasonToProto(FinishReason reason);

// Lower-case names for people and JSON: "stop", "length", "context", "aborted"; "remote",
// "local"; "unspecified" for anything else.
const char* FinishReasonText(v1::FinishReason reason);
const char* PrefillLocationText(v1::PrefillLocation location);
// A --mode flag: "" (the router's mode), "disaggregated", "collocated" or "auto";
// INVALID_ARGUMENT otherwise.
absl::StatusOr<v1::PrefillMode> PrefillModeFromText(const std::string& mode);

v1::KvLayoutProto KvLayoutToProto(const KvLayout& layout);
// INVALID_ARGUMENT for an unknown dtype or a fingerprint that does not match the fields.
absl::StatusOr<KvLayout> KvLayoutFromProto(const v1::KvLayoutProto& proto);

// The load a worker reports: the engine's figures plus what the worker queued around it.
v1::WorkerLoad WorkerLoadFromStats(const EngineStats& stats);

// The router's health for people and scripts: `tandem client --health --json` and the HTTP
// API's GET /health. {"serving", "status" ("ok" | "unavailable"), "mode", "prefill_workers",
// "decode_workers", "workers": [{"id", "role", "address", "free_kv_blocks", ...}]}.
nlohmann::json HealthJson(const v1::HealthResponse& health);

}  // namespace tandem

#endif  // TANDEM_SERVICE_CONVERT_H_
