#include "kvtransfer/data_path.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "kvtransfer/channel_token.h"
#include "kvtransfer/tcp_transport.h"
#if TANDEM_HAVE_CUDA_IPC
#include <cuda_runtime_api.h>

#include "kvtransfer/cuda/cuda_ipc_transport.h"
#endif
#if TANDEM_HAVE_NCCL
#include "kvtransfer/cuda/nccl_transport.h"
#endif

namespace tandem {
namespace {

std::string Names(const std::vector<TransportKind>& kinds) {
  std::vector<std::string> names;
  for (TransportKind k : kinds) names.emplace_back(TransportKindName(k));
  return absl::StrJoin(names, ", ");
}

// host:port with an optional [IPv6] host.
absl::Status SplitHostPort(std::string_view address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos ||
      !absl::SimpleAtoi(std::string(address.substr(colon + 1)), port) || *port <= 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(Cat("bad KV data address '", address, "'"));
  }
  *host = std::string(address.substr(0, colon));
  if (host->size() >= 2 && host->front() == '[') *host = host->substr(1, host->size() - 2);
  return absl::OkStatus();
}

class TcpDataPathListener : public DataPathListener {
 public:
  TcpDataPathListener() : DataPathListener(TransportKind::kTcp) {}

  absl::Status Init(const DataPathOptions& options) {
    ASSIGN_OR_RETURN(listener_, TcpTransportListener::Listen(options.listen_host, 0));
    address_ = HostPort(options.advertise_host, listener_->port());
    ASSIGN_OR_RETURN(token_, NewChannelToken());
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    absl::StatusOr<std::unique_ptr<TcpTransport>> transport =
        AcceptWithChannelToken(*listener_, token_, deadline);
    listener_->Close();  // one connection per channel
    if (!transport.ok()) return transport.status();
    return std::unique_ptr<Transport>(std::move(*transport));
  }

 private:
  std::unique_ptr<TcpTransportListener> listener_;
};

#if TANDEM_HAVE_CUDA_IPC
// The prefill end's ring: 4 slots of 16 MiB (a layer larger than a slot moves in pieces).
constexpr int kIpcSendSlots = 4;
constexpr int64_t kIpcSlotBytes = int64_t{16} << 20;

class CudaIpcDataPathListener : public DataPathListener {
 public:
  explicit CudaIpcDataPathListener(int device)
      : DataPathListener(TransportKind::kCudaIpc), device_(device) {}

  absl::Status Init() {
    ASSIGN_OR_RETURN(listener_, CudaIpcTransport::Listener::Listen());
    address_ = listener_->address();
    ASSIGN_OR_RETURN(token_, NewChannelToken());
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    CudaIpcTransportOptions options;
    options.device = device_;
    options.num_slots = 0;  // the decode end only receives
    ASSIGN_OR_RETURN(std::unique_ptr<CudaIpcTransport> transport,
                     listener_->Accept(options, deadline));
    absl::StatusOr<std::string> presented = transport->RecvControl(deadline);
    if (!presented.ok() || !ChannelTokenEquals(*presented, token_)) {
      transport->Close();
      return absl::PermissionDeniedError(
          Cat("the CUDA IPC peer did not present the channel's token",
              presented.ok() ? "" : Cat(" (", presented.status().message(), ")")));
    }
    return std::unique_ptr<Transport>(std::move(transport));
  }

 private:
  const int device_;
  std::unique_ptr<CudaIpcTransport::Listener> listener_;
};

// Device memory on `device`, or pinned host memory (portable: any thread, any device).
class CudaStagingAllocator : public StagingAllocator {
 public:
  CudaStagingAllocator(int device, MemoryKind memory) : device_(device), memory_(memory) {}
  MemoryKind memory() const override { return memory_; }
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    void* p = nullptr;
    cudaError_t e = cudaSetDevice(device_);
    if (e == cudaSuccess) {
      e = memory_ == MemoryKind::kDevice
              ? cudaMalloc(&p, static_cast<size_t>(bytes))
              : cudaHostAlloc(&p, static_cast<size_t>(bytes), cudaHostAllocPortable);
    }
    if (e != cudaSuccess) {
      return absl::ResourceExhaustedError(
          Cat("KV staging buffer of ", bytes, " bytes ",
              memory_ == MemoryKind::kDevice ? "on" : "in pinned host memory for", " cuda:",
              device_, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
    }
    return p;
  }
  void Free(void* ptr) override {
    if (ptr == nullptr || cudaSetDevice(device_) != cudaSuccess) return;
    (void)(memory_ == MemoryKind::kDevice ? cudaFree(ptr) : cudaFreeHost(ptr));
  }

 private:
  const int device_;
  const MemoryKind memory_;
};
#endif  // TANDEM_HAVE_CUDA_IPC

#if TANDEM_HAVE_NCCL
class NcclDataPathListener : public DataPathListener {
 public:
  explicit NcclDataPathListener(int device)
      : DataPathListener(TransportKind::kNccl), device_(device) {}

  absl::Status Init() {
    ASSIGN_OR_RETURN(id_, NcclTransport::NewUniqueId());
    address_ = absl::BytesToHexString(id_);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    NcclTransportOptions options;
    options.init_timeout = std::max(deadline - absl::Now(), absl::Milliseconds(1));
    ASSIGN_OR_RETURN(std::unique_ptr<NcclTransport> transport,
                     NcclTransport::Create(id_, /*nranks=*/2, /*rank=*/0, device_, options));
    return std::unique_ptr<Transport>(std::move(transport));
  }

