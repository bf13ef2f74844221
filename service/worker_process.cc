#include "service/worker_process.h"

#include <signal.h>

#include <cstdlib>
#include <thread>

#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/engine_flags.h"
#include "service/convert.h"

namespace tandem {

std::vector<FlagSpec> WorkerFlagSpecs() {
  std::vector<FlagSpec> specs = EngineFlagSpecs();
  specs.insert(specs.end(), {
      {"router", false, "the router's host:port (default 127.0.0.1:50051)"},
      {"host", false, "address the worker's servers bind (default 127.0.0.1)"},
      {"advertise-host", false, "address the router and peers dial (default: --host)"},
      {"port", false, "gRPC port (default 0: any free port)"},
  });
  return specs;
}

absl::StatusOr<WorkerFlags> WorkerFlagsFromArgs(const Args& args) {
  WorkerFlags flags;
  ASSIGN_OR_RETURN(flags.engine, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(flags.model_path, ModelPathFromArgs(args));
  flags.router = args.GetString("router", flags.router);
  flags.host = args.GetString("host", flags.host);
  flags.advertise_host = args.GetString("advertise-host", flags.host);
  if (flags.advertise_host == "0.0.0.0" || flags.advertise_host == "::") {
    return absl::InvalidArgumentError(
        "--advertise-host is needed when --host binds every interface");
  }
  ASSIGN_OR_RETURN(int64_t port, args.GetInt("port", 0));
  if (port < 0 || port > 65535) return absl::InvalidArgumentError("--port out of range");
  flags.port = static_cast<int>(port);
  return flags;
}

namespace {

sigset_t ShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownSignal() {
  sigset_t set = ShutdownSignals();
  int signal = 0;
  sigwait(&set, &signal);
  std::thread([set] {
    int again = 0;
    sigwait(&set, &again);
    LOG(WARNING) << "second signal: exiting now";
    std::_Exit(1);
  }).detach();
  return signal;
}

absl::StatusOr<StartedServer> StartServer(grpc::ServerBuilder& builder,
                                          const WorkerFlags& flags) {
  int port = 0;
  const std::string bind = Cat(flags.host.find(':') != std::string::npos ? "[" : "", flags.host,
                               flags.host.find(':') != std::string::npos ? "]" : "", ":",
                               flags.port);
  builder.AddListeningPort(bind, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  StartedServer started;
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || port == 0) {
    return absl::UnavailableError(Cat("cannot serve on ", bind, " (port in use?)"));
  }
  started.address = Cat(flags.advertise_host, ":", port);
  return started;
}

v1::RegisterRequest MakeRegisterRequest(v1::WorkerRole role, const std::string& address,
                                        const Engine& engine, const KvLayout& layout) {
  v1::RegisterRequest request;
  request.set_role(role);
  request.set_address(address);
  request.set_model(engine.config().name);
  *request.mutable_kv_layout() = KvLayoutToProto(layout);
  request.add_transports("tcp");
  *request.mutable_load() = WorkerLoadFromStats(engine.stats());
  return request;
}

}  // namespace tandem
