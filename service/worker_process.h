// What the prefill and decode worker processes share around their services: flags, the
// engine, the gRPC server, registration, and a drain on SIGTERM.
#ifndef TANDEM_SERVICE_WORKER_PROCESS_H_
#define TANDEM_SERVICE_WORKER_PROCESS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/args.h"
#include "engine/engine.h"
#include "grpcpp/grpcpp.h"
#include "kvtransfer/kv_layout.h"
#include "tandem/v1/worker.pb.h"

namespace tandem {

struct WorkerFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";  // where the gRPC server (and KV listeners) bind
  std::string advertise_host;      // what the router and peers dial; default: host
  int port = 0;                    // 0: any free port
  std::string model_path;
  EngineOptions engine;
};

// The engine flags plus --router, --host, --advertise-host, --port.
std::vector<FlagSpec> WorkerFlagSpecs();
absl::StatusOr<WorkerFlags> WorkerFlagsFromArgs(const Args& args);

// Blocks SIGINT and SIGTERM in this thread and every thread it starts afterwards: call
// first in main. WaitForShutdownSignal then returns the first one; a second signal exits
// the process at once.
void BlockShutdownSignals();
int WaitForShutdownSignal();

// Starts `builder`'s server on flags.host:flags.port and returns it with the address peers
// should dial (advertise host and the bound port).
struct StartedServer {
  std::unique_ptr<grpc::Server> server;
  std::string address;
};
absl::StatusOr<StartedServer> StartServer(grpc::ServerBuilder& builder, const WorkerFlags& flags);

// The registration request every worker sends.
v1::RegisterRequest MakeRegisterRequest(v1::WorkerRole role, const std::string& address,
                                        const Engine& engine, const KvLayout& layout);

}  // namespace tandem

#endif  // TANDEM_SERVICE_WORKER_PROCESS_H_
