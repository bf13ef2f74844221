// `tandem bench serve`: a load generator against a router's public Generation API. Requests
// with exact prompt and output lengths arrive as a Poisson process (--rate) or keep a fixed
// number in flight (--concurrency); each is timed per token on the client. Prints TTFT, ITL,
// TPOT and E2E percentiles, throughput, errors and goodput; --json keeps everything,
// --plot draws it with bench/plot_serving.py.
//
// NOTE: the whole file is inside TANDEM_WITH_GRPC because cli/CMakeLists.txt compiles every
// bench/*.cc into `tandem`, with or without gRPC.
#ifdef TANDEM_WITH_GRPC

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/serving_metrics.h"
#include "bench/serving_workload.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/model_store.h"
#include "engine/tokenizer.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "service/api_key.h"
#include "service/convert.h"
#include "service/grpc_status.h"
#include "service/tls.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {
namespace {

using bench::DeltaArrival;
using bench::RequestRecord;
using bench::RequestSpec;
using bench::ServingWorkload;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr double kProgressIntervalS = 10.0;

struct LoadOptions {
  double rate = 0;            // requests/s, Poisson; 0: closed loop
  int concurrency = 0;        // most requests in flight; 0: no cap (open loop only)
  int64_t num_requests = -1;  // -1: until duration_s
  double duration_s = 0;      // 0: until num_requests; arrivals stop after it
  absl::Duration timeout = absl::Seconds(600);  // each request's deadline
  v1::PrefillMode mode = v1::PREFILL_MODE_UNSPECIFIED;
  std::string request_id_prefix;
  uint64_t seed = 1;
  bool progress = true;  // a status line on stderr every kProgressIntervalS
  std::string api_key;   // sent as "authorization: Bearer"; empty: none
};

bench::ServerFinal FromProto(const v1::GenerateFinal& f) {
  bench::ServerFinal out;
  out.finish_reason = FinishReasonText(f.finish_reason());
  out.prefill_location = PrefillLocationText(f.prefill_location());
  out.prompt_tokens = f.prompt_tokens();
  out.completion_tokens = f.completion_tokens();
  out.cached_prompt_tokens = f.cached_prompt_tokens();
  out.prefill_retries = f.prefill_retries();
  out.queued_s = f.timings().queued();
  out.prefill_s = f.timings().prefill();
  out.kv_transfer_s = f.timings().kv_transfer();
  out.first_token_s = f.timings().first_token();
  out.decode_s = f.timings().decode();
  out.total_s = f.timings().total();
  out.prefill_worker = f.prefill_worker();
  out.decode_worker = f.decode_worker();
  return out;
}

// Sends the requests of a workload and records them. Run() once per object, from one thread;
// Send() is thread-safe (Run() calls it from one thread per request in flight).
class LoadGenerator {
 public:
  LoadGenerator(v1::Generation::Stub& stub, const ServingWorkload& workload,
                const LoadOptions& options)
      : stub_(stub), workload_(workload), options_(options), start_(Clock::now()) {}

  // Runs the load to its end; the records in index order.
  std::vector<RequestRecord> Run() {
    start_ = Clock::now();
    std::thread progress([this] { ReportProgress(); });
    if (options_.rate > 0) {
      RunOpenLoop();
    } else {
      RunClosedLoop();
    }
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    progress.join();
    absl::MutexLock lock(&mu_);
    std::sort(records_.begin(), records_.end(),
              [](const RequestRecord& a, const RequestRecord& b) { return a.index < b.index; });
    return std::move(records_);
  }

