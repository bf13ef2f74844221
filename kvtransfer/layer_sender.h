// Layer-wise KV movement over any Transport: LayerSender runs on the prefill worker,
// LayerReceiver (layer_receiver.h) on the decode worker; layer_transfer.h holds what they
// share. Both are transport-agnostic: they
// pack a sequence's blocks of one layer with ModelRunner::ReadKvLayer into a staging buffer,
// move it with one Send/Recv pair, and unpack it with WriteKvLayer.
//
// One transfer = Begin(blocks, num_tokens), then every layer 0..n_layers-1 in order, on both
// sides. The token count travels on the channel's control stream; both ends derive the
// block count from it, so a sender and a receiver holding different block counts are
// refused before any byte moves. Layers must go in increasing order: every layer has the
// same size on the wire, so a reordering would otherwise go unnoticed.
//
// Thread contract: one thread drives a sender (or receiver) at a time. ReadKvLayer /
// WriteKvLayer are called on that thread: the caller makes sure the runner allows it (the
// blocks involved are not being written by a concurrent forward pass).
#ifndef TANDEM_KVTRANSFER_LAYER_SENDER_H_
#define TANDEM_KVTRANSFER_LAYER_SENDER_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtransfer/layer_transfer.h"

namespace tandem {

class LayerSender : public LayerTransfer {
 public:
  // `runner` and `transport` must outlive the sender. `peer_layout` is the layout the
  // receiver announced (on the control stream's Open).
  static absl::StatusOr<std::unique_ptr<LayerSender>> Create(
      ModelRunner* runner, const KvLayout& layout, const KvLayout& peer_layout,
      Transport* transport, const LayerTransferOptions& options = {});

  // Reads `layer` of the sequence and sends it. FAILED_PRECONDITION without a Begin or out of
  // order; the transport's error otherwise (the transfer is then over).
  absl::Status SendLayer(int layer, absl::Time deadline);

  // SendLayer for every layer not sent yet.
  absl::Status SendRemainingLayers(absl::Time deadline);

 private:
  using LayerTransfer::LayerTransfer;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_LAYER_SENDER_H_
