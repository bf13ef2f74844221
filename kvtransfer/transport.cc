#include "kvtransfer/transport.h"

#include "common/strings.h"

namespace tandem {

std::string_view TransportKindName(TransportKind kind) {
  switch (kind) {
    case TransportKind::kTcp:
      return "tcp";
    case TransportKind::kNccl:
      return "nccl";
    case TransportKind::kCudaIpc:
      return "cuda_ipc";
  }
  return "unknown";
}

absl::Status CheckNcclPeers(std::string_view local_device_uuid,
                            std::string_view peer_device_uuid) {
  if (local_device_uuid.empty() || local_device_uuid != peer_device_uuid) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      Cat("both ends of the nccl KV channel use GPU ", local_device_uuid,
          ": NCCL cannot put two ranks on one GPU; workers that share a GPU hand KV over with "
          "--kv-transport cuda_ipc"));
}

}  // namespace tandem
