// The subcommands of the `tandem` executable. Each returns the process exit code.
#ifndef TANDEM_CLI_COMMANDS_H_
#define TANDEM_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/args.h"
#include "engine/engine.h"
#include "engine/backends/engine_flags.h"

namespace tandem::cli {

int RunGenerate(int argc, char** argv, int begin);
int RunModel(int argc, char** argv, int begin);
int RunBench(int argc, char** argv, int begin);  // bench/: `bench engine`, `bench serve`
#ifdef TANDEM_WITH_GRPC
int RunClient(int argc, char** argv, int begin);      // cli/client_command.cc
int RunBenchServe(int argc, char** argv, int begin);  // bench/serving_bench.cc
#endif

// Prints `status` as "tandem: <message>" to stderr and returns 1 (2 for usage errors).
int Fail(const absl::Status& status);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_COMMANDS_H_
