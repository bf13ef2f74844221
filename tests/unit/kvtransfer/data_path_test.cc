// The KV channel's data path: which transports a build offers, the tcp path end to end (the
// published address and token, a wrong token refused), and clear errors for what a build or
// a runner cannot open. The device paths (cuda_ipc, nccl) are proven on a GPU by
// tests/gpu/cuda_ipc_test.cc, tests/gpu/nccl_transport_test.cc and tests/gpu/device_check.sh.
#include "kvtransfer/data_path.h"

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

TEST(DataPathTest, ParsesTransportNames) {
  EXPECT_EQ(*ParseTransportKind("tcp"), TransportKind::kTcp);
  EXPECT_EQ(*ParseTransportKind("cuda_ipc"), TransportKind::kCudaIpc);
  EXPECT_EQ(*ParseTransportKind("nccl"), TransportKind::kNccl);
  for (const char* bad : {"", "TCP", "cuda-ipc", "rdma"}) {
    absl::StatusOr<TransportKind> k = ParseTransportKind(bad);
    ASSERT_FALSE(k.ok()) << bad;
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(k.status().message(), HasSubstr("expected tcp, cuda_ipc or nccl"));
  }
}

TEST(DataPathTest, HostRunnersGetTcpOnly) {
  EXPECT_EQ(AvailableTransports(false), std::vector<TransportKind>{TransportKind::kTcp});
  EXPECT_TRUE(CheckTransportAvailable(TransportKind::kTcp, false).ok());
  for (TransportKind k : {TransportKind::kCudaIpc, TransportKind::kNccl}) {
    absl::Status s = CheckTransportAvailable(k, false);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(s.message(), HasSubstr("host memory"));
    EXPECT_THAT(s.message(), HasSubstr("it offers: tcp"));
  }
  // A device runner always has tcp (host staging), first.
  EXPECT_EQ(AvailableTransports(true).front(), TransportKind::kTcp);
}

TEST(DataPathTest, StagingMemoryFollowsRunnerAndTransport) {
  // The CPU runner (device -1) on tcp stages in ordinary host memory.
  EXPECT_EQ(MakeStagingAllocator(TransportKind::kTcp, -1), nullptr);
  const std::vector<TransportKind> device_kinds = AvailableTransports(true);
  const bool have_cuda = std::find(device_kinds.begin(), device_kinds.end(),
                                   TransportKind::kCudaIpc) != device_kinds.end();
  std::unique_ptr<StagingAllocator> tcp = MakeStagingAllocator(TransportKind::kTcp, 0);
  std::unique_ptr<StagingAllocator> ipc = MakeStagingAllocator(TransportKind::kCudaIpc, 0);
  if (!have_cuda) {
    EXPECT_EQ(tcp, nullptr);
    EXPECT_EQ(ipc, nullptr);
    return;
  }
  // A device runner on tcp stages in pinned host memory, on a device transport in device
  // memory. (Nothing is allocated here: this machine may have no GPU.)
  ASSERT_NE(tcp, nullptr);
  EXPECT_EQ(tcp->memory(), MemoryKind::kHost);
  ASSERT_NE(ipc, nullptr);
  EXPECT_EQ(ipc->memory(), MemoryKind::kDevice);
}

