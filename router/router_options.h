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
#include "service/api_key.h"
#include "service/tls.h"
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
  int max_queue = 4096;  // requests admitted and not finished; beyond: RESOURCE_EXHAUSTED
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  int auto_local_max_tokens = 256;  // auto mode: prefill on D up to this many prompt tokens
  // Reserve's deadline_s: the lease of a decode reservation, which the prefill worker holding
  // its prompt renews (Decode.Renew) until the KV begins to arrive.
  absl::Duration reservation_deadline = absl::Seconds(30);
  // The most one Prefill call may take (waiting in the prefill worker's queue, computing,
  // handing the KV over) before the router cancels it.
  absl::Duration prefill_timeout = absl::Seconds(300);
  absl::Duration queue_timeout = absl::Seconds(60);         // waiting for a decode worker with room
  int prefill_tries = 3;
  // Prompt tokens each serving prefill worker may have queued before requests wait in the
  // router (PrefillGate); 0: no bound. Tune to ~10 s of a prefill worker's throughput.
  int64_t prefill_queue_tokens = 4096;

  // Security (docs/SERVING.md, Security).
  // Keys that Generate and ListModels (and the HTTP API) require; none: open. From
  // --api-key / --api-key-file, else $TANDEM_API_KEY.
  ApiKeys api_keys = ApiKeys();
  // --tls-cert/--tls-key: TLS on the gRPC (and HTTP) port. --tls-ca: the CA of the workers'
  // certificates; the Registry then takes only workers with a certificate it signed, and the
  // router presents its certificate to the workers.
  TlsFiles tls = {};

  // The HTTP API (wired by the router's HTTP server).
  std::string http_host = "";  // empty: same as host (--http-host defaults to --host)
  int http_port = 8000;   // 0: any free port; -1: no HTTP server
  int http_threads = 1;
};

std::vector<FlagSpec> RouterFlagSpecs();
// INVALID_ARGUMENT naming the flag for a bad value.
absl::StatusOr<RouterOptions> RouterOptionsFromArgs(const Args& args);

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_ROUTER_OPTIONS_H_
