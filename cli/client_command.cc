// `tandem client`: one request to a tandem router over the public gRPC API. Generate streams
// text to stdout as it arrives and prints the final message (finish reason, token counts,
// timings, workers) to stderr; --health and --list-models print the router's view.
// --json prints one JSON object to stdout instead. Ctrl-C cancels the call.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "service/api_key.h"
#include "service/convert.h"
#include "service/grpc_status.h"
#include "service/tls.h"
#include "tandem/v1/generation.grpc.pb.h"

namespace tandem::cli {
namespace {

using Json = nlohmann::json;

constexpr char kDefaultRouter[] = "127.0.0.1:50051";
constexpr int64_t kDefaultMaxTokens = 128;
// Health and ListModels answer at once; a router that does not is as good as gone.
constexpr absl::Duration kDefaultInfoTimeout = absl::Seconds(10);
// The message of the CANCELLED status a Ctrl-C turns into (the router may answer CANCELLED too).
constexpr char kCancelledBySignal[] = "cancelled by a signal";

std::vector<FlagSpec> ClientFlagSpecs() {
  return {
      {"router", false, absl::StrFormat("router address (default %s)", kDefaultRouter)},
      {"prompt", false, "raw prompt text, tokenized as is"},
      {"chat", false, "a user message, rendered with the model's chat template"},
      {"system", false, "system message for --chat"},
      {"token-ids", false, "an already tokenized prompt: 1,2,3"},
      {"max-tokens", false, absl::StrFormat("tokens to generate (default %d)", kDefaultMaxTokens)},
      {"temperature", false, "sampling temperature; 0 is greedy (router default 1)"},
      {"top-p", false, "nucleus sampling mass in (0, 1] (router default 1)"},
      {"top-k", false, "keep the k most likely tokens; 0 keeps all (router default 0)"},
      {"seed", false, "sampling seed (same seed, same output)"},
      {"stop", false, "stop string (repeatable)"},
      {"ignore-eos", true, "keep generating past the end-of-generation token"},
      {"mode", false, "disaggregated|collocated|auto (default: the router's mode)"},
      {"request-id", false, "client request id, echoed back"},
      {"timeout", false, "deadline for the call in seconds (default: none; 10 for --health)"},
      {"model", false, "model id (default: the router's only model)"},
      {"json", true, "print one JSON object to stdout instead of text and a summary"},
      {"health", true, "print the router's health and its workers"},
      {"list-models", true, "print the models the router serves"},
      {"api-key", false, "API key, sent as 'authorization: Bearer' (default: $TANDEM_API_KEY)"},
      {"tls-ca", false, "PEM CA of the router's certificate: connect with TLS"},
      {"help", true, "this text"},
  };
}

// "tandem: <CODE>: <message>" to stderr; exit code 2 for INVALID_ARGUMENT, 1 otherwise.
int FailWithCode(const absl::Status& status) {
  std::fprintf(stderr, "tandem: %s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

// Cancels the running call when SIGINT or SIGTERM arrives. The constructor blocks both signals
// before gRPC starts its threads (which inherit the mask), so that the one watcher thread takes
// them with sigtimedwait: TryCancel is not async-signal-safe and must not run in a handler.
// A signal that comes before Arm stays pending and cancels the call as soon as it is armed.
class SignalCanceller {
 public:
  SignalCanceller() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals_, &old_mask_);
  }
  ~SignalCanceller() {
    Disarm();
    // NOTE: a signal that arrived after the call finished is delivered here, with its
    // default action, as if no call had been running.
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SignalCanceller(const SignalCanceller&) = delete;
  SignalCanceller& operator=(const SignalCanceller&) = delete;

  // Watches for the signals until Disarm; `context` must outlive that.
  void Arm(grpc::ClientContext* context) {
    Disarm();
    done_.store(false);
    watcher_ = std::thread([this, context] { Watch(context); });
  }
  // Call after the call has finished.
  void Disarm() {
    if (!watcher_.joinable()) return;
    done_.store(true);
    watcher_.join();
  }
  bool fired() const { return fired_.load(); }

 private:
  void Watch(grpc::ClientContext* context) {
    const timespec tick = {0, 50'000'000};  // how soon Disarm returns
    while (!done_.load()) {
      const int sig = sigtimedwait(&signals_, nullptr, &tick);
      if (sig == SIGINT || sig == SIGTERM) {
        fired_.store(true);
        context->TryCancel();
        return;
      }
    }
  }

  sigset_t signals_;
  sigset_t old_mask_;
  std::atomic<bool> done_{false};
  std::atomic<bool> fired_{false};
  std::thread watcher_;
};

absl::Status CallError(const grpc::Status& status, const std::string& router) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // The router may not be there at all: say which address was tried.
    return FromGrpcStatus(status, Cat("router ", router));
  }
  return FromGrpcStatus(status);
}

absl::StatusOr<absl::Duration> TimeoutFromArgs(const Args& args, absl::Duration fallback) {
  if (!args.Has("timeout")) return fallback;
  ASSIGN_OR_RETURN(double seconds, args.GetDouble("timeout", 0));
  if (!(seconds > 0) || seconds > 1e7) {
    return absl::InvalidArgumentError("--timeout must be a positive number of seconds");
  }
  return absl::Seconds(seconds);
}

absl::StatusOr<std::vector<int32_t>> ParseTokenIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--token-ids: '%s' is not a token id", std::string(part)));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--token-ids: no token ids");
  return ids;
}

