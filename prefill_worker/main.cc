// tandem-prefill: a prefill worker. Loads the model, serves Prefill, registers
// with the router and heartbeats; SIGTERM drains (deregister, finish what it holds, exit).
#include <cstdio>
#include <memory>

#include "common/logging.h"
#include "common/strings.h"
#include "prefill_worker/prefill_worker.h"
#include "service/worker_process.h"
#include "service/worker_registration.h"

namespace tandem {
namespace {

int Run(int argc, char** argv) {
  const std::vector<FlagSpec> specs = WorkerFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, 1, specs);
  if (!args.ok() || args->Has("help")) {
    std::fprintf(stderr, "%s%susage: tandem-prefill [flags]\n\n%s",
                 args.ok() ? "" : std::string(args.status().message()).c_str(),
                 args.ok() ? "" : "\n\n", Args::Usage(specs).c_str());
    return 2;
  }
  absl::StatusOr<WorkerFlags> flags = WorkerFlagsFromArgs(*args);
  if (!flags.ok()) {
    std::fprintf(stderr, "tandem-prefill: %s\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  BlockShutdownSignals();
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::FromGguf(flags->model_path,
                                                                    flags->engine);
  if (!engine.ok()) {
    std::fprintf(stderr, "tandem-prefill: %s\n", std::string(engine.status().message()).c_str());
    return 1;
  }

  PrefillWorkerOptions options;
  auto worker = std::make_unique<PrefillWorker>(std::move(*engine), options);
  grpc::ServerBuilder builder;
  builder.RegisterService(worker.get());
  absl::StatusOr<StartedServer> server = StartServer(builder, *flags);
  if (!server.ok()) {
    std::fprintf(stderr, "tandem-prefill: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  worker->Start();
  WorkerRegistration registration(
      flags->router,
      MakeRegisterRequest(v1::WORKER_ROLE_PREFILL, server->address, worker->engine(),
                          worker->layout()),
      [&worker] { return worker->Load(); });
  registration.Start();
  LOG(INFO) << "tandem-prefill: serving on " << server->address << ", "
            << worker->engine().kv_cache().num_total_blocks() << " KV blocks, router "
            << flags->router;

  const int signal = WaitForShutdownSignal();
  LOG(INFO) << "signal " << signal << ": draining " << worker->num_requests() << " requests";
  registration.Drain();
  while (worker->num_requests() > 0) absl::SleepFor(absl::Milliseconds(50));
  registration.Stop();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  worker->Stop();
  LOG(INFO) << "tandem-prefill: drained, exiting";
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Run(argc, argv); }
