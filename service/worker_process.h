// What the prefill and decode worker processes share around their services: flags, the
// engine, the gRPC server, registration, and a drain on SIGTERM.
#ifndef TANDEM_SERVICE_WORKER_PROCESS_H_
#define TANDEM_SERVICE_WORKER_PROCESS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/args.h"
#include "engine/engine.h"
#include "grpcpp/grpcpp.h"
#include "kvtransfer/data_path.h"
#include "kvtransfer/kv_layout.h"
#include "service/http_server.h"
#include "service/metrics.h"
#include "service/tls.h"
#include "tandem/v1/worker.pb.h"

namespace tandem {

struct WorkerFlags {
  std::string router = "127.0.0.1:50051";
  std::string host = "127.0.0.1";  // where the gRPC server (and KV listeners) bind
  std::string advertise_host;      // what the router and peers dial; default: host
  int port = 0;                    // 0: any free port
  std::string model_path;
  // The router's id for the model (the GGUF file name without .gguf): metrics' model_name.
  std::string model_name;
  // GET /metrics (Prometheus) on metrics_host:metrics_port; 0: any free port; -1: off.
  int metrics_port = 0;
  std::string metrics_host;  // default: host
  EngineOptions engine;
  // Prefill workers: the KV transport they open channels with (kvtransfer/data_path.h).
  // Decode workers accept every transport they can open.
  TransportKind kv_transport = TransportKind::kTcp;
  // How long either end of a KV transfer waits for the other's next message or layer.
  absl::Duration kv_transfer_timeout = absl::Seconds(30);
  // --tls-cert, --tls-key and --tls-ca (all three or none), loaded: mutual TLS on the
  // worker's server (clients must present a certificate the CA signed), on its registration
  // with the router and on the KV channels it opens. Empty: plaintext.
  TlsPem tls = {};
  TlsFiles tls_files = {};  // their paths; /metrics is served over HTTPS with the same pair
};

// The engine flags plus --router, --host, --advertise-host, --port, --tls-*.
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

// What a worker process runs: its gRPC services around an engine thread.
class WorkerService {
 public:
  virtual ~WorkerService() = default;
  virtual void RegisterServices(grpc::ServerBuilder& builder) = 0;
  // host:port the router and peers dial, known once the server is bound (before Start).
  virtual void SetAddress(const std::string& address) {}
  virtual void Start() = 0;
  virtual void Stop() = 0;
  virtual const Engine& engine() const = 0;
  virtual const KvLayout& layout() const = 0;
  virtual v1::WorkerLoad CurrentLoad() const = 0;
  // Requests it still holds; draining waits for 0.
  virtual int num_requests() const = 0;
  // What /metrics serves; null: nothing.
  virtual const metrics::Registry* metrics() const { return nullptr; }
};

// A worker's main: parses the flags, loads the engine, serves what `make` builds around it,
// registers with the router, and on SIGTERM/SIGINT deregisters, finishes what it holds and
// returns 0. `name` prefixes messages ("tandem-decode").
int RunWorkerProcess(
    const char* name, v1::WorkerRole role, int argc, char** argv,
    const std::function<std::unique_ptr<WorkerService>(std::unique_ptr<Engine> engine,
                                                       const WorkerFlags& flags)>& make);

// GET /metrics: `registry`'s text exposition (text/plain; version=0.0.4); 404 (JSON) for any
// other path, 405 for other methods. `registry` must outlive the server.
HttpHandler MetricsHandler(const metrics::Registry& registry);

// The registration request every worker sends. `transports`: the KV transports it opens
// (prefill: one) or accepts (decode).
v1::RegisterRequest MakeRegisterRequest(v1::WorkerRole role, const std::string& address,
                                        const Engine& engine, const KvLayout& layout,
                                        const std::vector<TransportKind>& transports);

}  // namespace tandem

#endif  // TANDEM_SERVICE_WORKER_PROCESS_H_