  // One request, start to end, on the calling thread.
  RequestRecord Send(const RequestSpec& spec, double scheduled_s) {
    RequestRecord record;
    record.index = spec.index;
    record.prompt_tokens = static_cast<int>(spec.prompt.size());
    record.output_tokens_requested = spec.output_tokens;
    record.shared_prefix_tokens = spec.shared_prefix_tokens;
    record.scheduled_s = scheduled_s;

    v1::GenerateRequest request;
    request.mutable_token_ids()->mutable_ids()->Add(spec.prompt.begin(), spec.prompt.end());
    v1::SamplingParams* sampling = request.mutable_sampling();
    sampling->set_max_tokens(spec.output_tokens);
    sampling->set_temperature(0);
    sampling->set_ignore_eos(true);
    request.set_request_id(
        absl::StrCat(options_.request_id_prefix, spec.index < 0 ? "w" : "", std::abs(spec.index)));
    request.set_mode(options_.mode);

    grpc::ClientContext context;
    SetDeadline(context, options_.timeout);
    AddApiKeyMetadata(context, options_.api_key);
    record.send_s = Now();
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
        stub_.Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      const double t = Now();
      if (response.has_delta()) {
        if (response.delta().token_ids_size() > 0) {
          record.deltas.push_back(DeltaArrival{t, response.delta().token_ids_size()});
        }
      } else if (response.has_final()) {
        record.final = FromProto(response.final());
        record.end_s = t;
      }
    }
    const grpc::Status status = reader->Finish();
    if (!record.final) record.end_s = Now();
    record.status = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
    record.error = status.error_message();
    return record;
  }

  // Seconds since Run() began.
  double Now() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  void RunOpenLoop() {
    bench::PoissonArrivals arrivals(options_.rate, options_.seed);
    std::vector<std::thread> threads;
    for (int64_t i = 0; options_.num_requests < 0 || i < options_.num_requests; ++i) {
      const double t = arrivals.Next();
      if (options_.duration_s > 0 && t >= options_.duration_s) break;
      RequestSpec spec = workload_.Make(i);
      std::this_thread::sleep_until(
          start_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(t)));
      {
        absl::MutexLock lock(&mu_);
        if (options_.concurrency > 0) {
          mu_.Await(absl::Condition(this, &LoadGenerator::HasRoom));
        }
        ++in_flight_;
        ++sent_;
      }
      threads.emplace_back([this, spec = std::move(spec), t] { Finish(Send(spec, t)); });
    }
    for (std::thread& thread : threads) thread.join();
  }

  void RunClosedLoop() {
    std::atomic<int64_t> next{0};
    std::vector<std::thread> threads;
    for (int c = 0; c < options_.concurrency; ++c) {
      threads.emplace_back([this, &next] {
        while (true) {
          const int64_t i = next.fetch_add(1);
          if (options_.num_requests >= 0 && i >= options_.num_requests) return;
          if (options_.duration_s > 0 && Now() >= options_.duration_s) return;
          RequestSpec spec = workload_.Make(i);
          {
            absl::MutexLock lock(&mu_);
            ++in_flight_;
            ++sent_;
          }
          Finish(Send(spec, -1));
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  }

  bool HasRoom() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_flight_ < options_.concurrency;
  }

  void Finish(RequestRecord record) {
    absl::MutexLock lock(&mu_);
    failed_ += record.status != "OK";
    records_.push_back(std::move(record));
    --in_flight_;
  }

  void ReportProgress() {
    absl::MutexLock lock(&mu_);
    while (!mu_.AwaitWithTimeout(absl::Condition(&done_), absl::Seconds(kProgressIntervalS))) {
      if (!options_.progress) continue;
      std::fprintf(stderr, "[bench %5.0f s] %lld sent, %lld done (%lld failed), %d in flight\n",
                   Now(), static_cast<long long>(sent_), static_cast<long long>(records_.size()),
                   static_cast<long long>(failed_), in_flight_);
    }
  }

  v1::Generation::Stub& stub_;
  const ServingWorkload& workload_;
  const LoadOptions options_;
  Clock::time_point start_;

  mutable absl::Mutex mu_;
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t sent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t failed_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

std::string DescribeHealth(const v1::HealthResponse& h) {
  return absl::StrFormat("%s, mode %s, %d prefill + %d decode workers",
                         h.serving() ? "serving" : "not serving", h.mode(), h.prefill_workers(),
                         h.decode_workers());
}

absl::StatusOr<v1::HealthResponse> Health(v1::Generation::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(5));
  v1::HealthResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub.Health(&context, v1::HealthRequest(), &response), "Health"));
  return response;
}

