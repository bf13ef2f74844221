#include "tests/integration/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "service/grpc_status.h"
#include "tests/testing/test_env.h"

extern char** environ;

namespace tandem::integration {
namespace {

using tandem::v1::GenerateRequest;
using tandem::v1::GenerateResponse;
using tandem::v1::HealthRequest;
using tandem::v1::HealthResponse;

// A safety net so that a hung call fails its test instead of the whole binary's timeout.
constexpr absl::Duration kSafetyDeadline = absl::Seconds(180);

// $TANDEM_BIN_DIR when set (binaries carried to another machine), else the build's bin/.
std::string BinPath(const std::string& name) {
  const char* dir = std::getenv("TANDEM_BIN_DIR");
  return std::string(dir != nullptr && *dir != '\0' ? dir : TANDEM_BIN_DIR) + "/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// True when `s` is well-formed UTF-8 (no truncated or overlong sequence, no surrogate).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // truncated
    for (int k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

std::string Sanitize(std::string s) {
  for (char& c : s) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
  }
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Ports, directories, polling.

int PickFreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
  }
  ::close(fd);
  return port;
}

std::string MakeTestDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  std::string name = "tandem-it";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
    name = absl::StrCat(name, "-", Sanitize(info->test_suite_name()), ".", Sanitize(info->name()));
  }
  std::string templ = absl::StrCat(base, "/", name, "-XXXXXX");
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) return "";
  return std::string(buf.data());
}

bool PollUntil(absl::Duration timeout, const std::function<bool()>& done) {
  const absl::Time end = absl::Now() + timeout;
  while (true) {
    if (done()) return true;
    if (absl::Now() >= end) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

std::string StatusCodeName(grpc::StatusCode code) {
  return std::string(absl::StatusCodeToString(static_cast<absl::StatusCode>(code)));
}

// ---------------------------------------------------------------------------------------
// Process.

absl::StatusOr<std::unique_ptr<Process>> Process::Spawn(std::string name,
                                                        std::vector<std::string> argv,
                                                        std::string log_path,
                                                        std::vector<std::string> extra_env) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is built before fork: after it, only async-signal-safe calls.
  std::vector<char*> c_argv;
  for (std::string& a : argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  std::vector<std::string> env = std::move(extra_env);  // first match wins in getenv
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  std::vector<char*> c_env;
  for (std::string& e : env) c_env.push_back(e.data());
  c_env.push_back(nullptr);

  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0)
    return absl::InternalError(absl::StrCat("open ", log_path, ": ", strerror(errno)));
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    ::close(log_fd);
    return absl::InternalError("open /dev/null");
  }
  const std::string header = absl::StrCat("=== ", absl::StrJoin(argv, " "), "\n");
  (void)!::write(log_fd, header.data(), header.size());

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log_fd);
    ::close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  }
  if (pid == 0) {
    // NOTE: tied to the forking thread; Cluster users start processes from the main thread.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);
    sigset_t all;
    sigemptyset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    ::signal(SIGPIPE, SIG_DFL);  // as a shell would start it
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execve(c_argv[0], c_argv.data(), c_env.data());
    const char msg[] = "execve failed\n";
    (void)!::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  return std::unique_ptr<Process>(new Process(std::move(name), pid, std::move(log_path)));
}

Process::~Process() { Kill(); }

void Process::Signal(int sig) {
  if (Running()) ::kill(pid_, sig);
}

bool Process::Running() {
  if (exit_status_.has_value()) return false;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exit_status_ = status;
    return false;
  }
  return true;
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  if (PollUntil(timeout, [&] { return !Running(); })) return *exit_status_;
  return absl::DeadlineExceededError(
      absl::StrCat(name_, " (pid ", pid_, ") still running after ", absl::FormatDuration(timeout)));
}

void Process::Kill() {
  if (!Running()) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_status_ = status;
}

std::string Process::Log() const { return ReadFile(log_path_); }

