// The subcommands of the `tandem` executable. Each returns the process exit code.
#ifndef TANDEM_CLI_COMMANDS_H_
#define TANDEM_CLI_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cli/args.h"
#include "engine/engine.h"

namespace tandem::cli {

int RunGenerate(int argc, char** argv, int begin);
int RunModel(int argc, char** argv, int begin);
int RunBench(int argc, char** argv, int begin);  // bench/

// Flags every engine-backed command accepts (--model, --threads, --kv-cache-mb, ...).
std::vector<FlagSpec> EngineFlagSpecs();
absl::StatusOr<EngineOptions> EngineOptionsFromArgs(const Args& args);
// --model default|PATH, resolved to a file.
absl::StatusOr<std::string> ModelPathFromArgs(const Args& args);

// Prints `status` as "tandem: <message>" to stderr and returns 1 (2 for usage errors).
int Fail(const absl::Status& status);

}  // namespace tandem::cli

#endif  // TANDEM_CLI_COMMANDS_H_
