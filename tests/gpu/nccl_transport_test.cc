// NcclTransport on the one GPU of the device check: a one-rank communicator that sends to and
// receives from itself (two ranks cannot share a GPU). Moves a SmolLM2-shaped KV cache (30
// layers x 64 blocks x 16 x 3 x 64 bf16, random bytes) layer by layer and all layers in one
// group into another buffer, checks the bytes, prints GB/s; a rank that waits for a peer that
// never comes gets DEADLINE_EXCEEDED (checked in a child process: an NCCL hang cannot stall the
// suite). Skips without a device.
#include "kvtransfer/cuda/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/gpu/gpu_test_util.h"

extern char** environ;

namespace tandem {
namespace {

constexpr char kChildEnv[] = "TANDEM_NCCL_TEST_CHILD";

// Owns a device allocation.
struct DeviceBytes {
  explicit DeviceBytes(size_t n) : size(n) {
    if (cudaMalloc(&ptr, n) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBytes() { cudaFree(ptr); }
  char* get() const { return static_cast<char*>(ptr); }
  void* ptr = nullptr;
  size_t size = 0;
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(NcclTransportTest, RejectsBadArguments) {
  // Checked before any NCCL or CUDA call: runs without a GPU.
  EXPECT_EQ(NcclTransport::Create(std::string(5, 'x'), 1, 0, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string id(sizeof(ncclUniqueId::internal), '\0');
  EXPECT_EQ(NcclTransport::Create(id, 3, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclTransport::Create(id, 2, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclTransport::Create(id, 1, 0, -1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NcclTransportTest, SelfSendRecvKvLayers) {
  SKIP_WITHOUT_GPU();
  // SmolLM2-135M's cache shape: K and V of 64 blocks x 16 tokens x 3 KV heads x 64 dims, bf16.
  constexpr int kLayers = 30;
  constexpr int64_t kLayerBytes = 2LL * 64 * 16 * 3 * 64 * 2;
  constexpr int64_t kTotal = kLayers * kLayerBytes;
  const absl::Time deadline = absl::Now() + absl::Seconds(60);

  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(id->size(), sizeof(ncclUniqueId::internal));
  const auto t_init = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<NcclTransport>> t = NcclTransport::Create(*id, 1, 0, 0);
  ASSERT_TRUE(t.ok()) << t.status();
  std::printf("[ nccl     ] one-rank communicator joined in %.1f ms\n", 1e3 * Seconds(t_init));
  NcclTransport& nccl = **t;
  EXPECT_EQ(nccl.kind(), TransportKind::kNccl);
  EXPECT_EQ(nccl.memory(), MemoryKind::kDevice);

  std::mt19937 rng(cuda::testing::TestSeed());
  std::vector<uint32_t> words(kTotal / 4);
  for (uint32_t& w : words) w = rng();
  DeviceBytes src(kTotal), dst(kTotal);
  ASSERT_NE(src.ptr, nullptr);
  ASSERT_NE(dst.ptr, nullptr);
  ASSERT_CUDA_OK(cudaMemcpy(src.ptr, words.data(), kTotal, cudaMemcpyHostToDevice));
  std::vector<uint32_t> back(words.size());
  auto expect_dst_equals_src = [&](const char* what) {
    ASSERT_CUDA_OK(cudaMemcpy(back.data(), dst.ptr, kTotal, cudaMemcpyDeviceToHost));
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < words.size(); ++i) {
      if (back[i] != words[i] && bad++ == 0) first_bad = i;
    }
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << words.size()
                       << " words differ, the first at byte " << 4 * first_bad;
  };

  // Layer by layer, one group each (the layer-wise sender's pattern). Round 0 warms up.
  double per_layer_s = 0;
  for (int round = 0; round < 3; ++round) {
    ASSERT_CUDA_OK(cudaMemset(dst.ptr, 0xff, kTotal));
    const auto t0 = std::chrono::steady_clock::now();
    for (int l = 0; l < kLayers; ++l) {
      const absl::Status s = nccl.SendRecvSelf(src.get() + l * kLayerBytes,
                                               dst.get() + l * kLayerBytes, kLayerBytes, deadline);
      ASSERT_TRUE(s.ok()) << "layer " << l << ": " << s;
    }
    if (round > 0) per_layer_s += Seconds(t0) / 2;
    expect_dst_equals_src("layer by layer");
  }
  // Every layer in one group.
  std::vector<NcclTransport::SelfCopy> copies;
  for (int l = 0; l < kLayers; ++l) {
    copies.push_back({src.get() + l * kLayerBytes, dst.get() + l * kLayerBytes, kLayerBytes});
  }
  ASSERT_CUDA_OK(cudaMemset(dst.ptr, 0xff, kTotal));
  ASSERT_TRUE(nccl.SendRecvSelf(copies, deadline).ok());  // warm-up
  expect_dst_equals_src("one group (warm-up)");
  ASSERT_CUDA_OK(cudaMemset(dst.ptr, 0xff, kTotal));
  const auto t1 = std::chrono::steady_clock::now();
  const absl::Status grouped = nccl.SendRecvSelf(copies, deadline);
  const double grouped_s = Seconds(t1);
  ASSERT_TRUE(grouped.ok()) << grouped;
  expect_dst_equals_src("one group");
  std::printf(
      "[ nccl     ] KV %d layers x %.0f KiB: layer by layer %.3f ms (%.1f GB/s, %.1f us/layer), "
      "one group %.3f ms (%.1f GB/s)\n",
      kLayers, kLayerBytes / 1024.0, 1e3 * per_layer_s, kTotal / per_layer_s / 1e9,
      1e6 * per_layer_s / kLayers, 1e3 * grouped_s, kTotal / grouped_s / 1e9);

  // Bulk: 256 MiB in one piece (payload bytes per second).
  constexpr int64_t kBulk = int64_t{256} << 20;
  DeviceBytes a(kBulk), b(kBulk);
  ASSERT_NE(a.ptr, nullptr);
  ASSERT_NE(b.ptr, nullptr);
  ASSERT_CUDA_OK(cudaMemset(a.ptr, 0x5a, kBulk));
  ASSERT_TRUE(nccl.SendRecvSelf(a.ptr, b.ptr, kBulk, deadline).ok());
  constexpr int kReps = 5;
  const auto t2 = std::chrono::steady_clock::now();
  for (int i = 0; i < kReps; ++i)
    ASSERT_TRUE(nccl.SendRecvSelf(a.ptr, b.ptr, kBulk, deadline).ok());
  const double bulk_s = Seconds(t2) / kReps;
  std::printf("[ nccl     ] bulk 256 MiB to self: %.3f ms, %.1f GB/s payload\n", 1e3 * bulk_s,
              kBulk / bulk_s / 1e9);

  // The stream waits on a caller's event; a lone Send on one rank is refused.
  cudaEvent_t event;
  ASSERT_CUDA_OK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  ASSERT_CUDA_OK(cudaEventRecord(event, 0));
  EXPECT_TRUE(nccl.WaitEvent(event).ok());
  EXPECT_TRUE(nccl.SendRecvSelf(src.ptr, dst.ptr, 4096, deadline).ok());
  ASSERT_CUDA_OK(cudaEventDestroy(event));
  EXPECT_EQ(nccl.Send(src.ptr, 16, deadline).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nccl.Recv(dst.ptr, 16, deadline).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nccl.SendRecvSelf(src.ptr, dst.ptr, -1, deadline).code(),
            absl::StatusCode::kInvalidArgument);

  nccl.Close();
  EXPECT_EQ(nccl.SendRecvSelf(src.ptr, dst.ptr, 4096, deadline).code(),
            absl::StatusCode::kUnavailable);
  std::fflush(stdout);
}

// Child: rank 0 of a two-rank communicator whose rank 1 never joins.
int RunInitDeadlineChild() {
  absl::StatusOr<std::string> id = NcclTransport::NewUniqueId();
  if (!id.ok()) {
    std::printf("child: NewUniqueId: %s\n", id.status().ToString().c_str());
    return 2;
  }
  NcclTransportOptions options;
  options.init_timeout = absl::Seconds(2);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<NcclTransport>> t = NcclTransport::Create(*id, 2, 0, 0, options);
  const double secs = Seconds(t0);
  std::printf("[ nccl     ] rank 0 of 2 without a peer: %s after %.2f s (deadline 2 s)\n",
              t.status().ToString().c_str(), secs);
  std::fflush(stdout);
  return t.status().code() == absl::StatusCode::kDeadlineExceeded && secs < 20 ? 0 : 1;
}

TEST(NcclTransportTest, InitDeadlineAbortsInsteadOfHanging) {
  SKIP_WITHOUT_GPU();
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.push_back(*e);
  env_strings.push_back(std::string(kChildEnv) + "=init_deadline");
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::vector<char*> argv = {exe.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()), 0);
  const absl::Time limit = absl::Now() + absl::Seconds(20);
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    FAIL() << "the child hung for 20 s: Create or the abort did not honour the deadline";
  }
  ASSERT_EQ(done, pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the child's line above";
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  // One process, one rank: bootstrap over loopback whatever the machine's interfaces.
  setenv("NCCL_SOCKET_IFNAME", "lo", /*overwrite=*/0);
  setenv("NCCL_DEBUG", "WARN", /*overwrite=*/0);
  // cudaMalloc'd NCCL buffers rather than cuMem* (VMM) ones: the sandboxed GPU runtimes of the
  // device check may lack VMM support, and a one-rank self copy does not care.
  setenv("NCCL_CUMEM_ENABLE", "0", /*overwrite=*/0);
  if (const char* child = std::getenv(tandem::kChildEnv);
      child != nullptr && std::string(child) == "init_deadline") {
    const int rc = tandem::RunInitDeadlineChild();
    std::fflush(stdout);
    _exit(rc);  // NCCL's bootstrap threads may still wait for the missing rank
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
