#include "router/router_options.h"

#include <cstdint>
#include <cstdlib>

#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem::router {

absl::StatusOr<RouterMode> ParseRouterMode(std::string_view name) {
  if (name == "disaggregated") return RouterMode::kDisaggregated;
  if (name == "collocated") return RouterMode::kCollocated;
  if (name == "auto") return RouterMode::kAuto;
  return absl::InvalidArgumentError(
      Cat("--mode must be disaggregated, collocated or auto, got '", name, "'"));
}

std::string_view RouterModeName(RouterMode mode) {
  switch (mode) {
    case RouterMode::kDisaggregated:
      return "disaggregated";
    case RouterMode::kCollocated:
      return "collocated";
    case RouterMode::kAuto:
      return "auto";
  }
  return "unknown";
}

RouterMode ResolveMode(RouterMode router_mode, v1::PrefillMode request_mode) {
  switch (request_mode) {
    case v1::PREFILL_MODE_DISAGGREGATED:
      return RouterMode::kDisaggregated;
    case v1::PREFILL_MODE_COLLOCATED:
      return RouterMode::kCollocated;
    case v1::PREFILL_MODE_AUTO:
      return RouterMode::kAuto;
    default:
      return router_mode;
  }
}

std::vector<FlagSpec> RouterFlagSpecs() {
  return {
      {"port", false, "gRPC port for Generation and Registry (default 50051; 0: any free port)"},
      {"host", false, "address to listen on (default 0.0.0.0)"},
      {"model", false,
       "'default' or a GGUF path: tokenizer, chat template, context (default default)"},
      {"mode", false, "disaggregated | collocated | auto (default disaggregated)"},
      {"prefill-policy", false, "affinity | round_robin | least_loaded (default affinity)"},
      {"max-queue", false,
       "requests in flight, queued ones included, before RESOURCE_EXHAUSTED (default 4096)"},
      {"heartbeat-interval", false, "seconds between worker heartbeats (default 0.5)"},
      {"auto-local-max-tokens", false,
       "auto mode: prefill on the decode worker up to this many prompt tokens (default 256)"},
      {"reservation-deadline", false,
       "seconds a decode reservation waits for its KV unless the prefill worker holding the "
       "prompt renews it (default 30)"},
      {"prefill-timeout", false,
       "seconds one prefill call may take, queue included, before it is cancelled (default 300)"},
      {"queue-timeout", false,
       "seconds a request waits for a decode worker with room (default 60)"},
      {"prefill-queue-tokens", false,
       "prompt tokens each prefill worker may have queued; more wait in the router, holding "
       "no KV (default 4096; 0: no bound)"},
      {"api-key", false,
       "API key(s) Generate and ListModels require, comma-separated (default: $TANDEM_API_KEY "
       "when no --api-key-file either; none: open)"},
      {"api-key-file", false, "file with one API key per line ('#' comments)"},
      {"tls-cert", false, "PEM certificate: TLS on the gRPC and HTTP ports (with --tls-key)"},
      {"tls-key", false, "PEM private key of --tls-cert"},
      {"tls-ca", false,
       "PEM CA of the workers' certificates: mutual TLS with the workers (needs --tls-cert)"},
      {"http-host", false, "address the HTTP API listens on (default: --host)"},
      {"http-port", false, "HTTP API port (default 8000; 0: any free port; -1: no HTTP)"},
      {"http-threads", false, "HTTP server threads (default 1)"},
      {"help", true, "this text"},
  };
}

namespace {

absl::StatusOr<absl::Duration> PositiveSeconds(const Args& args, std::string_view name,
                                               double fallback) {
  ASSIGN_OR_RETURN(double seconds, args.GetDouble(name, fallback));
  if (!(seconds > 0) || seconds > 1e6) {
    return absl::InvalidArgumentError(
        Cat("--", name, " must be a positive number of seconds, got ", args.GetString(name)));
  }
  return absl::Seconds(seconds);
}

}  // namespace

absl::StatusOr<RouterOptions> RouterOptionsFromArgs(const Args& args) {
  RouterOptions o;
  o.host = args.GetString("host", o.host);
  ASSIGN_OR_RETURN(int64_t port, args.GetInt("port", o.port));
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(Cat("--port must be in [0, 65535], got ", port));
  }
  o.port = static_cast<int>(port);
  o.model = args.GetString("model", o.model);
  ASSIGN_OR_RETURN(o.mode, ParseRouterMode(args.GetString("mode", "disaggregated")));
  ASSIGN_OR_RETURN(o.prefill_policy,
                   ParsePrefillPolicy(args.GetString("prefill-policy", "affinity")));
  ASSIGN_OR_RETURN(int64_t max_queue, args.GetInt("max-queue", o.max_queue));
  if (max_queue <= 0 || max_queue > 1000000) {
    return absl::InvalidArgumentError(Cat("--max-queue must be in [1, 1000000], got ", max_queue));
  }
  o.max_queue = static_cast<int>(max_queue);
  ASSIGN_OR_RETURN(o.heartbeat_interval, PositiveSeconds(args, "heartbeat-interval", 0.5));
  ASSIGN_OR_RETURN(int64_t local_max,
                   args.GetInt("auto-local-max-tokens", o.auto_local_max_tokens));
  if (local_max < 0 || local_max > (1 << 30)) {
    return absl::InvalidArgumentError(Cat("--auto-local-max-tokens must be >= 0, got ", local_max));
  }
  o.auto_local_max_tokens = static_cast<int>(local_max);
  ASSIGN_OR_RETURN(o.reservation_deadline, PositiveSeconds(args, "reservation-deadline", 30));
  ASSIGN_OR_RETURN(o.prefill_timeout, PositiveSeconds(args, "prefill-timeout", 300));
  ASSIGN_OR_RETURN(o.queue_timeout, PositiveSeconds(args, "queue-timeout", 60));
  ASSIGN_OR_RETURN(o.prefill_queue_tokens,
                   args.GetInt("prefill-queue-tokens", o.prefill_queue_tokens));
  if (o.prefill_queue_tokens < 0) {
    return absl::InvalidArgumentError(
        Cat("--prefill-queue-tokens must be >= 0, got ", o.prefill_queue_tokens));
  }

  ASSIGN_OR_RETURN(o.api_keys, ApiKeys::FromConfig(args.GetAll("api-key"),
                                                   args.GetString("api-key-file"),
                                                   std::getenv(kApiKeyEnv)));
  o.tls.cert = args.GetString("tls-cert");
  o.tls.key = args.GetString("tls-key");
  o.tls.ca = args.GetString("tls-ca");
  if (o.tls.cert.empty() != o.tls.key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!o.tls.ca.empty() && o.tls.cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-ca needs --tls-cert and --tls-key: the router presents its certificate to the "
        "workers");
  }

  o.http_host = args.GetString("http-host", o.host);
  ASSIGN_OR_RETURN(int64_t http_port, args.GetInt("http-port", o.http_port));
  if (http_port < -1 || http_port > 65535) {
    return absl::InvalidArgumentError(
        Cat("--http-port must be in [0, 65535] or -1 (no HTTP), got ", http_port));
  }
  o.http_port = static_cast<int>(http_port);
  ASSIGN_OR_RETURN(int64_t http_threads, args.GetInt("http-threads", o.http_threads));
  if (http_threads < 1 || http_threads > 1024) {
    return absl::InvalidArgumentError(
        Cat("--http-threads must be in [1, 1024], got ", http_threads));
  }
  o.http_threads = static_cast<int>(http_threads);
  return o;
}

}  // namespace tandem::router