// Ready: serving, or a decode worker is there for requests that ask for collocated prefill.
bool Ready(const v1::HealthResponse& h, v1::PrefillMode mode) {
  return h.serving() || (mode == v1::PREFILL_MODE_COLLOCATED && h.decode_workers() > 0);
}

// Polls Health until the router is ready, for up to `wait`; UNAVAILABLE saying why not.
absl::StatusOr<v1::HealthResponse> WaitReady(v1::Generation::Stub& stub, v1::PrefillMode mode,
                                             absl::Duration wait, const std::string& router) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    absl::StatusOr<v1::HealthResponse> health = Health(stub);
    if (health.ok() && Ready(*health, mode)) return health;
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(
          "router at ", router, " is not ready",
          wait > absl::ZeroDuration() ? absl::StrCat(" after ", absl::FormatDuration(wait)) : "",
          ": ", health.ok() ? DescribeHealth(*health) : health.status().ToString(),
          wait > absl::ZeroDuration() ? "" : " (--wait-ready S waits for it)"));
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
}

// A [min, max] range from --NAME or --NAME-min/--NAME-max.
absl::StatusOr<std::pair<int, int>> TokenRange(const Args& args, const std::string& name,
                                               int fallback) {
  ASSIGN_OR_RETURN(int64_t fixed, args.GetInt(name, fallback));
  if (args.Has(name) && (args.Has(name + "-min") || args.Has(name + "-max"))) {
    return absl::InvalidArgumentError(
        absl::StrCat("give --", name, " or --", name, "-min/--", name, "-max, not both"));
  }
  ASSIGN_OR_RETURN(int64_t lo, args.GetInt(name + "-min", fixed));
  ASSIGN_OR_RETURN(int64_t hi, args.GetInt(name + "-max", std::max(lo, fixed)));
  if (!args.Has(name + "-min")) lo = std::min(lo, hi);
  return std::make_pair(static_cast<int>(lo), static_cast<int>(hi));
}

// {"config", "summary", "requests": [every request, with its latencies]}.
absl::Status WriteJson(const std::string& path, const json& config, const json& summary,
                       const std::vector<RequestRecord>& records, const bench::Slo& slo) {
  json out;
  out["config"] = config;
  out["summary"] = summary;
  json requests = json::array();
  for (const RequestRecord& r : records) {
    requests.push_back(bench::RecordToJson(r, bench::Measure(r, slo)));
  }
  out["requests"] = std::move(requests);
  std::ofstream file(path);
  file << out.dump(1) << "\n";
  if (!file.good()) return absl::UnavailableError("cannot write " + path);
  std::fprintf(stderr, "json: %s\n", path.c_str());
  return absl::OkStatus();
}

// The router's model (null when ListModels fails, with a warning); INVALID_ARGUMENT when the
// longest request would not fit its context.
absl::StatusOr<json> CheckModel(v1::Generation::Stub& stub, const bench::WorkloadOptions& w,
                                const std::string& api_key) {
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(5));
  AddApiKeyMetadata(context, api_key);
  v1::ListModelsResponse models;
  const grpc::Status status = stub.ListModels(&context, v1::ListModelsRequest(), &models);
  if (!status.ok() || models.models_size() == 0) {
    std::fprintf(stderr, "warning: ListModels: %s\n",
                 status.ok() ? "no models" : status.error_message().c_str());
    return nullptr;
  }
  const v1::ModelInfo& m = models.models(0);
  const int longest = w.prompt_tokens_max + w.output_tokens_max;
  if (m.context_length() > 0 && longest > m.context_length()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the longest request (%d prompt + %d output tokens) exceeds the model's context of %d "
        "tokens",
        w.prompt_tokens_max, w.output_tokens_max, m.context_length()));
  }
  return json{
      {"id", m.id()}, {"context_length", m.context_length()}, {"fingerprint", m.fingerprint()}};
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs bench/plot_serving.py on `json_path` with $TANDEM_PYTHON (default python3).
absl::Status Plot(const std::string& json_path, const std::string& png_path) {
  const char* env = std::getenv("TANDEM_PYTHON");
  const std::string python = env != nullptr && *env != '\0' ? env : "python3";
  const std::string script = std::string(TANDEM_SOURCE_ROOT) + "/bench/plot_serving.py";
  const std::string command = absl::StrCat(ShellQuote(python), " ", ShellQuote(script), " --out ",
                                           ShellQuote(png_path), " ", ShellQuote(json_path));
  if (std::system((ShellQuote(python) + " -c 'import matplotlib' >/dev/null 2>&1").c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--plot: no plot drawn: ", python,
        " cannot import matplotlib. Install it (python3 -m pip install matplotlib, e.g. in a "
        "venv) or set TANDEM_PYTHON to a python that has it, then run: ",
        command));
  }
  if (std::system(command.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("--plot: this failed: ", command));
  }
  std::fprintf(stderr, "plot: %s\n", png_path.c_str());
  return absl::OkStatus();
}

