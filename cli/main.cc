// tandem: the command line. `tandem generate`, `tandem client`, `tandem model pull|info`,
// `tandem bench engine|serve`.
#include <cstdio>
#include <string>
#include <string_view>

#include "cli/commands.h"

namespace tandem::cli {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "tandem: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace tandem::cli

namespace {

constexpr char kUsage[] =
    "usage: tandem <command> [flags]\n"
    "\n"
    "commands:\n"
    "  generate     run a prompt through a model on this machine and stream the text\n"
    "  client       send a request to a tandem router and stream the answer\n"
    "  model pull   download the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)\n"
    "  model info   print a model's configuration\n"
    "  bench engine prefill and decode throughput of the engine (and llama.cpp beside it)\n"
    "  bench serve  load generator against a router: latency percentiles, goodput, a plot\n"
    "\n"
    "`tandem <command> --help` lists a command's flags.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string_view command = argv[1];
  if (command == "generate") return tandem::cli::RunGenerate(argc, argv, 2);
  if (command == "model") return tandem::cli::RunModel(argc, argv, 2);
  if (command == "bench") return tandem::cli::RunBench(argc, argv, 2);
#ifdef TANDEM_WITH_GRPC
  if (command == "client") return tandem::cli::RunClient(argc, argv, 2);
#endif
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "tandem: unknown command '%s'\n\n%s", argv[1], kUsage);
  return 2;
}
