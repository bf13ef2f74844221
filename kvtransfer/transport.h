// The data path of a KV channel: an ordered, two-sided byte pipe between one prefill worker
// and one decode worker. Every Send on one side is matched by a Recv of the same size on the
// other, in the same order — NCCL's model (ncclSend/ncclRecv), which TCP and CUDA IPC honour
// too so the layer-wise sender and receiver are written once. Control (which request, which
// layer, the first token, acks) runs beside it on the channel's gRPC stream.
//
// Memory: kHost transports move host buffers; kDevice transports move device buffers.
// Every call has a deadline: a peer that vanishes or stalls yields DEADLINE_EXCEEDED or
// UNAVAILABLE, never a hang, and the transport is then broken (every later call fails).
#ifndef TANDEM_KVTRANSFER_TRANSPORT_H_
#define TANDEM_KVTRANSFER_TRANSPORT_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tandem {

enum class TransportKind { kTcp, kNccl, kCudaIpc };
std::string_view TransportKindName(TransportKind kind);

// NCCL cannot put both ranks of a communicator on one GPU ("Duplicate GPU detected"):
// FAILED_PRECONDITION, pointing at cuda_ipc, when a nccl channel's two ends name the same
// GPU (DeviceUuid). Empty names (CPU, unknown) pass. The decode worker checks an Open with
// it; the router's placement never pairs such workers.
absl::Status CheckNcclPeers(std::string_view local_device_uuid, std::string_view peer_device_uuid);

enum class MemoryKind { kHost, kDevice };

class Transport {
 public:
  virtual ~Transport() = default;

  virtual TransportKind kind() const = 0;
  virtual MemoryKind memory() const = 0;

  // Sends `bytes` from `src`. Returns once `src` may be reused (the bytes are in flight or
  // delivered). DATA_LOSS from the receiving side is reported by its Recv, not here.
  virtual absl::Status Send(const void* src, int64_t bytes, absl::Time deadline) = 0;
  // Receives exactly `bytes` into `dst`. DATA_LOSS when the length or checksum of what
  // arrived does not match what was sent; the bytes in `dst` must then not be used.
  virtual absl::Status Recv(void* dst, int64_t bytes, absl::Time deadline) = 0;

  // Unblocks and fails every pending and later call (UNAVAILABLE). Thread-safe.
  virtual void Close() = 0;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_TRANSPORT_H_
