// tandem-router's configuration and its command-line flags (docs/SERVING.md).
#ifndef TANDEM_ROUTER_ROUTER_OPTIONS_H_
#define TANDEM_ROUTER_ROUTER_OPTIONS_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/args.h"
#include "router/placement.h"
#include "tandem/v1/generation.pb.h"

namespace tandem::router {

enum class RouterMode { kDisaggregated, kCollocated, kAuto };

// "disaggregated" | "collocated" | "auto"; INVALID_ARGUMENT naming the choices.
absl::StatusOr<RouterMode> ParseRouterMode(std::string_view name);
std::string_view RouterModeName(RouterMode mode);
// A request's mode: PREFILL_MODE_UNSPECIFIED keeps the router's.
RouterMode ResolveMode(RouterMode router_mode, v1::PrefillMode request_mode);

struct RouterOptions {
  std::string host = "0.0.0.0";
  int port = 50051;               // 0: any free port (Router::port() tells which)
  std::string model = "default";  // "default" or a GGUF path
  RouterMode mode = RouterMode::kDisaggregated;
  PrefillPolicy prefill_policy = PrefillPolicy::kAffinity;
  int max_queue = 256;  // requests admitted and not finished; beyond: RESOURCE_EXHAUSTED
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  int auto_local_max_tokens = 256;  // auto mode: prefill on D up to this many prompt tokens
  absl::Duration reservation_deadline = absl::Seconds(30);  // Reserve's deadline_s
  absl::Duration queue_timeout = absl::Seconds(60);         // waiting for a decode worker with room
  int prefill_tries = 3;
};

std::vector<FlagSpec> RouterFlagSpecs();
// INVALID_ARGUMENT naming the flag for a bad value.
absl::StatusOr<RouterOptions> RouterOptionsFromArgs(const Args& args);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_OPTIONS_H_
