#include "kvtransfer/layer_receiver.h"

#include <utility>

#include "absl/strings/str_cat.h"
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

LayerReceiver::LayerReceiver(ModelRunner* runner, const KvLayout& layout, Transport* transport,
                             const LayerTransferOptions& options)
    : runner_(runner),
      layout_(layout),
      transport_(transport),
      staging_(runner->kv_on_device(), options.device_allocator) {}

int64_t LayerReceiver::layer_bytes() const {
  return runner_->KvLayerBytes(static_cast<int64_t>(blocks_.size()));
}

absl::Status LayerReceiver::Begin(absl::Span<const int32_t> blocks, int64_t num_tokens) {
  active_ = false;
  RETURN_IF_ERROR(CheckTransferBlocks(*runner_, blocks, num_tokens));
  blocks_.assign(blocks.begin(), blocks.end());
  RETURN_IF_ERROR(staging_.Reserve(layer_bytes()).status());
  next_layer_ = 0;
  active_ = true;
  return absl::OkStatus();
}

absl::Status LayerReceiver::RecvLayer(int layer, absl::Time deadline) {
  if (!active_) {
    return absl::FailedPreconditionError("LayerReceiver::RecvLayer without a transfer in progress");
  }
  if (layer != next_layer_) {
    return absl::FailedPreconditionError(absl::StrCat("LayerReceiver::RecvLayer(", layer,
                                                      "): layers go in order, layer ", next_layer_,
                                                      " is next (of ", layout_.n_layers, ")"));
  }
  const int64_t bytes = layer_bytes();
  ASSIGN_OR_RETURN(void* staging, staging_.Reserve(bytes));
  // NOTE: the bytes land in staging first, so a transfer that fails midway never leaves a
  // half-written layer in the cache.
  absl::Status status = transport_->Recv(staging, bytes, deadline);
  if (status.ok()) status = runner_->WriteKvLayer(layer, blocks_, staging);
  if (!status.ok()) {
    active_ = false;
    return status;
  }
  ++next_layer_;
  return absl::OkStatus();
}

absl::Status LayerReceiver::RecvRemainingLayers(absl::Time deadline) {
  if (!active_) {
    return absl::FailedPreconditionError(
        "LayerReceiver::RecvRemainingLayers without a transfer in progress");
  }
  while (next_layer_ < layout_.n_layers) RETURN_IF_ERROR(RecvLayer(next_layer_, deadline));
  return absl::OkStatus();
}

}  // namespace tandem
