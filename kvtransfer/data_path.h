// The data connection of a KV channel, beside its control stream (docs/SERVING.md, The KV
// channel): the decode worker opens a DataPathListener for one channel and publishes its
// address and token in the Open reply; the prefill worker connects with ConnectDataPath.
// Both ends then hold a Transport (kvtransfer/transport.h) for LayerSender / LayerReceiver.
//
//   tcp       any runner; host staging. Address host:port, a listener for this channel
//             alone; the prefill side presents the token first (kvtransfer/channel_token.h).
//   cuda_ipc  device runners in two processes on one node (one GPU included): a
//             CudaIpcTransport; the address names a Unix socket in the abstract namespace,
//             and the prefill side presents the token as the first control message.
//   nccl      device runners on different GPUs: a 2-rank NCCL communicator, rank 0 the
//             decode side. The address is the ncclUniqueId in hex (it names a bootstrap
//             socket of the decode process); knowing it is what admits the peer, so the
//             token is not used.
//
// cuda_ipc and nccl exist where the build has CUDA (and NCCL); AvailableTransports says
// what this binary can open.
#ifndef TANDEM_KVTRANSFER_DATA_PATH_H_
#define TANDEM_KVTRANSFER_DATA_PATH_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtransfer/layer_transfer.h"
#include "kvtransfer/transport.h"

namespace tandem {

struct DataPathOptions {
  int device = 0;                       // cuda_ipc, nccl: the runner's CUDA device
  std::string listen_host = "0.0.0.0";  // tcp: where the decode side listens
  std::string advertise_host = "127.0.0.1";  // tcp: the host in the published address
};

// "tcp", "cuda_ipc" or "nccl" (TransportKindName); INVALID_ARGUMENT naming the text and the
// choices otherwise.
absl::StatusOr<TransportKind> ParseTransportKind(std::string_view name);
// The transports this binary can open for a runner whose KV is (or is not) on a device, in
// order of preference: tcp always; cuda_ipc and nccl for a device runner in a CUDA build.
std::vector<TransportKind> AvailableTransports(bool kv_on_device);
// FAILED_PRECONDITION naming what is offered when `kind` is not available.
absl::Status CheckTransportAvailable(TransportKind kind, bool kv_on_device);

// The GPU a runner on CUDA device `device` uses, as nvidia-smi names it ("GPU-8-4-4-4-12"
// hex digits of its UUID); empty for the CPU (device < 0), in a build without CUDA, or when
// the device cannot be queried.
std::string DeviceUuid(int device);

class DataPathListener {
 public:
  // UNIMPLEMENTED when this build lacks `kind`; the transport's error otherwise.
  static absl::StatusOr<std::unique_ptr<DataPathListener>> Listen(TransportKind kind,
                                                                  const DataPathOptions& options);
  virtual ~DataPathListener() = default;

  TransportKind kind() const { return kind_; }
  // Published to the prefill side in the Open reply.
  const std::string& address() const { return address_; }
  const std::string& token() const { return token_; }
  // The one peer of this channel. DEADLINE_EXCEEDED when it does not arrive (or, for tcp
  // and cuda_ipc, does not present the token) by `deadline`; connections that present a
  // wrong token are closed and logged.
  virtual absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) = 0;

 protected:
  explicit DataPathListener(TransportKind kind) : kind_(kind) {}
  TransportKind kind_;
  std::string address_;
  std::string token_;
};

// The prefill side: connects to what a DataPathListener published, by `deadline`.
absl::StatusOr<std::unique_ptr<Transport>> ConnectDataPath(TransportKind kind,
                                                           std::string_view address,
                                                           std::string_view token,
                                                           const DataPathOptions& options,
                                                           absl::Time deadline);

// The memory LayerTransfer stages a layer in (LayerTransferOptions::staging_allocator) for a
// runner on `device` (ModelRunner::device(); -1: the CPU) and a `kind` transport: device
// memory for cuda_ipc and nccl; for tcp, pinned host memory with a device runner, null
// (ordinary host memory) with the CPU runner or in a build without CUDA. Lives as long as
// the senders and receivers that use it.
std::unique_ptr<StagingAllocator> MakeStagingAllocator(TransportKind kind, int device);

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_DATA_PATH_H_
