// LayerReceiver: the decode side of layer-wise KV movement (see layer_sender.h). The
// receiver writes into blocks its caller reserved (KvCacheManager); it owns none of them. A
// failed transfer leaves earlier layers written and the failed layer untouched: the caller
// frees the blocks and the request is retried or failed.
#ifndef TANDEM_KVTRANSFER_LAYER_RECEIVER_H_
#define TANDEM_KVTRANSFER_LAYER_RECEIVER_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtransfer/layer_transfer.h"

namespace tandem {

class LayerReceiver : public LayerTransfer {
 public:
  // `runner` and `transport` must outlive the receiver. `peer_layout` is the sender's.
  static absl::StatusOr<std::unique_ptr<LayerReceiver>> Create(
      ModelRunner* runner, const KvLayout& layout, const KvLayout& peer_layout,
      Transport* transport, const LayerTransferOptions& options = {});

  // Receives `layer` and writes it into the blocks given to Begin (reserved by the caller).
  // FAILED_PRECONDITION without a Begin or out of order; the transport's error otherwise
  // (DATA_LOSS, UNAVAILABLE, DEADLINE_EXCEEDED), after which the transfer is over and the
  // layer was not written.
  absl::Status RecvLayer(int layer, absl::Time deadline);

  // RecvLayer for every layer not received yet.
  absl::Status RecvRemainingLayers(absl::Time deadline);

 private:
  using LayerTransfer::LayerTransfer;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_LAYER_RECEIVER_H_