std::vector<FlagSpec> ServeFlagSpecs() {
  return {
      {"router", false, "the router's address (default 127.0.0.1:50051)"},
      {"rate", false, "Poisson arrivals at this many requests/s (open loop)"},
      {"concurrency", false, "keep this many requests in flight (closed loop); with --rate: a cap"},
      {"num-requests", false, "requests to send (default 100 unless --duration)"},
      {"duration", false, "send for this many seconds (then wait for those in flight)"},
      {"prompt-tokens", false, "every prompt this many tokens (default 512)"},
      {"prompt-tokens-min", false, "prompt lengths uniform in [min, max]"},
      {"prompt-tokens-max", false, "(with --prompt-tokens-min)"},
      {"output-tokens", false, "every output this many tokens (default 128; ignore_eos)"},
      {"output-tokens-min", false, "output lengths uniform in [min, max]"},
      {"output-tokens-max", false, "(with --output-tokens-min)"},
      {"shared-prefix-ratio", false, "fraction of each prompt that is a prefix common to all (0)"},
      {"mode", false, "disaggregated|collocated|auto (default: the router's mode)"},
      {"seed", false,
       "seed of the prompts, lengths and arrivals (default 1); NOTE: the same seed resends the "
       "same prompts, which a server that saw them serves from its prefix cache"},
      {"slo-ttft-ms", false, "TTFT SLO for goodput"},
      {"slo-tpot-ms", false, "TPOT SLO for goodput"},
      {"warmup", false, "requests sent one at a time before measuring, not recorded (0)"},
      {"json", false, "write config, summary and every request to this file"},
      {"plot", false, "draw a PNG with bench/plot_serving.py (python3 + matplotlib)"},
      {"label", false, "a name for this run in the table, the JSON and plots"},
      {"timeout", false, "each request's deadline in seconds (default 600)"},
      {"wait-ready", false, "wait up to S seconds for the router to be serving (default 0)"},
      {"model", false, "default|PATH: the tokenizer that builds the prompts (default: default)"},
      {"quiet", true, "no progress lines on stderr"},
      {"api-key", false, "API key, sent as 'authorization: Bearer' (default: $TANDEM_API_KEY)"},
      {"tls-ca", false, "PEM CA of the router's certificate: connect with TLS"},
      {"help", true, "this list"},
  };
}

