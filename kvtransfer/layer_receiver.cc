#include "kvtransfer/layer_receiver.h"

#include "common/logging.h"
#include "common/status_macros.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<LayerReceiver>> LayerReceiver::Create(
    ModelRunner* runner, const KvLayout& layout, const KvLayout& peer_layout, Transport* transport,
    const LayerTransferOptions& options) {
  CHECK(runner != nullptr);
  CHECK(transport != nullptr);
  RETURN_IF_ERROR(CheckLayerTransferSetup(*runner, layout, peer_layout, *transport, options));
  return std::unique_ptr<LayerReceiver>(new LayerReceiver(runner, layout, transport, options));
}

absl::Status LayerReceiver::RecvLayer(int layer, absl::Time deadline) {
  return MoveLayer("LayerReceiver::RecvLayer", layer, [&](void* staging, int64_t bytes) {
    // NOTE: the bytes land in staging first, so a transfer that fails midway never leaves a
    // half-written layer in the cache.
    RETURN_IF_ERROR(transport_->Recv(staging, bytes, deadline));
    return runner_->WriteKvLayer(layer, blocks_, staging);
  });
}

absl::Status LayerReceiver::RecvRemainingLayers(absl::Time deadline) {
  return MoveRemainingLayers("LayerReceiver::RecvRemainingLayers",
                             [&](int layer) { return RecvLayer(layer, deadline); });
}

}  // namespace tandem