absl::StatusOr<int32_t> Int32Flag(const Args& args, const char* name, int64_t fallback,
                                  int64_t min) {
  ASSIGN_OR_RETURN(int64_t value, args.GetInt(name, fallback));
  if (value < min || value > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat("--%s: %d is out of range", name, value));
  }
  return static_cast<int32_t>(value);
}

absl::StatusOr<v1::GenerateRequest> RequestFromArgs(const Args& args) {
  v1::GenerateRequest request;
  const int inputs = args.Has("prompt") + args.Has("chat") + args.Has("token-ids");
  if (inputs != 1) {
    return absl::InvalidArgumentError("give exactly one of --prompt, --chat and --token-ids");
  }
  if (args.Has("system") && !args.Has("chat")) {
    return absl::InvalidArgumentError("--system goes with --chat");
  }
  if (args.Has("prompt")) {
    request.set_prompt(args.GetString("prompt"));
  } else if (args.Has("chat")) {
    v1::ChatMessages* chat = request.mutable_chat();
    if (args.Has("system")) {
      v1::ChatMessage* system = chat->add_messages();
      system->set_role("system");
      system->set_content(args.GetString("system"));
    }
    v1::ChatMessage* user = chat->add_messages();
    user->set_role("user");
    user->set_content(args.GetString("chat"));
  } else {
    ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseTokenIds(args.GetString("token-ids")));
    request.mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  }

  v1::SamplingParams* sampling = request.mutable_sampling();
  ASSIGN_OR_RETURN(int32_t max_tokens, Int32Flag(args, "max-tokens", kDefaultMaxTokens, 1));
  sampling->set_max_tokens(max_tokens);
  if (args.Has("temperature")) {
    ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0));
    sampling->set_temperature(static_cast<float>(temperature));
  }
  if (args.Has("top-p")) {
    ASSIGN_OR_RETURN(double top_p, args.GetDouble("top-p", 0));
    sampling->set_top_p(static_cast<float>(top_p));
  }
  if (args.Has("top-k")) {
    ASSIGN_OR_RETURN(int32_t top_k, Int32Flag(args, "top-k", 0, 0));
    sampling->set_top_k(top_k);
  }
  if (args.Has("seed")) {
    ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
    if (seed < 0) return absl::InvalidArgumentError("--seed must not be negative");
    sampling->set_seed(static_cast<uint64_t>(seed));
  }
  for (const std::string& stop : args.GetAll("stop")) sampling->add_stop(stop);
  sampling->set_ignore_eos(args.Has("ignore-eos"));

  ASSIGN_OR_RETURN(v1::PrefillMode mode, PrefillModeFromText(args.GetString("mode")));
  request.set_mode(mode);
  request.set_model(args.GetString("model"));
  request.set_request_id(args.GetString("request-id"));
  return request;
}

// Decode speed: tokens after the first over the time after the first token.
double DecodeTokensPerSecond(const v1::GenerateFinal& final) {
  const double decode_s = final.timings().decode();
  if (final.completion_tokens() <= 1 || decode_s <= 0) return 0;
  return (final.completion_tokens() - 1) / decode_s;
}

// A local prefill ran on the decode worker.
std::string PrefillWorkerText(const v1::GenerateFinal& final) {
  if (!final.prefill_worker().empty()) return final.prefill_worker();
  if (final.prefill_location() == v1::PREFILL_LOCATION_LOCAL && !final.decode_worker().empty()) {
    return final.decode_worker();
  }
  return "-";
}

std::string Ms(double seconds) { return absl::StrFormat("%.1f ms", seconds * 1e3); }