std::string Process::LogTail(int max_lines) const {
  const std::string log = Log();
  std::vector<absl::string_view> lines = absl::StrSplit(log, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  const size_t begin = lines.size() > static_cast<size_t>(max_lines) ? lines.size() - max_lines : 0;
  std::string out;
  for (size_t i = begin; i < lines.size(); ++i) absl::StrAppend(&out, lines[i], "\n");
  return out;
}

// ---------------------------------------------------------------------------------------
// Generate.

std::string GenerateResult::Describe() const {
  std::string s;
  if (status.ok()) {
    s = "OK";
  } else {
    s = absl::StrCat(StatusCodeName(status.error_code()), ": ", status.error_message());
  }
  absl::StrAppend(&s, " (", token_ids.size(), " tokens in ", num_deltas, " deltas, ",
                  absl::FormatDuration(elapsed));
  if (final.has_value()) {
    const tandem::v1::GenerateFinal& f = *final;
    absl::StrAppend(&s, ", final{finish=", tandem::v1::FinishReason_Name(f.finish_reason()),
                    " prompt=", f.prompt_tokens(), " completion=", f.completion_tokens(),
                    " cached=", f.cached_prompt_tokens());
    absl::StrAppend(&s, " location=", tandem::v1::PrefillLocation_Name(f.prefill_location()),
                    " P=", f.prefill_worker(), " D=", f.decode_worker(),
                    " retries=", f.prefill_retries(), " id=", f.request_id(), "}");
  } else {
    absl::StrAppend(&s, ", no final");
  }
  absl::StrAppend(&s, ")");
  return s;
}

GenerateResult RunGenerate(tandem::v1::Generation::Stub& stub, const GenerateRequest& request,
                           const GenerateOptions& options) {
  GenerateResult result;
  grpc::ClientContext context;
  SetDeadline(context, options.deadline.value_or(kSafetyDeadline));
  for (const auto& [key, value] : options.metadata) context.AddMetadata(key, value);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<GenerateResponse>> reader = stub.Generate(&context, request);
  GenerateResponse response;
  bool cancelled = false;
  while (reader->Read(&response)) {
    if (result.final.has_value()) ++result.responses_after_final;
    if (response.has_delta()) {
      ++result.num_deltas;
      if (!IsValidUtf8(response.delta().text())) ++result.invalid_utf8_deltas;
      result.text += response.delta().text();
      result.token_ids.insert(result.token_ids.end(), response.delta().token_ids().begin(),
                              response.delta().token_ids().end());
    } else if (response.has_final()) {
      result.final = response.final();
    }
    if (options.on_response) options.on_response(result);
    if (options.cancel_after_tokens >= 0 && !cancelled &&
        static_cast<int>(result.token_ids.size()) >= options.cancel_after_tokens) {
      context.TryCancel();
      cancelled = true;
    }
  }
  result.status = reader->Finish();
  result.elapsed = absl::Now() - start;
  return result;
}

namespace {

GenerateRequest Greedy(int max_tokens, bool ignore_eos) {
  GenerateRequest r;
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_ignore_eos(ignore_eos);
  return r;
}

}  // namespace

GenerateRequest GreedyTokens(const std::vector<int32_t>& ids, int max_tokens, bool ignore_eos) {
  GenerateRequest r = Greedy(max_tokens, ignore_eos);
  for (int32_t id : ids) r.mutable_token_ids()->add_ids(id);
  return r;
}

GenerateRequest GreedyPrompt(const std::string& prompt, int max_tokens, bool ignore_eos) {
  GenerateRequest r = Greedy(max_tokens, ignore_eos);
  r.set_prompt(prompt);
  return r;
}

GenerateRequest GreedyChat(const std::string& user_message, int max_tokens, bool ignore_eos) {
  GenerateRequest r = Greedy(max_tokens, ignore_eos);
  tandem::v1::ChatMessage* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content(user_message);
  return r;
}

// ---------------------------------------------------------------------------------------
// Cluster.

ClusterOptions WithWorkers(int num_prefill, int num_decode, const std::string& mode) {
  ClusterOptions options;
  options.mode = mode;
  options.num_prefill = num_prefill;
  options.num_decode = num_decode;
  return options;
}

GenerateOptions WithDeadline(absl::Duration deadline) {
  GenerateOptions options;
  options.deadline = deadline;
  return options;
}

Cluster::Cluster(ClusterOptions options) : options_(std::move(options)) {
  if (options_.model.empty()) options_.model = testing::DefaultModelPath();
  dir_ = MakeTestDir();
}

Cluster::~Cluster() {
  const bool failed = ::testing::Test::HasFailure();
  // Kill first so that the logs are complete when printed.
  for (auto& w : workers_) w->process->Kill();
  if (router_ != nullptr) router_->Kill();
  for (auto& r : old_routers_) r->Kill();
  if (failed) {
    std::fprintf(stderr, "\n===== cluster logs (kept in %s) =====\n%s", dir_.c_str(),
                 LogTails().c_str());
  } else if (!dir_.empty() && std::getenv("TANDEM_IT_KEEP_LOGS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string Cluster::LogTails(int max_lines) const {
  std::string out;
  auto add = [&](const Process& p) {
    absl::StrAppend(&out, "----- ", p.name(), " (pid ", p.pid(), ", ", p.log_path(), ") -----\n",
                    p.LogTail(max_lines));
  };
  for (const auto& r : old_routers_) add(*r);
  if (router_ != nullptr) add(*router_);
  for (const auto& w : workers_) add(*w->process);
  return out;
}

std::shared_ptr<grpc::Channel> Cluster::ChannelTo(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = channels_.find(address);
  if (it != channels_.end()) return it->second;
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // NOTE: gRPC also takes this as the connect timeout, TLS handshake included; with TLS a
  // short one makes every handshake after a refused connect time out: keep the default.
  if (options_.channel_credentials == nullptr) {
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  }
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto channel = grpc::CreateCustomChannel(address,
                                           options_.channel_credentials != nullptr
                                               ? options_.channel_credentials
                                               : grpc::InsecureChannelCredentials(),
                                           args);
  channels_[address] = channel;
  return channel;
}

absl::Status Cluster::SpawnRouter(const std::string& name) {
  std::vector<std::string> argv = {BinPath("tandem-router"),
                                   "--port",
                                   std::to_string(router_port_),
                                   "--host",
                                   "127.0.0.1",
                                   "--model",
                                   options_.model,
                                   "--mode",
                                   options_.mode,
                                   "--heartbeat-interval",
                                   absl::StrCat(options_.heartbeat_interval_s)};
  // Any free HTTP port unless the test names one: 8000 may be taken (a local cluster, or
  // another test run) and these tests speak gRPC.
  if (std::find(options_.router_flags.begin(), options_.router_flags.end(), "--http-port") ==
      options_.router_flags.end()) {
    argv.insert(argv.end(), {"--http-port", "0"});
  }
  argv.insert(argv.end(), options_.router_flags.begin(), options_.router_flags.end());
  auto process = Process::Spawn(name, std::move(argv), absl::StrCat(dir_, "/", name, ".log"));
  if (!process.ok()) return process.status();
  if (router_ != nullptr) old_routers_.push_back(std::move(router_));
  router_ = *std::move(process);
  if (generation_ == nullptr) {
    router_channel_ = ChannelTo(router_address());
    generation_ = tandem::v1::Generation::NewStub(router_channel_);
    registry_ = tandem::v1::Registry::NewStub(router_channel_);
  }
  bool up = false;
  PollUntil(options_.start_timeout, [&] {
    if (!router_->Running()) return true;
    up = Health(absl::Seconds(1)).ok();
    return up;
  });
  if (up) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "the router did not answer Health on ", router_address(),
      router_->Running() ? " in time" : " (it exited)", "; log:\n", router_->LogTail()));
}

absl::Status Cluster::StartRouter() {
  if (dir_.empty()) return absl::InternalError("could not create the test directory");
  absl::Status last = absl::UnknownError("router not started");
  // The port is picked before the router binds it: retry around a clash.
  for (int attempt = 0; attempt < 3; ++attempt) {
    router_port_ = PickFreePort();
    generation_.reset();
    last = SpawnRouter(absl::StrCat("router-", router_starts_++));
    if (last.ok() || router_->Running()) break;
  }
  return last;
}

absl::Status Cluster::RestartRouter() {
  if (router_ == nullptr) return absl::FailedPreconditionError("no router");
  router_->Kill();
  return SpawnRouter(absl::StrCat("router-", router_starts_++));
}

absl::Status Cluster::Start() {
  absl::Status s = StartRouter();
  if (!s.ok()) return s;
  for (int i = 0; i < options_.num_prefill; ++i) {
    auto w = AddPrefill();
    if (!w.ok()) return w.status();
  }
  for (int i = 0; i < options_.num_decode; ++i) {
    auto w = AddDecode();
    if (!w.ok()) return w.status();
  }
  return WaitForWorkers(options_.num_prefill, options_.num_decode, options_.start_timeout);
}

absl::StatusOr<Worker*> Cluster::AddPrefill(const WorkerOptions& options) {
  return AddWorker("prefill", options);
}

absl::StatusOr<Worker*> Cluster::AddDecode(const WorkerOptions& options) {
  return AddWorker("decode", options);
}

absl::StatusOr<Worker*> Cluster::AddWorker(const std::string& role, const WorkerOptions& options) {
  if (router_ == nullptr) return absl::FailedPreconditionError("start the router first");
  // Workers pick their own port (--port 0): the new address in Health is the new worker's,
  // so workers are started one at a time.
  std::set<std::string> known;
  for (const auto& w : workers_) {
    if (!w->address.empty()) known.insert(w->address);
  }
  if (auto h = Health(); h.ok()) {
    for (const auto& ws : h->workers()) known.insert(ws.address());
  }
  const int index = next_worker_index_[role == "prefill" ? 0 : 1]++;
  const std::string name = absl::StrCat(role == "prefill" ? "P" : "D", index);
  std::vector<std::string> argv = {BinPath(role == "prefill" ? "tandem-prefill" : "tandem-decode"),
                                   "--router",
                                   router_address(),
                                   "--model",
                                   options.model.empty() ? options_.model : options.model,
                                   "--host",
                                   "127.0.0.1",
                                   "--port",
                                   "0",
                                   "--threads",
                                   "1",
                                   "--kv-cache-mb",
                                   std::to_string(options_.kv_cache_mb),
                                   "--device",
                                   testing::TestDevice()};
  if (role == "prefill") argv.insert(argv.end(), {"--kv-transport", testing::TestKvTransport()});
  argv.insert(argv.end(), options.flags.begin(), options.flags.end());
  auto process = Process::Spawn(name, std::move(argv), absl::StrCat(dir_, "/", name, ".log"));
  if (!process.ok()) return process.status();
  auto worker = std::make_unique<Worker>();
  worker->role = role;
  worker->process = *std::move(process);
  Worker* w = worker.get();
  workers_.push_back(std::move(worker));
  if (!options.wait_registered) return w;

  const bool registered = PollUntil(options_.start_timeout, [&] {
    if (!w->process->Running()) return true;
    auto h = Health(absl::Seconds(1));
    if (!h.ok()) return false;
    for (const auto& ws : h->workers()) {
      if (ws.role() == role && !known.contains(ws.address())) {
        w->address = ws.address();
        w->id = ws.id();
        return true;
      }
    }
    return false;
  });
  if (!registered || w->address.empty()) {
    return absl::UnavailableError(absl::StrCat(name, " did not register with the router",
                                               w->process->Running() ? " in time" : " (it exited)",
                                               "; log:\n", w->process->LogTail()));
  }
  return w;
}

absl::Status Cluster::WaitForWorkers(int prefill, int decode, absl::Duration timeout) {
  HealthResponse last;
  const bool ok = PollUntil(timeout, [&] {
    auto h = Health(absl::Seconds(1));
    if (!h.ok()) return false;
    last = *h;
    return h->prefill_workers() == prefill && h->decode_workers() == decode;
  });
  if (ok) {
    for (auto& w : workers_) {
      for (const auto& ws : last.workers()) {
        if (ws.address() == w->address && ws.role() == w->role) w->id = ws.id();
      }
    }
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("waiting for ", prefill, " prefill and ", decode,
                   " decode workers; last Health: ", last.ShortDebugString()));
}

std::vector<Worker*> Cluster::prefill_workers() {
  std::vector<Worker*> out;
  for (auto& w : workers_) {
    if (w->role == "prefill") out.push_back(w.get());
  }
  return out;
}

std::vector<Worker*> Cluster::decode_workers() {
  std::vector<Worker*> out;
  for (auto& w : workers_) {
    if (w->role == "decode") out.push_back(w.get());
  }
  return out;
}

GenerateResult Cluster::Generate(const GenerateRequest& request, const GenerateOptions& options) {
  return RunGenerate(*generation_, request, options);
}

absl::StatusOr<HealthResponse> Cluster::Health(absl::Duration timeout) {
  if (generation_ == nullptr) return absl::FailedPreconditionError("no router");
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  HealthResponse response;
  grpc::Status status = generation_->Health(&context, HealthRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status, "Health");
  return response;
}

absl::StatusOr<tandem::v1::WorkerLoad> Cluster::Load(const Worker& worker, absl::Duration timeout) {
  if (worker.address.empty()) return absl::FailedPreconditionError("worker not registered");
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  tandem::v1::WorkerLoad load;
  grpc::Status status;
  if (worker.role == "decode") {
    auto stub = tandem::v1::Decode::NewStub(ChannelTo(worker.address));
    status = stub->Load(&context, tandem::v1::LoadRequest(), &load);
  } else {
    auto stub = tandem::v1::Prefill::NewStub(ChannelTo(worker.address));
    status = stub->Load(&context, tandem::v1::LoadRequest(), &load);
  }
  if (!status.ok()) return FromGrpcStatus(status, absl::StrCat(worker.role, ".Load"));
  return load;
}

absl::Status Cluster::WaitForIdle(absl::Duration timeout) {
  std::string busy;
  const bool idle = PollUntil(timeout, [&] {
    busy.clear();
    for (auto& w : workers_) {
      if (w->address.empty() || !w->process->Running()) continue;
      auto load = Load(*w, absl::Seconds(1));
      if (!load.ok()) {
        absl::StrAppend(&busy, w->process->name(), ": ", load.status().ToString(), "; ");
        continue;
      }
      if (load->free_kv_blocks() != load->total_kv_blocks() || load->running_sequences() != 0 ||
          load->waiting_sequences() != 0 || load->queued_prompt_tokens() != 0) {
        absl::StrAppend(&busy, w->process->name(), " (", w->address, "): {",
                        load->ShortDebugString(), "}; ");
      }
    }
    return busy.empty();
  });
  if (idle) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("workers not idle after ", absl::FormatDuration(timeout), ": ", busy));
}

std::optional<tandem::v1::WorkerStatus> Cluster::StatusOf(const Worker& worker) {
  auto h = Health();
  if (!h.ok()) return std::nullopt;
  for (const auto& ws : h->workers()) {
    if (ws.address() == worker.address && ws.role() == worker.role) return ws;
  }
  return std::nullopt;
}

}  // namespace tandem::integration
