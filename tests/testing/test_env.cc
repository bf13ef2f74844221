#include "tests/testing/test_env.h"

#include <cstdlib>

namespace tandem::testing {

std::string SourceDir() { return TANDEM_SOURCE_DIR; }

std::string DefaultModelPath() {
  if (const char* path = std::getenv("TANDEM_TEST_MODEL"); path != nullptr && *path != '\0') {
    return path;
  }
  std::string home;
  if (const char* th = std::getenv("TANDEM_HOME"); th != nullptr && *th != '\0') {
    home = th;
  } else {
    const char* user_home = std::getenv("HOME");
    home = std::string(user_home != nullptr ? user_home : "/root") + "/.cache/tandem";
  }
  return home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

namespace {

std::string EnvOr(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

}  // namespace

std::string TestDevice() { return EnvOr("TANDEM_TEST_DEVICE", "cpu"); }
std::string TestKvTransport() { return EnvOr("TANDEM_TEST_KV_TRANSPORT", "tcp"); }

}  // namespace tandem::testing
