// `tandem generate`: one prompt through the single-process engine, text streamed to stdout,
// prompt and generation speed to stderr.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tandem::cli {
namespace {

std::vector<FlagSpec> GenerateFlagSpecs() {
  std::vector<FlagSpec> specs = EngineFlagSpecs();
  specs.insert(specs.end(), {
      {"prompt", false, "the prompt text"},
      {"chat", true, "render the prompt as a user turn with the model's chat template"},
      {"system", false, "system message for --chat"},
      {"max-tokens", false, "tokens to generate (default 256)"},
      {"temperature", false, "sampling temperature; 0 is greedy (default 0.8)"},
      {"top-p", false, "nucleus sampling mass (default 0.95)"},
      {"top-k", false, "keep the k most likely tokens; 0 keeps all (default 40)"},
      {"seed", false, "sampling seed (same seed, same output)"},
      {"stop", false, "stop string (repeatable)"},
      {"ignore-eos", true, "keep generating past the end-of-generation token"},
      {"verbose", true, "log engine details"},
      {"help", true, "this text"},
  });
  return specs;
}

absl::Status Generate(const Args& args) {
  if (!args.Has("prompt")) return absl::InvalidArgumentError("--prompt is required");
  ASSIGN_OR_RETURN(EngineOptions options, EngineOptionsFromArgs(args));
  ASSIGN_OR_RETURN(std::string path, ModelPathFromArgs(args));
  ASSIGN_OR_RETURN(int64_t max_tokens, args.GetInt("max-tokens", 256));
  ASSIGN_OR_RETURN(double temperature, args.GetDouble("temperature", 0.8));
  ASSIGN_OR_RETURN(double top_p, args.GetDouble("top-p", 0.95));
  ASSIGN_OR_RETURN(int64_t top_k, args.GetInt("top-k", 40));
  if (max_tokens <= 0 || max_tokens > (1 << 24)) {
    return absl::InvalidArgumentError("--max-tokens must be positive");
  }

  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::FromModelPath(path, options));
  const Tokenizer& tokenizer = *engine->tokenizer();
  std::vector<int32_t> prompt_tokens;
  const std::string prompt = args.GetString("prompt");
  if (args.Has("chat")) {
    if (engine->chat_template() == nullptr) {
      return absl::FailedPreconditionError("this model has no chat template tandem can render");
    }
    std::vector<ChatMessage> messages;
    if (args.Has("system")) messages.push_back({"system", args.GetString("system")});
    messages.push_back({"user", prompt});
    ASSIGN_OR_RETURN(std::string text, engine->chat_template()->Render(messages, true));
    prompt_tokens = tokenizer.Encode(text, /*parse_special=*/true);
  } else {
    prompt_tokens = tokenizer.Encode(prompt, /*parse_special=*/false);
  }

  GenerationRequest request;
  request.prompt_tokens = std::move(prompt_tokens);
  const int64_t n_prompt = static_cast<int64_t>(request.prompt_tokens.size());
  request.params.max_tokens = static_cast<int32_t>(max_tokens);
  request.params.sampling.temperature = static_cast<float>(temperature);
  request.params.sampling.top_p = static_cast<float>(top_p);
  request.params.sampling.top_k = static_cast<int32_t>(top_k);
  if (args.Has("seed")) {
    ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 0));
    request.params.sampling.seed = static_cast<uint64_t>(seed);
  }
  request.params.stop = args.GetAll("stop");
  request.params.ignore_eos = args.Has("ignore-eos");

  ASSIGN_OR_RETURN(GenerationResult result,
                   engine->Generate(std::move(request), [](const RequestOutput& out) {
                     if (out.new_text.empty()) return;
                     std::fwrite(out.new_text.data(), 1, out.new_text.size(), stdout);
                     std::fflush(stdout);
                   }));
  std::fputc('\n', stdout);
  std::fflush(stdout);

  const double prefill_s = absl::ToDoubleSeconds(result.time_to_first_token);
  const double decode_s = absl::ToDoubleSeconds(result.total_time - result.time_to_first_token);
  const int64_t n_gen = static_cast<int64_t>(result.tokens.size());
  std::fprintf(stderr,
               "\nprompt: %lld tokens, %.1f tokens/s | generation: %lld tokens, %.1f tokens/s "
               "| finish: %s\n",
               static_cast<long long>(n_prompt), prefill_s > 0 ? n_prompt / prefill_s : 0.0,
               static_cast<long long>(n_gen),
               decode_s > 0 && n_gen > 1 ? (n_gen - 1) / decode_s : 0.0,
               std::string(FinishReasonName(result.finish_reason)).c_str());
  return absl::OkStatus();
}

}  // namespace

int RunGenerate(int argc, char** argv, int begin) {
  const std::vector<FlagSpec> specs = GenerateFlagSpecs();
  absl::StatusOr<Args> args = Args::Parse(argc, argv, begin, specs);
  if (!args.ok()) return Fail(args.status());
  if (args->Has("help")) {
    std::printf("usage: tandem generate --prompt TEXT [flags]\n\n%s", Args::Usage(specs).c_str());
    return 0;
  }
  if (!args->Has("verbose")) SetMinLogSeverity(LogSeverity::kWarning);
  absl::Status status = Generate(*args);
  return status.ok() ? 0 : Fail(status);
}

}  // namespace tandem::cli
