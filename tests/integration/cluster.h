// The integration harness: real tandem-router, tandem-prefill and tandem-decode processes on
// loopback, each logging to its own file in a per-test directory, and a synchronous gRPC
// client for the public API and the workers' Load RPCs.
//
// A Cluster kills every process it started when it is destroyed (and each child also gets
// SIGKILL if the test process dies: PR_SET_PDEATHSIG), so an assertion failure never leaves
// orphans. When the current test has failed, the destructor prints the tail of every log.
//
// Thread contract: start, stop and signal processes from the test's main thread only (the
// death signal is tied to the thread that forked). Generate, Health and Load may be called
// from any thread.
#ifndef TANDEM_TESTS_INTEGRATION_CLUSTER_H_
#define TANDEM_TESTS_INTEGRATION_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "tandem/v1/generation.grpc.pb.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::integration {

// A free TCP port on 127.0.0.1 (bound once and released: another process may take it first,
// which the caller sees as a failed start).
int PickFreePort();

// A fresh directory under $TMPDIR (or /tmp) named after the running test.
std::string MakeTestDir();

// One child process, stdout and stderr appended to `log_path`.
class Process {
 public:
  // Forks and execs argv[0] (a path) with the parent's environment plus `extra_env`
  // ("KEY=VALUE").
  static absl::StatusOr<std::unique_ptr<Process>> Spawn(std::string name,
                                                        std::vector<std::string> argv,
                                                        std::string log_path,
                                                        std::vector<std::string> extra_env = {});
  // SIGKILL and reap if still running.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  const std::string& name() const { return name_; }
  const std::string& log_path() const { return log_path_; }
  pid_t pid() const { return pid_; }

  void Signal(int sig);
  // True until the process has exited and been reaped.
  bool Running();
  // Waits for the exit; the wait status (WIFEXITED...), or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  // SIGKILL and reap.
  void Kill();
  // The last `max_lines` lines of the log.
  std::string LogTail(int max_lines = 40) const;
  std::string Log() const;

 private:
  Process(std::string name, pid_t pid, std::string log_path)
      : name_(std::move(name)), pid_(pid), log_path_(std::move(log_path)) {}
  std::string name_;
  pid_t pid_;
  std::string log_path_;
  std::optional<int> exit_status_;
};

// What one Generate call produced.
struct GenerateResult {
  grpc::Status status;
  std::vector<int32_t> token_ids;  // every delta's ids, in order
  std::string text;                // every delta's text
  std::optional<tandem::v1::GenerateFinal> final;
  int num_deltas = 0;
  int responses_after_final = 0;  // must stay 0
  int invalid_utf8_deltas = 0;    // deltas whose text is not whole UTF-8: must stay 0
  absl::Duration elapsed;         // from the call to its status
  bool ok() const { return status.ok(); }
  // "OK tokens=N finish=..." or "CODE: message", for failure messages.
  std::string Describe() const;
};

struct GenerateOptions {
  // The call's deadline; unset: a generous safety deadline so a hung call fails the test.
  std::optional<absl::Duration> deadline;
  // >= 0: TryCancel once at least this many tokens arrived.
  int cancel_after_tokens = -1;
  // Called after each response with what arrived so far (on the calling thread).
  std::function<void(const GenerateResult& so_far)> on_response;
  // Added to the call's metadata, e.g. {"authorization", "Bearer KEY"}.
  std::vector<std::pair<std::string, std::string>> metadata;
};

std::string StatusCodeName(grpc::StatusCode code);
GenerateOptions WithDeadline(absl::Duration deadline);

// Request builders; every one greedy (temperature 0).
tandem::v1::GenerateRequest GreedyTokens(const std::vector<int32_t>& ids, int max_tokens,
                                         bool ignore_eos = false);
tandem::v1::GenerateRequest GreedyPrompt(const std::string& prompt, int max_tokens,
                                         bool ignore_eos = false);
tandem::v1::GenerateRequest GreedyChat(const std::string& user_message, int max_tokens,
                                       bool ignore_eos = false);

struct ClusterOptions {
  std::string mode = "disaggregated";
  int num_prefill = 1;
  int num_decode = 1;
  std::string model;  // empty: testing::DefaultModelPath()
  double heartbeat_interval_s = 0.2;
  int kv_cache_mb = 64;
  std::vector<std::string> router_flags;  // appended to the router's command line
  // The harness's own channels (router and workers); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
  absl::Duration start_timeout = absl::Seconds(60);
};

