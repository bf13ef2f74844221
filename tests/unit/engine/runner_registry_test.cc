// The backend table behind EngineOptions::device: parsing, lookup, a registered backend
// reaching the engine with its device index and KV dtype, and the clear refusals when a
// build or a machine lacks the backend.
#include "engine/runner_registry.h"

#include <memory>
#include <vector>

#include "engine/backends/backends.h"
#include "engine/cpu_model_runner.h"
#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

TEST(ParseDeviceTest, AcceptsBackendsAndIndices) {
  struct Case {
    const char* text;
    const char* backend;
    int index;
  };
  for (const Case& c : {Case{"cpu", "cpu", 0}, Case{"cuda", "cuda", 0}, Case{"cuda:0", "cuda", 0},
                        Case{"cuda:3", "cuda", 3}, Case{"rocm_7:12", "rocm_7", 12}}) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<DeviceSpec> d = ParseDevice(c.text);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->backend, c.backend);
    EXPECT_EQ(d->index, c.index);
  }
  EXPECT_EQ(ParseDevice("cuda:2")->ToString(), "cuda:2");
  EXPECT_EQ(ParseDevice("cuda")->ToString(), "cuda:0");
  EXPECT_EQ(ParseDevice("cpu")->ToString(), "cpu");
}

TEST(ParseDeviceTest, RefusesMalformedNames) {
  for (const char* text : {"", ":1", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2", "cpu:1", "CUDA",
                           "cuda 0", "9cuda", "cuda:99999", "cuda:+1"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<DeviceSpec> d = ParseDevice(text);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(d.status().message(), HasSubstr("expected a backend"));
  }
}

TEST(RunnerRegistryTest, UnknownBackendNamesWhatTheBuildHas) {
  RegisterBuiltinBackends();
  absl::StatusOr<RunnerBackend> b = FindRunnerBackend("gpu");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(b.status().message(), HasSubstr("no 'gpu' backend"));
  EXPECT_THAT(b.status().message(), HasSubstr("cpu"));
  EXPECT_TRUE(FindRunnerBackend("cpu").ok());
}

ModelConfig TinyConfig() { return *ModelConfig::Preset("tiny"); }

std::vector<int32_t> GreedyTokens(const std::string& device, KvDtype kv_dtype,
                                  EngineOptions* used = nullptr) {
  EngineOptions options;
  options.device = device;
  options.kv_dtype = kv_dtype;
  options.num_threads = 1;
  options.num_kv_blocks = 64;
  auto engine = Engine::Create(ModelWeights::Synthetic(TinyConfig(), GgmlType::kF32, 7), nullptr,
                               nullptr, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return {};
  if (used != nullptr) *used = (*engine)->options();
  GenerationRequest r;
  r.prompt_tokens = {1, 2, 3, 4, 5, 6, 7};
  r.params.max_tokens = 6;
  r.params.sampling.temperature = 0;
  auto result = (*engine)->Generate(r);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? result->tokens : std::vector<int32_t>{};
}

// A backend registered under a new name is what the engine runs for that device: it gets
// the device index, and the engine's default KV dtype becomes the backend's own.
TEST(RunnerRegistryTest, RegisteredBackendRunsTheEngine) {
  int made = 0;
  int seen_index = -1;
  KvDtype seen_dtype = KvDtype::kF16;
  RunnerBackend fake;
  fake.name = "fake";
  fake.kv_dtypes = {KvDtype::kF32};
  fake.make = [&](const ModelWeights& weights,
                  const RunnerOptions& options) -> absl::StatusOr<std::unique_ptr<ModelRunner>> {
    ++made;
    seen_index = options.device_index;
    seen_dtype = options.kv_dtype;
    return std::make_unique<CpuModelRunner>(weights, CpuRunnerOptionsFrom(options));
  };
  RegisterRunnerBackend(fake);
  EXPECT_THAT(RunnerBackendNames(), ::testing::Contains("fake"));

  EngineOptions used;
  const std::vector<int32_t> via_fake = GreedyTokens("fake:2", KvDtype::kF16, &used);
  EXPECT_EQ(made, 1);
  EXPECT_EQ(seen_index, 2);
  EXPECT_EQ(seen_dtype, KvDtype::kF32);
  EXPECT_EQ(used.kv_dtype, KvDtype::kF32) << "the engine reports the dtype it runs";
  EXPECT_EQ(used.device, "fake:2");
  const std::vector<int32_t> on_cpu = GreedyTokens("cpu", KvDtype::kF32);
  ASSERT_EQ(via_fake.size(), 6u);
  EXPECT_EQ(via_fake, on_cpu);

  // An explicit dtype the backend does not keep is refused, not replaced.
  fake.kv_dtypes = {KvDtype::kBF16};
  RegisterRunnerBackend(fake);
  EngineOptions options;
  options.device = "fake";
  options.kv_dtype = KvDtype::kF32;
  auto refused = Engine::Create(ModelWeights::Synthetic(TinyConfig(), GgmlType::kF32, 7), nullptr,
                                nullptr, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("does not keep the KV cache in f32"));
}

// A runner that samples greedily where its logits are (as the CUDA runner does) gets
// ForwardGreedy for steps whose sampled sequences are all greedy, and Forward otherwise;
// the tokens are the same either way, greedy or seeded.
class DeviceGreedyRunner : public CpuModelRunner {
 public:
  DeviceGreedyRunner(const ModelWeights& weights, const CpuModelRunnerOptions& options,
                     int* greedy_steps, int* full_steps)
      : CpuModelRunner(weights, options), greedy_steps_(greedy_steps), full_steps_(full_steps) {}
  bool greedy_on_device() const override { return true; }
  absl::Status ForwardGreedy(absl::Span<const ForwardSeq> seqs,
                             std::vector<int32_t>* tokens) override {
    ++*greedy_steps_;
    return ModelRunner::ForwardGreedy(seqs, tokens);  // Forward + ArgMax on the host
  }
  absl::Status Forward(absl::Span<const ForwardSeq> seqs, std::vector<float>* logits) override {
    ++*full_steps_;
    return CpuModelRunner::Forward(seqs, logits);
  }

 private:
  int* greedy_steps_;
  int* full_steps_;
};

TEST(RunnerRegistryTest, GreedyStepsUseTheRunnersArgmax) {
  int greedy_steps = 0;
  int full_steps = 0;
  RunnerBackend backend;
  backend.name = "greedyfake";
  backend.kv_dtypes = {KvDtype::kF16};
  backend.make = [&](const ModelWeights& weights, const RunnerOptions& options)
      -> absl::StatusOr<std::unique_ptr<ModelRunner>> {
    return std::make_unique<DeviceGreedyRunner>(weights, CpuRunnerOptionsFrom(options),
                                                &greedy_steps, &full_steps);
  };
  RegisterRunnerBackend(backend);

  auto run = [](const std::string& device, float temperature) {
    EngineOptions options;
    options.device = device;
    options.num_threads = 1;
    options.num_kv_blocks = 64;
    auto engine = Engine::Create(ModelWeights::Synthetic(TinyConfig(), GgmlType::kQ8_0, 11),
                                 nullptr, nullptr, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    GenerationRequest r;
    r.prompt_tokens = {9, 8, 7, 6, 5, 4, 3, 2, 1};
    r.params.max_tokens = 8;
    r.params.sampling.temperature = temperature;
    r.params.sampling.seed = 1234;
    auto result = (*engine)->Generate(r);
    EXPECT_TRUE(result.ok()) << result.status();
    return result->tokens;
  };
  const std::vector<int32_t> greedy_cpu = run("cpu", 0.0f);
  const std::vector<int32_t> greedy_fake = run("greedyfake", 0.0f);
  EXPECT_EQ(greedy_fake, greedy_cpu);
  EXPECT_EQ(greedy_steps, 8) << "one ForwardGreedy per step";
  EXPECT_EQ(full_steps, 8) << "ForwardGreedy's host default runs Forward";
  greedy_steps = full_steps = 0;
  const std::vector<int32_t> seeded_cpu = run("cpu", 0.8f);
  const std::vector<int32_t> seeded_fake = run("greedyfake", 0.8f);
  EXPECT_EQ(seeded_fake, seeded_cpu);
  EXPECT_EQ(greedy_steps, 0) << "a sampled sequence needs the logits";
  EXPECT_EQ(full_steps, 8);
}

// "cuda" without the CUDA backend in the build, or without a device on the machine, is a
// clear error from Engine::Create, never a silent CPU engine.
TEST(RunnerRegistryTest, CudaWithoutADeviceIsAClearError) {
  RegisterBuiltinBackends();
  EngineOptions options;
  options.device = "cuda:7";
  options.num_kv_blocks = 16;
  auto engine = Engine::Create(ModelWeights::Synthetic(TinyConfig(), GgmlType::kF32, 7), nullptr,
                               nullptr, options);
  if (engine.ok()) GTEST_SKIP() << "this machine has a cuda:7";
  const std::vector<std::string> names = RunnerBackendNames();
  if (std::find(names.begin(), names.end(), "cuda") == names.end()) {
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kNotFound) << engine.status();
    EXPECT_THAT(engine.status().message(), HasSubstr("-DTANDEM_WITH_CUDA=ON"));
  } else {
    EXPECT_EQ(engine.status().code(), absl::StatusCode::kFailedPrecondition) << engine.status();
    EXPECT_THAT(engine.status().message(), HasSubstr("no CUDA device 7"));
  }
}

}  // namespace
}  // namespace tandem
