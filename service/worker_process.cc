#include "service/worker_process.h"

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/backends/engine_flags.h"
#include "service/convert.h"
#include "service/http_server.h"
#include "service/worker_registration.h"

namespace tandem {

std::vector<FlagSpec> WorkerFlagSpecs() {
  std::vector<FlagSpec> specs = EngineFlagSpecs();
  specs.insert(specs.end(), {
      {"router", false, "the router's host:port (default 127.0.0.1:50051)"},
      {"host", false, "address the worker's servers bind (default 127.0.0.1)"},
      {"advertise-host", false, "address the router and peers dial (default: --host)"},
      {"port", false, "gRPC port (default 0: any free port)"},
      {"metrics-port", false,
       "port of GET /metrics (Prometheus; default 0: any free port, -1: off)"},
      {"metrics-host", false, "address /metrics binds (default: --host)"},
      {"tls-cert", false, "PEM certificate: mutual TLS with the router and peers (with "
                          "--tls-key and --tls-ca)"},
      {"tls-key", false, "PEM private key of --tls-cert"},
      {"tls-ca", false, "PEM CA that signed the router's and the other workers' certificates"},
      {"kv-transport", false,
       "prefill: tcp (default), cuda_ipc (decode on the same node) or nccl (another GPU); "
       "decode workers accept each one they can open"},
      {"kv-transfer-timeout", false,
       "seconds a KV transfer may wait for its peer's next message or layer before the "
       "channel is closed and the request's blocks released (default 30)"},
      {"help", true, "this text"},
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
  ASSIGN_OR_RETURN(int64_t metrics_port, args.GetInt("metrics-port", 0));
  if (metrics_port < -1 || metrics_port > 65535) {
    return absl::InvalidArgumentError("--metrics-port out of range (-1 turns /metrics off)");
  }
  flags.metrics_port = static_cast<int>(metrics_port);
  flags.metrics_host = args.GetString("metrics-host", flags.host);
  const std::filesystem::path model(flags.model_path);
  flags.model_name =
      model.extension() == ".gguf" ? model.stem().string() : model.filename().string();
  TlsFiles tls{args.GetString("tls-cert"), args.GetString("tls-key"), args.GetString("tls-ca")};
  if (!tls.empty() && (tls.cert.empty() || tls.key.empty() || tls.ca.empty())) {
    return absl::InvalidArgumentError(
        "--tls-cert, --tls-key and --tls-ca go together: a worker speaks mutual TLS or none");
  }
  ASSIGN_OR_RETURN(flags.tls, LoadTlsFiles(tls));
  flags.tls_files = tls;
  ASSIGN_OR_RETURN(flags.kv_transport, ParseTransportKind(args.GetString("kv-transport", "tcp")));
  ASSIGN_OR_RETURN(double transfer_s, args.GetDouble("kv-transfer-timeout", 30));
  if (!(transfer_s > 0) || transfer_s > 3600) {
    return absl::InvalidArgumentError(Cat("--kv-transfer-timeout must be in (0, 3600] seconds, got ",
                                          args.GetString("kv-transfer-timeout")));
  }
  flags.kv_transfer_timeout = absl::Seconds(transfer_s);
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
  const std::string bind = HostPort(flags.host, flags.port);
  builder.AddListeningPort(
      bind, MakeServerCredentials(flags.tls, ClientCertPolicy::kRequireAndVerify), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  StartedServer started;
  started.server = builder.BuildAndStart();
  if (started.server == nullptr || port == 0) {
    return absl::UnavailableError(Cat("cannot serve on ", bind, " (port in use?)"));
  }
  started.address = Cat(flags.advertise_host, ":", port);
  return started;
}

HttpHandler MetricsHandler(const metrics::Registry& registry) {
  return [&registry](HttpRequest request, std::shared_ptr<HttpResponse> response) {
    if (request.path != "/metrics") {
      response->Send(404, {{"Content-Type", "application/json"}},
                     R"({"error":{"message":"not found: only GET /metrics is served here",)"
                     R"("type":"not_found"}})");
      return;
    }
    if (request.method != "GET" && request.method != "HEAD") {
      response->Send(405, {{"Content-Type", "application/json"}, {"Allow", "GET"}},
                     R"({"error":{"message":"/metrics answers GET","type":"method_not_allowed"}})");
      return;
    }
    response->Send(200, {{"Content-Type", metrics::kContentType}},
                   request.method == "HEAD" ? "" : registry.TextExposition());
  };
}

v1::RegisterRequest MakeRegisterRequest(v1::WorkerRole role, const std::string& address,
                                        const Engine& engine, const KvLayout& layout,
                                        const std::vector<TransportKind>& transports) {
  v1::RegisterRequest request;
  request.set_role(role);
  request.set_address(address);
  request.set_model(engine.config().name);
  *request.mutable_kv_layout() = KvLayoutToProto(layout);
  for (TransportKind t : transports) request.add_transports(std::string(TransportKindName(t)));
  request.set_device_uuid(DeviceUuid(engine.runner().device()));
  *request.mutable_load() = WorkerLoadFromStats(engine.stats());
  return request;
}

int RunWorkerProcess(
    const char* name, v1::WorkerRole role, int argc, char** argv,
    const std::function<std::unique_ptr<WorkerService>(std::unique_ptr<Engine> engine,
                                                       const WorkerFlags& flags)>& make) {
  auto fail = [name](const absl::Status& status, int code) {
    std::fprintf(stderr, "%s: %s\n", name, std::string(status.message()).c_str());
    return code;
  };
  const std::vector<FlagSpec> specs = WorkerFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, 1, specs);
  if (!args.ok() || args->Has("help")) {
    std::fprintf(stderr, "%s%susage: %s [flags]\n\n%s",
                 args.ok() ? "" : std::string(args.status().message()).c_str(),
                 args.ok() ? "" : "\n\n", name, Args::Usage(specs).c_str());
    return 2;
  }
  absl::StatusOr<WorkerFlags> flags = WorkerFlagsFromArgs(*args);
  if (!flags.ok()) return fail(flags.status(), 2);
  BlockShutdownSignals();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::FromModelPath(flags->model_path, flags->engine);
  if (!engine.ok()) return fail(engine.status(), 1);
  if (role == v1::WORKER_ROLE_PREFILL) {
    if (absl::Status s = CheckTransportAvailable(flags->kv_transport,
                                                 (*engine)->runner().kv_on_device());
        !s.ok()) {
      return fail(s, 2);
    }
  }

  std::unique_ptr<WorkerService> worker = make(std::move(*engine), *flags);
  grpc::ServerBuilder builder;
  worker->RegisterServices(builder);
  absl::StatusOr<StartedServer> server = StartServer(builder, *flags);
  if (!server.ok()) return fail(server.status(), 1);
  // Nobody calls before the registration below tells the router where the worker is.
  worker->SetAddress(server->address);
  worker->Start();
  WorkerRegistration registration(
      flags->router,
      MakeRegisterRequest(role, server->address, worker->engine(), worker->layout(),
                          role == v1::WORKER_ROLE_PREFILL
                              ? std::vector<TransportKind>{flags->kv_transport}
                              : AvailableTransports(worker->engine().runner().kv_on_device())),
      [&worker] { return worker->CurrentLoad(); }, MakeChannelCredentials(flags->tls),
      /*tls=*/!flags->tls_files.empty());
  std::unique_ptr<HttpServer> metrics_server;
  std::string metrics_address = "off";
  if (flags->metrics_port >= 0 && worker->metrics() != nullptr) {
    HttpServerOptions http;
    http.host = flags->metrics_host;
    http.port = flags->metrics_port;
    // HTTPS without client certificates: a scraper verifies the worker by --tls-ca.
    http.tls_cert_file = flags->tls_files.cert;
    http.tls_key_file = flags->tls_files.key;
    absl::StatusOr<std::unique_ptr<HttpServer>> started =
        HttpServer::Start(http, MetricsHandler(*worker->metrics()));
    if (!started.ok()) return fail(started.status(), 1);
    metrics_server = std::move(*started);
    metrics_address = Cat(flags->tls_files.cert.empty() ? "http://" : "https://",
                          HostPort(flags->metrics_host, metrics_server->port()), "/metrics");
  }
  registration.Start();
  // NOTE: tests and scripts parse "metrics on http(s)://HOST:PORT/metrics".
  LOG(INFO) << name << ": serving on " << server->address << ", metrics on " << metrics_address
            << ", " << worker->engine().options().device << ", "
            << worker->engine().kv_cache().num_total_blocks() << " KV blocks, router "
            << flags->router;

  const int signal = WaitForShutdownSignal();
  LOG(INFO) << "signal " << signal << ": draining " << worker->num_requests() << " requests";
  registration.Drain();
  while (worker->num_requests() > 0) absl::SleepFor(absl::Milliseconds(50));
  registration.Stop();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (metrics_server != nullptr) metrics_server->Shutdown();
  worker->Stop();
  LOG(INFO) << name << ": drained, exiting";
  return 0;
}

}  // namespace tandem
