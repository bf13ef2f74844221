// `tandem bench engine`: prefill and decode throughput of the single-process engine on a
// model, with llama.cpp's llama-bench and llama-batched-bench run beside it on the same
// GGUF and thread count (bench/llama_cpp/run.sh), and the ratios.
#include <sys/resource.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace tandem::cli {
namespace {

using nlohmann::json;

std::vector<int32_t> RandomTokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Skip the low ids, where the special tokens live, as llama-bench does.
  std::uniform_int_distribution<int32_t> dist(256, vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = dist(rng);
  return tokens;
}

double PeakRssMiB() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

// Prefill of one prompt of `n` tokens in a single step; returns tokens/s (median of reps).
absl::StatusOr<double> PrefillTokensPerSecond(Engine& engine, int n, int reps) {
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    GenerationRequest request;
    request.prompt_tokens = RandomTokens(n, engine.config().vocab_size, 1000 + r);
    request.params.max_tokens = 1;
    request.params.sampling.temperature = 0;
    request.params.ignore_eos = true;
    ASSIGN_OR_RETURN(GenerationResult result, engine.Generate(std::move(request)));
    rates.push_back(n / absl::ToDoubleSeconds(result.time_to_first_token));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

// `batch` sequences with `n_prompt`-token prompts, each generating `n_gen` tokens; returns the
// aggregate decode tokens/s, timed from when every sequence has its first token.
absl::StatusOr<double> DecodeTokensPerSecond(Engine& engine, int batch, int n_prompt, int n_gen) {
  std::vector<RequestId> ids;
  for (int b = 0; b < batch; ++b) {
    GenerationRequest request;
    request.prompt_tokens = RandomTokens(n_prompt, engine.config().vocab_size, 7 + b);
    request.params.max_tokens = n_gen;
    request.params.sampling.temperature = 0;
    request.params.ignore_eos = true;
    ASSIGN_OR_RETURN(RequestId id, engine.AddRequest(std::move(request)));
    ids.push_back(id);
  }
  int with_first = 0;
  int64_t decoded = 0;
  absl::Time start;
  while (engine.HasWork()) {
    ASSIGN_OR_RETURN(std::vector<RequestOutput> outputs, engine.Step());
    for (const RequestOutput& out : outputs) {
      if (out.new_tokens.empty()) continue;
      if (out.num_generated_tokens == 1) {
        if (++with_first == batch) start = absl::Now();
      } else if (with_first == batch) {
        decoded += static_cast<int64_t>(out.new_tokens.size());
      }
    }
  }
  return decoded / absl::ToDoubleSeconds(absl::Now() - start);
}

absl::StatusOr<json> RunLlamaCpp(const std::string& model, int threads) {
  const std::string command =
      absl::StrFormat("bash %s/bench/llama_cpp/run.sh '%s' %d", TANDEM_SOURCE_ROOT, model, threads);
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("cannot run " + command);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int rc = pclose(pipe);
  if (rc != 0) return absl::InternalError(absl::StrFormat("%s exited with %d", command, rc));
  json parsed = json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return absl::InternalError("llama.cpp bench printed no JSON");
  return parsed;
}

double NumberAt(const json& j, const std::string& pointer) {
  const json::json_pointer p(pointer);
  return j.contains(p) && j.at(p).is_number() ? j.at(p).get<double>() : 0.0;
}

absl::Status BenchEngine(const Args& args) {
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(std::string path, ModelPathFromArgs(args));
  ASSIGN_OR_RETURN(int64_t reps, args.GetInt("reps", 3));
  ASSIGN_OR_RETURN(int64_t n_gen, args.GetInt("gen-tokens", 128));
  options.enable_prefix_caching = false;  // every prompt is computed
  options.max_batch_tokens = std::max(options.max_batch_tokens, 2048);
  if (!args.Has("kv-cache-mb")) {
    // As much KV as the largest run needs (32 sequences of 128 + n_gen tokens), like
    // llama-batched-bench's -c, so peak RSS compares like with like.
    const int64_t tokens = std::max<int64_t>(2048, 32 * (128 + n_gen));
    options.num_kv_blocks = (tokens + options.block_size - 1) / options.block_size + 1;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::FromModelPath(path, options));
  const int threads = options.num_threads > 0 ? options.num_threads
                                              : static_cast<int>(std::thread::hardware_concurrency());

  json result;
  result["model"] = path;
  result["threads"] = threads;
  result["date"] = absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::Now(), absl::UTCTimeZone());
  for (int n : {128, 512, 2048}) {
    ASSIGN_OR_RETURN(double tps, PrefillTokensPerSecond(*engine, n, static_cast<int>(reps)));
    result["tandem"]["prefill"][std::to_string(n)] = tps;
    std::fprintf(stderr, "tandem prefill %5d tokens: %8.1f tokens/s\n", n, tps);
  }
  for (int batch : {1, 8, 32}) {
    ASSIGN_OR_RETURN(double tps,
                     DecodeTokensPerSecond(*engine, batch, 128, static_cast<int>(n_gen)));
    result["tandem"]["decode"][std::to_string(batch)] = tps;
    std::fprintf(stderr, "tandem decode batch %2d:     %8.1f tokens/s\n", batch, tps);
  }
  result["tandem"]["peak_rss_mib"] = PeakRssMiB();

  const bool with_llama = args.Has("llama-cpp");
  if (with_llama) {
    ASSIGN_OR_RETURN(json llama, RunLlamaCpp(path, threads));
    result["llama_cpp"] = llama;
  }

  // The table: tandem, llama.cpp and tandem / llama.cpp (higher is better for tandem).
  std::printf("| metric | tandem | llama.cpp | ratio |\n|---|---:|---:|---:|\n");
  auto row = [&](const std::string& name, double ours, double theirs) {
    std::printf("| %s | %.1f | %s | %s |\n", name.c_str(), ours,
                theirs > 0 ? absl::StrFormat("%.1f", theirs).c_str() : "-",
                theirs > 0 ? absl::StrFormat("%.2fx", ours / theirs).c_str() : "-");
  };
  for (int n : {128, 512, 2048}) {
    const std::string key = std::to_string(n);
    row("prefill " + key + " tokens (tokens/s)", result["tandem"]["prefill"][key].get<double>(),
        with_llama ? NumberAt(result["llama_cpp"], "/prefill_tokens_per_s/" + key) : 0);
  }
  for (int b : {1, 8, 32}) {
    const std::string key = std::to_string(b);
    row("decode, " + key + " sequences (tokens/s)", result["tandem"]["decode"][key].get<double>(),
        // llama-bench's tg128 for one sequence, llama-batched-bench's S_TG for several.
        !with_llama ? 0
        : b == 1    ? NumberAt(result["llama_cpp"], "/decode_batch1_tokens_per_s")
                    : NumberAt(result["llama_cpp"], "/batched_decode_aggregate_tokens_per_s/" + key));
  }
  std::printf("| peak RSS (MiB) | %.0f | %s | |\n", result["tandem"]["peak_rss_mib"].get<double>(),
              with_llama && result["llama_cpp"].contains("peak_rss_mib")
                  ? absl::StrFormat("%.0f", NumberAt(result["llama_cpp"], "/peak_rss_mib")).c_str()
                  : "-");
  if (args.Has("json")) {
    std::ofstream(args.GetString("json")) << result.dump(2) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int RunBench(int argc, char** argv, int begin) {
#ifdef TANDEM_WITH_GRPC
  if (begin < argc && std::string_view(argv[begin]) == "serve") {
    return RunBenchServe(argc, argv, begin + 1);
  }
#endif
  std::vector<FlagSpec> specs = EngineFlagSpecs();
  specs.insert(specs.end(), {
      {"reps", false, "repetitions of each prefill (median reported; default 3)"},
      {"gen-tokens", false, "tokens generated per sequence in the decode runs (default 128)"},
      {"llama-cpp", true, "also run llama.cpp (bench/llama_cpp/run.sh) and print ratios"},
      {"json", false, "write all figures to this JSON file"},
  });
  absl::StatusOr<Args> args = Args::Parse(argc, argv, begin, specs);
  if (!args.ok()) return Fail(args.status());
  if (args->positional().empty() || args->positional()[0] != "engine") {
    std::fprintf(stderr, "usage: tandem bench engine|serve [flags]\n\n%s", Args::Usage(specs).c_str());
    return 2;
  }
  SetMinLogSeverity(LogSeverity::kWarning);
  absl::Status status = BenchEngine(*args);
  return status.ok() ? 0 : Fail(status);
}

}  // namespace tandem::cli