void PrintSummary(const v1::GenerateFinal& final) {
  const v1::Timings& t = final.timings();
  std::string summary = absl::StrFormat(
      "\nfinish: %s | tokens: prompt %d, completion %d, cached %d\n"
      "time: queued %s, prefill %s, kv transfer %s, first token %s, decode %s, total %s"
      " | %.1f tokens/s\n"
      "prefill: %s on %s | decode on %s | prefill retries: %d",
      FinishReasonText(final.finish_reason()), final.prompt_tokens(), final.completion_tokens(),
      final.cached_prompt_tokens(), Ms(t.queued()), Ms(t.prefill()), Ms(t.kv_transfer()),
      Ms(t.first_token()), Ms(t.decode()), Ms(t.total()), DecodeTokensPerSecond(final),
      PrefillLocationText(final.prefill_location()), PrefillWorkerText(final),
      final.decode_worker().empty() ? "-" : final.decode_worker(), final.prefill_retries());
  if (!final.request_id().empty()) absl::StrAppend(&summary, " | request ", final.request_id());
  std::fprintf(stderr, "%s\n", summary.c_str());
}

Json FinalJson(const std::string& text, const std::vector<int32_t>& token_ids,
               const v1::GenerateFinal& final) {
  const v1::Timings& t = final.timings();
  return Json{
      {"text", text},
      {"token_ids", token_ids},
      {"finish_reason", FinishReasonText(final.finish_reason())},
      {"prompt_tokens", final.prompt_tokens()},
      {"completion_tokens", final.completion_tokens()},
      {"cached_prompt_tokens", final.cached_prompt_tokens()},
      {"timings_s",
       {{"queued", t.queued()},
        {"prefill", t.prefill()},
        {"kv_transfer", t.kv_transfer()},
        {"first_token", t.first_token()},
        {"decode", t.decode()},
        {"total", t.total()}}},
      {"decode_tokens_per_s", DecodeTokensPerSecond(final)},
      {"prefill_worker", final.prefill_worker()},
      {"decode_worker", final.decode_worker()},
      {"prefill_location", PrefillLocationText(final.prefill_location())},
      {"request_id", final.request_id()},
      {"prefill_retries", final.prefill_retries()},
  };
}

void PrintJson(const Json& json) {
  // One line, for pipes and logs. The router never splits UTF-8, but a replacement character
  // beats an exception.
  const std::string out = json.dump(-1, ' ', false, Json::error_handler_t::replace);
  std::fprintf(stdout, "%s\n", out.c_str());
  std::fflush(stdout);
}

absl::Status Generate(v1::Generation::Stub& stub, const Args& args, const std::string& router,
                      SignalCanceller& canceller) {
  ASSIGN_OR_RETURN(v1::GenerateRequest request, RequestFromArgs(args));
  ASSIGN_OR_RETURN(absl::Duration timeout, TimeoutFromArgs(args, absl::InfiniteDuration()));
  const bool json = args.Has("json");

  grpc::ClientContext context;
  if (timeout != absl::InfiniteDuration()) SetDeadline(context, timeout);
  AddApiKeyMetadata(context, ClientApiKey(args.GetString("api-key")));
  canceller.Arm(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  std::string text;
  std::vector<int32_t> token_ids;
  std::optional<v1::GenerateFinal> final;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_delta()) {
      const v1::TextDelta& delta = response.delta();
      token_ids.insert(token_ids.end(), delta.token_ids().begin(), delta.token_ids().end());
      if (json) {
        text += delta.text();
      } else if (!delta.text().empty()) {
        std::fwrite(delta.text().data(), 1, delta.text().size(), stdout);
        std::fflush(stdout);
      }
    } else if (response.has_final()) {
      final = response.final();
    }
  }
  const grpc::Status status = reader->Finish();
  canceller.Disarm();
  if (!json && !token_ids.empty()) {
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  if (canceller.fired()) return absl::CancelledError(kCancelledBySignal);
  if (!status.ok()) return CallError(status, router);
  if (!final.has_value()) {
    return absl::InternalError("the router ended the stream without a final message");
  }
  if (json) {
    PrintJson(FinalJson(text, token_ids, *final));
  } else {
    PrintSummary(*final);
  }
  return absl::OkStatus();
}

void PrintHealth(const v1::HealthResponse& health, const std::string& router) {
  std::printf("router %s: %s, mode %s, %d prefill and %d decode workers available\n",
              router.c_str(), health.serving() ? "serving" : "NOT serving",
              health.mode().empty() ? "?" : health.mode().c_str(), health.prefill_workers(),
              health.decode_workers());
  if (health.workers().empty()) return;
  std::printf("\n%-24s %-8s %-22s %15s %8s %14s  %-8s %-14s %s\n", "ID", "ROLE", "ADDRESS",
              "FREE/TOTAL KV", "RUNNING", "QUEUED TOKENS", "STATE", "DEVICE", "KV TRANSPORTS");
  for (const v1::WorkerStatus& w : health.workers()) {
    const std::string blocks = absl::StrFormat("%d/%d", w.free_kv_blocks(), w.total_kv_blocks());
    // "GPU-" and the UUID's first group tell a node's GPUs apart; the rest is in --json.
    const std::string device =
        w.device_uuid().empty() ? "cpu" : std::string(w.device_uuid().substr(0, 12));
    const std::string transports = absl::StrJoin(w.transports(), ",");
    std::printf("%-24s %-8s %-22s %15s %8d %14lld  %-8s %-14s %s\n", w.id().c_str(),
                w.role().c_str(), w.address().c_str(), blocks.c_str(), w.running_sequences(),
                static_cast<long long>(w.queued_prompt_tokens()),
                w.draining() ? "draining" : "ready", device.c_str(),
                transports.empty() ? "?" : transports.c_str());
  }
}

