#include "kvtransfer/layer_sender.h"

#include "common/logging.h"
#include "common/status_macros.h"

namespace tandem {

absl::StatusOr<std::unique_ptr<LayerSender>> LayerSender::Create(
    ModelRunner* runner, const KvLayout& layout, const KvLayout& peer_layout, Transport* transport,
    const LayerTransferOptions& options) {
  CHECK(runner != nullptr);
  CHECK(transport != nullptr);
  RETURN_IF_ERROR(CheckLayerTransferSetup(*runner, layout, peer_layout, *transport, options));
  return std::unique_ptr<LayerSender>(new LayerSender(runner, layout, transport, options));
}

absl::Status LayerSender::SendLayer(int layer, absl::Time deadline) {
  return MoveLayer("LayerSender::SendLayer", layer, [&](void* staging, int64_t bytes) {
    RETURN_IF_ERROR(runner_->ReadKvLayer(layer, blocks_, staging));
    return transport_->Send(staging, bytes, deadline);
  });
}

absl::Status LayerSender::SendRemainingLayers(absl::Time deadline) {
  return MoveRemainingLayers("LayerSender::SendRemainingLayers",
                             [&](int layer) { return SendLayer(layer, deadline); });
}

}  // namespace tandem
