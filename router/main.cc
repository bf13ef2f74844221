// tandem-router: the public Generation service and the worker Registry on one port
// (docs/SERVING.md). SIGINT/SIGTERM shut it down and exit 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>

#include "common/args.h"
#include "common/logging.h"
#include "router/router.h"
#include "router/router_options.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "tandem-router: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using tandem::Args;
  using tandem::FlagSpec;
  using tandem::router::PrefillPolicyName;
  using tandem::router::Router;
  using tandem::router::RouterModeName;
  using tandem::router::RouterOptions;
  const std::vector<FlagSpec> specs = tandem::router::RouterFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, 1, specs);
  if (!args.ok()) return Fail(args.status());
  if (args->Has("help")) {
    std::printf("usage: tandem-router [flags]\n\n%s", Args::Usage(specs).c_str());
    return 0;
  }
  absl::StatusOr<RouterOptions> options = tandem::router::RouterOptionsFromArgs(*args);
  if (!options.ok()) return Fail(options.status());

  // Signals are taken by sigwait below: block them before any thread starts, so every
  // thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<Router>> router = Router::Start(*options);
  if (!router.ok()) return Fail(router.status());
  const std::string http = (*router)->http_address();
  const char* scheme = options->tls.cert.empty() ? "http" : "https";
  std::fprintf(stderr,
               "tandem-router: serving on %s (gRPC), %s%s%s%s, mode %s, model %s (%s), "
               "prefill policy %s\n",
               (*router)->address().c_str(), http.empty() ? "no HTTP API" : scheme,
               http.empty() ? "" : "://", http.c_str(), http.empty() ? "" : " (HTTP API)",
               std::string(RouterModeName(options->mode)).c_str(),
               (*router)->model().id().c_str(), (*router)->model().path().c_str(),
               std::string(PrefillPolicyName(options->prefill_policy)).c_str());
  std::fflush(stderr);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  LOG(INFO) << "tandem-router: " << (signal_number == SIGINT ? "SIGINT" : "SIGTERM")
            << ", shutting down";
  (*router)->Shutdown(absl::Seconds(1));
  router->reset();
  return 0;
}