// `num_prefill` prefill and `num_decode` decode workers behind a router in `mode`.
ClusterOptions WithWorkers(int num_prefill, int num_decode,
                           const std::string& mode = "disaggregated");

struct WorkerOptions {
  std::string model;  // empty: the cluster's model
  std::vector<std::string> flags;
  // Wait until the router lists it (and learn its address); false for a worker the router
  // is expected to refuse.
  bool wait_registered = true;
};

// A worker the cluster started: its process and, once registered, where the router saw it.
struct Worker {
  std::string role;  // "prefill" | "decode"
  std::unique_ptr<Process> process;
  std::string address;  // from Health, empty until registered
  std::string id;       // the router's worker id
  // True when a GenerateFinal's prefill_worker/decode_worker names this worker (by id or
  // address).
  bool Is(const std::string& name) const {
    return !name.empty() && (name == address || name == id);
  }
};

class Cluster {
 public:
  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts the router, then every worker in turn, each waited for until the router lists it.
  absl::Status Start();
  absl::Status StartRouter();
  // Kills the router (SIGKILL) and starts a new one on the same port; the workers are left
  // to register again (see WaitForWorkers).
  absl::Status RestartRouter();
  absl::StatusOr<Worker*> AddPrefill(const WorkerOptions& options = {});
  absl::StatusOr<Worker*> AddDecode(const WorkerOptions& options = {});

  // Polls Health until exactly this many non-draining workers of each role are registered,
  // then refreshes each worker's id (a restarted router gives new ids).
  absl::Status WaitForWorkers(int prefill, int decode, absl::Duration timeout = absl::Seconds(60));

  std::string router_address() const { return "127.0.0.1:" + std::to_string(router_port_); }
  const std::string& dir() const { return dir_; }
  const std::string& model() const { return options_.model; }
  Process& router() { return *router_; }
  std::vector<Worker*> prefill_workers();
  std::vector<Worker*> decode_workers();

  tandem::v1::Generation::Stub& generation() { return *generation_; }
  tandem::v1::Registry::Stub& registry() { return *registry_; }

  GenerateResult Generate(const tandem::v1::GenerateRequest& request,
                          const GenerateOptions& options = {});
  absl::StatusOr<tandem::v1::HealthResponse> Health(absl::Duration timeout = absl::Seconds(5));
  // Decode.Load or Prefill.Load on the worker itself (by its address).
  absl::StatusOr<tandem::v1::WorkerLoad> Load(const Worker& worker,
                                              absl::Duration timeout = absl::Seconds(5));
  // Polls every running, registered worker's Load until each is idle: every KV block free
  // (cached prefix blocks count as free), nothing running, waiting or queued. The error
  // lists the loads that never got there (leaked blocks or stuck requests).
  absl::Status WaitForIdle(absl::Duration timeout = absl::Seconds(5));
  // The router's status line for `worker`, if it lists it.
  std::optional<tandem::v1::WorkerStatus> StatusOf(const Worker& worker);

  // A channel to any address, with fast reconnects (cached per address).
  std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address);

  // Every log's tail, for failure messages.
  std::string LogTails(int max_lines = 40) const;

 private:
  absl::StatusOr<Worker*> AddWorker(const std::string& role, const WorkerOptions& options);
  // Spawns the router on router_port_ and waits for its Health.
  absl::Status SpawnRouter(const std::string& name);

  ClusterOptions options_;
  std::string dir_;
  int router_port_ = 0;
  std::unique_ptr<Process> router_;
  std::vector<std::unique_ptr<Process>> old_routers_;  // restarted away, kept for their logs
  std::vector<std::unique_ptr<Worker>> workers_;
  int next_worker_index_[2] = {0, 0};
  int router_starts_ = 0;
  std::shared_ptr<grpc::Channel> router_channel_;
  std::unique_ptr<tandem::v1::Generation::Stub> generation_;
  std::unique_ptr<tandem::v1::Registry::Stub> registry_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

// Generate on any stub (a standalone helper for tests that hold their own channel).
GenerateResult RunGenerate(tandem::v1::Generation::Stub& stub,
                           const tandem::v1::GenerateRequest& request,
                           const GenerateOptions& options = {});

// Polls `done` every 50 ms until it returns true or `timeout` passes; true when it did.
bool PollUntil(absl::Duration timeout, const std::function<bool()>& done);

}  // namespace tandem::integration

#endif  // TANDEM_TESTS_INTEGRATION_CLUSTER_H_