 private:
  const int device_;
  std::string id_;
};
#endif  // TANDEM_HAVE_NCCL

}  // namespace

absl::StatusOr<TransportKind> ParseTransportKind(std::string_view name) {
  for (TransportKind k : {TransportKind::kTcp, TransportKind::kCudaIpc, TransportKind::kNccl}) {
    if (name == TransportKindName(k)) return k;
  }
  return absl::InvalidArgumentError(
      Cat("KV transport '", name, "': expected tcp, cuda_ipc or nccl"));
}

std::vector<TransportKind> AvailableTransports(bool kv_on_device) {
  std::vector<TransportKind> kinds = {TransportKind::kTcp};
  if (kv_on_device) {
#if TANDEM_HAVE_CUDA_IPC
    kinds.push_back(TransportKind::kCudaIpc);
#endif
#if TANDEM_HAVE_NCCL
    kinds.push_back(TransportKind::kNccl);
#endif
  }
  return kinds;
}

absl::Status CheckTransportAvailable(TransportKind kind, bool kv_on_device) {
  const std::vector<TransportKind> kinds = AvailableTransports(kv_on_device);
  if (std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      Cat("KV transport ", TransportKindName(kind), " is not available to a worker whose KV is in ",
          kv_on_device ? "device" : "host", " memory in this build (it offers: ", Names(kinds),
          ")"));
}

std::string DeviceUuid(int device) {
#if TANDEM_HAVE_CUDA_IPC
  cudaDeviceProp prop;
  if (device < 0 || cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "";
  const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  std::string hex;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) hex += '-';
    absl::StrAppend(&hex, absl::Hex(b[i], absl::kZeroPad2));
  }
  return Cat("GPU-", hex);
#else
  (void)device;
  return "";
#endif
}

absl::StatusOr<std::unique_ptr<DataPathListener>> DataPathListener::Listen(
    TransportKind kind, const DataPathOptions& options) {
  switch (kind) {
    case TransportKind::kTcp: {
      auto listener = std::make_unique<TcpDataPathListener>();
      RETURN_IF_ERROR(listener->Init(options));
      return std::unique_ptr<DataPathListener>(std::move(listener));
    }
    case TransportKind::kCudaIpc: {
#if TANDEM_HAVE_CUDA_IPC
      auto listener = std::make_unique<CudaIpcDataPathListener>(options.device);
      RETURN_IF_ERROR(listener->Init());
      return std::unique_ptr<DataPathListener>(std::move(listener));
#else
      break;
#endif
    }
    case TransportKind::kNccl: {
#if TANDEM_HAVE_NCCL
      auto listener = std::make_unique<NcclDataPathListener>(options.device);
      RETURN_IF_ERROR(listener->Init());
      return std::unique_ptr<DataPathListener>(std::move(listener));
#else
      break;
#endif
    }
  }
  return absl::UnimplementedError(
      Cat("this build has no ", TransportKindName(kind), " KV transport"));
}

absl::StatusOr<std::unique_ptr<Transport>> ConnectDataPath(TransportKind kind,
                                                           std::string_view address,
                                                           std::string_view token,
                                                           const DataPathOptions& options,
                                                           absl::Time deadline) {
  switch (kind) {
    case TransportKind::kTcp: {
      std::string host;
      int port = 0;
      RETURN_IF_ERROR(SplitHostPort(address, &host, &port));
      TcpTransportOptions tcp;
      tcp.connect_timeout = std::max(deadline - absl::Now(), absl::Milliseconds(1));
      ASSIGN_OR_RETURN(std::unique_ptr<TcpTransport> transport,
                       TcpTransport::Connect(host, port, tcp));
      RETURN_IF_ERROR(PresentChannelToken(*transport, token, deadline));
      return std::unique_ptr<Transport>(std::move(transport));
    }
    case TransportKind::kCudaIpc: {
#if TANDEM_HAVE_CUDA_IPC
      CudaIpcTransportOptions ipc;
      ipc.device = options.device;
      ipc.num_slots = kIpcSendSlots;
      ipc.slot_bytes = kIpcSlotBytes;
      ASSIGN_OR_RETURN(std::unique_ptr<CudaIpcTransport> transport,
                       CudaIpcTransport::Connect(std::string(address), ipc, deadline));
      RETURN_IF_ERROR(transport->SendControl(token, deadline));
      return std::unique_ptr<Transport>(std::move(transport));
#else
      break;
#endif
    }
    case TransportKind::kNccl: {
#if TANDEM_HAVE_NCCL
      const bool hex = !address.empty() && address.size() % 2 == 0 &&
                       std::all_of(address.begin(), address.end(),
                                   [](char c) { return absl::ascii_isxdigit(c); });
      if (!hex) return absl::InvalidArgumentError("the NCCL unique id is not hex");
      NcclTransportOptions nccl;
      nccl.init_timeout = std::max(deadline - absl::Now(), absl::Milliseconds(1));
      const std::string id =
          absl::HexStringToBytes(absl::string_view(address.data(), address.size()));
      ASSIGN_OR_RETURN(std::unique_ptr<NcclTransport> transport,
                       NcclTransport::Create(id, /*nranks=*/2, /*rank=*/1, options.device, nccl));
      return std::unique_ptr<Transport>(std::move(transport));
#else
      break;
#endif
    }
  }
  return absl::UnimplementedError(
      Cat("this build has no ", TransportKindName(kind), " KV transport"));
}

std::unique_ptr<StagingAllocator> MakeStagingAllocator(TransportKind kind, int device) {
#if TANDEM_HAVE_CUDA_IPC
  if (kind != TransportKind::kTcp) {
    return std::make_unique<CudaStagingAllocator>(device, MemoryKind::kDevice);
  }
  if (device >= 0) return std::make_unique<CudaStagingAllocator>(device, MemoryKind::kHost);
#endif
  return nullptr;
}

}  // namespace tandem