absl::Status BenchServe(const Args& args) {
  const std::string router = args.GetString("router", "127.0.0.1:50051");
  LoadOptions load;
  ASSIGN_OR_RETURN(load.rate, args.GetDouble("rate", 0));
  ASSIGN_OR_RETURN(int64_t concurrency, args.GetInt("concurrency", 0));
  ASSIGN_OR_RETURN(load.duration_s, args.GetDouble("duration", 0));
  ASSIGN_OR_RETURN(load.num_requests, args.GetInt("num-requests", args.Has("duration") ? -1 : 100));
  ASSIGN_OR_RETURN(double timeout_s, args.GetDouble("timeout", 600));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 1));
  ASSIGN_OR_RETURN(int64_t warmup, args.GetInt("warmup", 0));
  ASSIGN_OR_RETURN(double wait_ready_s, args.GetDouble("wait-ready", 0));
  ASSIGN_OR_RETURN(load.mode, PrefillModeFromText(args.GetString("mode")));
  load.api_key = ClientApiKey(args.GetString("api-key"));
  if (args.Has("rate") && !(load.rate > 0)) {
    return absl::InvalidArgumentError("--rate must be > 0");
  }
  if (args.Has("concurrency") && concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency must be >= 1");
  }
  if (!args.Has("rate") && !args.Has("concurrency") && load.num_requests != 0) {
    return absl::InvalidArgumentError("give --rate R (Poisson) or --concurrency C (closed loop)");
  }
  if (args.Has("duration") && !(load.duration_s > 0)) {
    return absl::InvalidArgumentError("--duration must be > 0");
  }
  if (load.num_requests < -1 || (load.num_requests < 0 && !(load.duration_s > 0))) {
    return absl::InvalidArgumentError("--num-requests must be >= 0");
  }
  if (!(timeout_s > 0)) return absl::InvalidArgumentError("--timeout must be > 0");
  load.concurrency = static_cast<int>(concurrency);
  load.timeout = absl::Seconds(timeout_s);
  load.seed = static_cast<uint64_t>(seed);
  load.progress = !args.Has("quiet");
  load.request_id_prefix = absl::StrFormat("bench-%d-", getpid());

  bench::WorkloadOptions workload_options;
  ASSIGN_OR_RETURN(std::tie(workload_options.prompt_tokens_min, workload_options.prompt_tokens_max),
                   TokenRange(args, "prompt-tokens", 512));
  ASSIGN_OR_RETURN(std::tie(workload_options.output_tokens_min, workload_options.output_tokens_max),
                   TokenRange(args, "output-tokens", 128));
  ASSIGN_OR_RETURN(workload_options.shared_prefix_ratio, args.GetDouble("shared-prefix-ratio", 0));
  workload_options.seed = load.seed;
  bench::Slo slo;
  if (args.Has("slo-ttft-ms")) {
    ASSIGN_OR_RETURN(slo.ttft_ms, args.GetDouble("slo-ttft-ms", 0));
  }
  if (args.Has("slo-tpot-ms")) {
    ASSIGN_OR_RETURN(slo.tpot_ms, args.GetDouble("slo-tpot-ms", 0));
  }
  if ((slo.ttft_ms && !(*slo.ttft_ms > 0)) || (slo.tpot_ms && !(*slo.tpot_ms > 0))) {
    return absl::InvalidArgumentError("--slo-ttft-ms and --slo-tpot-ms must be > 0");
  }

  // The prompts: ordinary text tokens of the model the router serves.
  ASSIGN_OR_RETURN(std::string model_path, ResolveModelPath(args.GetString("model", "default")));
  ASSIGN_OR_RETURN(LoadedModel model, LoadModel(model_path, /*with_weights=*/false));
  ASSIGN_OR_RETURN(ServingWorkload workload,
                   ServingWorkload::Create(*model.tokenizer, workload_options));
  model.tokenizer.reset();

  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   ClientChannelCredentials(args.GetString("tls-ca")));
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(router, credentials);
  std::unique_ptr<v1::Generation::Stub> stub = v1::Generation::NewStub(channel);
  ASSIGN_OR_RETURN(v1::HealthResponse health,
                   WaitReady(*stub, load.mode, absl::Seconds(wait_ready_s), router));
  std::fprintf(stderr, "router %s: %s\n", router.c_str(), DescribeHealth(health).c_str());
  if (load.num_requests == 0) return absl::OkStatus();  // --wait-ready alone

  ASSIGN_OR_RETURN(json model_info, CheckModel(*stub, workload_options, load.api_key));

  json config;
  config["label"] = args.GetString("label");
  config["router"] = router;
  config["router_mode"] = health.mode();
  config["mode"] = args.GetString("mode", health.mode());  // what the requests get
  config["rate"] = load.rate > 0 ? json(load.rate) : json(nullptr);
  config["concurrency"] = load.concurrency > 0 ? json(load.concurrency) : json(nullptr);
  config["num_requests"] = load.num_requests >= 0 ? json(load.num_requests) : json(nullptr);
  config["duration_s"] = load.duration_s > 0 ? json(load.duration_s) : json(nullptr);
  config["prompt_tokens_min"] = workload_options.prompt_tokens_min;
  config["prompt_tokens_max"] = workload_options.prompt_tokens_max;
  config["output_tokens_min"] = workload_options.output_tokens_min;
  config["output_tokens_max"] = workload_options.output_tokens_max;
  config["shared_prefix_ratio"] = workload_options.shared_prefix_ratio;
  config["seed"] = seed;
  config["warmup"] = warmup;
  config["timeout_s"] = timeout_s;
  config["slo_ttft_ms"] = slo.ttft_ms ? json(*slo.ttft_ms) : json(nullptr);
  config["slo_tpot_ms"] = slo.tpot_ms ? json(*slo.tpot_ms) : json(nullptr);
  config["tokenizer_model"] = model_path;
  config["model"] = model_info;
  config["workers"] = {{"prefill", health.prefill_workers()}, {"decode", health.decode_workers()}};
  config["date"] = absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone());

  LoadGenerator generator(*stub, workload, load);
  if (warmup > 0) {
    int failed = 0;
    std::string first_error;
    for (int64_t i = 1; i <= warmup; ++i) {
      const RequestRecord r = generator.Send(workload.Make(-i), -1);
      if (r.status != "OK" && failed++ == 0) first_error = r.status + ": " + r.error;
    }
    std::fprintf(stderr, "warmup: %lld requests, %d failed%s\n", static_cast<long long>(warmup),
                 failed, first_error.empty() ? "" : (" (" + first_error + ")").c_str());
  }

  std::vector<RequestRecord> records = generator.Run();
  double duration_s = 0;
  for (const RequestRecord& r : records) duration_s = std::max(duration_s, r.end_s);
  json summary = bench::Summarize(records, slo, duration_s);
  bench::PrintSummary(config, summary, stdout);
  std::fflush(stdout);
  for (const RequestRecord& r : records) {
    if (r.status != "OK") {
      std::fprintf(stderr, "first error (request %lld): %s: %s\n", static_cast<long long>(r.index),
                   r.status.c_str(), r.error.c_str());
      break;
    }
  }

  std::string json_path = args.GetString("json");
  if (json_path.empty() && args.Has("plot")) {
    const std::string png = args.GetString("plot");
    json_path = (absl::EndsWith(png, ".png") ? png.substr(0, png.size() - 4) : png) + ".json";
  }
  if (!json_path.empty()) RETURN_IF_ERROR(WriteJson(json_path, config, summary, records, slo));
  if (args.Has("plot")) RETURN_IF_ERROR(Plot(json_path, args.GetString("plot")));
  if (!records.empty() && summary["completed"].get<int64_t>() == 0) {
    return absl::UnavailableError("every request failed");
  }
  return absl::OkStatus();
}

}  // namespace

int RunBenchServe(int argc, char** argv, int begin) {
  const std::vector<FlagSpec> specs = ServeFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, begin, specs);
  if (!args.ok()) return Fail(args.status());
  if (args->Has("help") || !args->positional().empty()) {
    std::fprintf(args->Has("help") ? stdout : stderr,
                 "usage: tandem bench serve --router ADDR (--rate R | --concurrency C) "
                 "[flags]\n\n%s",
                 Args::Usage(specs).c_str());
    return args->Has("help") ? 0 : 2;
  }
  SetMinLogSeverity(LogSeverity::kWarning);
  absl::Status status = BenchServe(*args);
  return status.ok() ? 0 : Fail(status);
}

}  // namespace tandem::cli

#endif  // TANDEM_WITH_GRPC