absl::Status Health(v1::Generation::Stub& stub, const Args& args, const std::string& router,
                    SignalCanceller& canceller) {
  ASSIGN_OR_RETURN(absl::Duration timeout, TimeoutFromArgs(args, kDefaultInfoTimeout));
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  canceller.Arm(&context);
  v1::HealthResponse health;
  const grpc::Status status = stub.Health(&context, v1::HealthRequest(), &health);
  canceller.Disarm();
  if (canceller.fired()) return absl::CancelledError(kCancelledBySignal);
  if (!status.ok()) return CallError(status, router);
  if (args.Has("json")) {
    PrintJson(HealthJson(health));
  } else {
    PrintHealth(health, router);
  }
  return absl::OkStatus();
}

absl::Status ListModels(v1::Generation::Stub& stub, const Args& args, const std::string& router,
                        SignalCanceller& canceller) {
  ASSIGN_OR_RETURN(absl::Duration timeout, TimeoutFromArgs(args, kDefaultInfoTimeout));
  grpc::ClientContext context;
  SetDeadline(context, timeout);
  canceller.Arm(&context);
  AddApiKeyMetadata(context, ClientApiKey(args.GetString("api-key")));
  v1::ListModelsResponse models;
  const grpc::Status status = stub.ListModels(&context, v1::ListModelsRequest(), &models);
  canceller.Disarm();
  if (canceller.fired()) return absl::CancelledError(kCancelledBySignal);
  if (!status.ok()) return CallError(status, router);
  if (args.Has("json")) {
    Json list = Json::array();
    for (const v1::ModelInfo& m : models.models()) {
      list.push_back({{"id", m.id()},
                      {"context_length", m.context_length()},
                      {"fingerprint", m.fingerprint()}});
    }
    PrintJson(Json{{"models", list}});
    return absl::OkStatus();
  }
  std::printf("%-40s %8s  %s\n", "ID", "CONTEXT", "FINGERPRINT");
  for (const v1::ModelInfo& m : models.models()) {
    std::printf("%-40s %8d  %s\n", m.id().c_str(), m.context_length(), m.fingerprint().c_str());
  }
  return absl::OkStatus();
}

absl::Status Client(const Args& args) {
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("unexpected argument '%s'", args.positional()[0]));
  }
  if (args.Has("health") && args.Has("list-models")) {
    return absl::InvalidArgumentError("give one of --health and --list-models");
  }
  const std::string router = args.GetString("router", kDefaultRouter);
  if (router.empty()) return absl::InvalidArgumentError("--router must not be empty");
  SignalCanceller canceller;  // before the channel starts gRPC's threads
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   ClientChannelCredentials(args.GetString("tls-ca")));
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(router, credentials);
  std::unique_ptr<v1::Generation::Stub> stub = v1::Generation::NewStub(channel);
  if (args.Has("health")) return Health(*stub, args, router, canceller);
  if (args.Has("list-models")) return ListModels(*stub, args, router, canceller);
  return Generate(*stub, args, router, canceller);
}

}  // namespace

int RunClient(int argc, char** argv, int begin) {
  const std::vector<FlagSpec> specs = ClientFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, begin, specs);
  if (!args.ok()) return FailWithCode(args.status());
  if (args->Has("help")) {
    std::printf(
        "usage: tandem client [--router ADDR] (--prompt TEXT | --chat TEXT [--system TEXT] |\n"
        "                     --token-ids 1,2,3) [flags]\n"
        "       tandem client [--router ADDR] --health | --list-models [--json]\n\n%s",
        Args::Usage(specs).c_str());
    return 0;
  }
  const absl::Status status = Client(*args);
  if (status.ok()) return 0;
  if (absl::IsCancelled(status) && status.message() == kCancelledBySignal) {
    std::fprintf(stderr, "tandem: cancelled\n");
    return 130;  // 128 + SIGINT, as a shell reports a process interrupted by Ctrl-C
  }
  return FailWithCode(status);
}

}  // namespace tandem::cli
