// tandem: the command line. `tandem generate`, `tandem model pull|info`, `tandem bench engine`.
#include <cstdio>
#include <string_view>

#include "cli/commands.h"

namespace {

constexpr char kUsage[] =
    "usage: tandem <command> [flags]\n"
    "\n"
    "commands:\n"
    "  generate     run a prompt through a model on this machine and stream the text\n"
    "  model pull   download the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)\n"
    "  model info   print a model's configuration\n"
    "  bench engine prefill and decode throughput of the engine (and llama.cpp beside it)\n"
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
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "tandem: unknown command '%s'\n\n%s", argv[1], kUsage);
  return 2;
}