TEST(DataPathTest, NcclRefusesTwoEndsOnOneGpu) {
  EXPECT_TRUE(CheckNcclPeers("GPU-1", "GPU-2").ok());
  EXPECT_TRUE(CheckNcclPeers("", "").ok());  // CPU or unknown: nothing to compare
  EXPECT_TRUE(CheckNcclPeers("GPU-1", "").ok());
  const absl::Status same = CheckNcclPeers("GPU-1", "GPU-1");
  EXPECT_EQ(same.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(same.message(), HasSubstr("GPU-1"));
  EXPECT_THAT(same.message(), HasSubstr("cuda_ipc"));
  // The CPU runner has no GPU; neither does a device this machine lacks.
  EXPECT_EQ(DeviceUuid(-1), "");
  EXPECT_EQ(DeviceUuid(63), "");
}

TEST(DataPathTest, TcpCarriesBytesWithTheToken) {
  DataPathOptions options;
  options.listen_host = "127.0.0.1";
  options.advertise_host = "127.0.0.1";
  absl::StatusOr<std::unique_ptr<DataPathListener>> listener =
      DataPathListener::Listen(TransportKind::kTcp, options);
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_EQ((*listener)->kind(), TransportKind::kTcp);
  EXPECT_THAT((*listener)->address(), ::testing::StartsWith("127.0.0.1:"));
  EXPECT_EQ((*listener)->token().size(), 32u);

  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<Transport>> prefill_end;
  std::thread connect([&] {
    prefill_end = ConnectDataPath(TransportKind::kTcp, (*listener)->address(),
                                  (*listener)->token(), options, deadline);
  });
  absl::StatusOr<std::unique_ptr<Transport>> decode_end = (*listener)->Accept(deadline);
  connect.join();
  ASSERT_TRUE(decode_end.ok()) << decode_end.status();
  ASSERT_TRUE(prefill_end.ok()) << prefill_end.status();
  EXPECT_EQ((*decode_end)->memory(), MemoryKind::kHost);

  std::vector<uint8_t> sent(100000), got(sent.size());
  for (size_t i = 0; i < sent.size(); ++i) sent[i] = static_cast<uint8_t>(i * 31 + 7);
  std::thread send([&] {
    EXPECT_TRUE((*prefill_end)->Send(sent.data(), sent.size(), deadline).ok());
  });
  ASSERT_TRUE((*decode_end)->Recv(got.data(), got.size(), deadline).ok());
  send.join();
  EXPECT_EQ(got, sent);
}

TEST(DataPathTest, TcpRefusesAWrongToken) {
  DataPathOptions options;
  options.listen_host = "127.0.0.1";
  absl::StatusOr<std::unique_ptr<DataPathListener>> listener =
      DataPathListener::Listen(TransportKind::kTcp, options);
  ASSERT_TRUE(listener.ok()) << listener.status();
  const std::string wrong(32, 'x');
  const absl::Time start = absl::Now();
  std::thread connect([&] {
    // The connection itself succeeds; the listener closes it after reading the token.
    (void)ConnectDataPath(TransportKind::kTcp, (*listener)->address(), wrong, options,
                          start + absl::Seconds(5));
  });
  absl::StatusOr<std::unique_ptr<Transport>> accepted =
      (*listener)->Accept(start + absl::Milliseconds(1500));
  connect.join();
  ASSERT_FALSE(accepted.ok());
  EXPECT_EQ(accepted.status().code(), absl::StatusCode::kDeadlineExceeded) << accepted.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(DataPathTest, BadAddressesAreInvalid) {
  for (const char* address : {"", "nohost", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:70000"}) {
    absl::StatusOr<std::unique_ptr<Transport>> t = ConnectDataPath(
        TransportKind::kTcp, address, "token", {}, absl::Now() + absl::Seconds(1));
    ASSERT_FALSE(t.ok()) << address;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
  }
}

// Without CUDA (or NCCL) in the build the device paths are UNIMPLEMENTED, named.
TEST(DataPathTest, MissingDeviceTransportsAreUnimplemented) {
  for (TransportKind k : {TransportKind::kCudaIpc, TransportKind::kNccl}) {
    const std::vector<TransportKind> offered = AvailableTransports(true);
    if (std::find(offered.begin(), offered.end(), k) != offered.end()) continue;
    absl::StatusOr<std::unique_ptr<DataPathListener>> l = DataPathListener::Listen(k, {});
    ASSERT_FALSE(l.ok());
    EXPECT_EQ(l.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(l.status().message(), HasSubstr(std::string(TransportKindName(k))));
    absl::StatusOr<std::unique_ptr<Transport>> t =
        ConnectDataPath(k, "x", "y", {}, absl::Now() + absl::Seconds(1));
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  }
}

}  // namespace
}  // namespace tandem
