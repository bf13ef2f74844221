// LayerReceiver: the decode side of layer-wise KV movement (see layer_sender.h). The
// receiver writes into blocks its caller reserved (KvCacheManager); it owns none of them. A
// failed transfer leaves earlier layers written and the failed layer untouched: the caller
// frees the blocks and the request is retried or failed.
#ifndef TANDEM_KVTRANSFER_LAYER_RECEIVER_H_
#define TANDEM_KVTRANSFER_LAYER_RECEIVER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/model_runner.h"
#include "kvtransfer/kv_layout.h"
#include "kvtransfer/layer_sender.h"
#include "kvtransfer/transport.h"

namespace tandem {

class LayerReceiver {
 public:
  // `runner` and `transport` must outlive the receiver. `peer_layout` is the sender's.
  static absl::StatusOr<std::unique_ptr<LayerReceiver>> Create(
      ModelRunner* runner, const KvLayout& layout, const KvLayout& peer_layout,
      Transport* transport, const LayerTransferOptions& options = {});

  // Starts receiving one sequence of `num_tokens` tokens into `blocks` (reserved by the
  // caller, in token order, exactly ceil(num_tokens / block_size)). INVALID_ARGUMENT
  // otherwise.
  absl::Status Begin(absl::Span<const int32_t> blocks, int64_t num_tokens);

  // Receives `layer` and writes it into the blocks. FAILED_PRECONDITION without a Begin or
  // out of order; the transport's error otherwise (DATA_LOSS, UNAVAILABLE,
  // DEADLINE_EXCEEDED), after which the transfer is over and the layer was not written.
  absl::Status RecvLayer(int layer, absl::Time deadline);

  // RecvLayer for every layer not received yet.
  absl::Status RecvRemainingLayers(absl::Time deadline);

  // Whether every layer of the current transfer has arrived.
  bool done() const { return active_ && next_layer_ == layout_.n_layers; }
  int64_t layer_bytes() const;
  const KvLayout& layout() const { return layout_; }

 private:
  LayerReceiver(ModelRunner* runner, const KvLayout& layout, Transport* transport,
                const LayerTransferOptions& options);

  ModelRunner* const runner_;
  const KvLayout layout_;
  Transport* const transport_;
  KvStagingBuffer staging_;  // [layer_bytes()]: K then V of the blocks
  std::vector<int32_t> blocks_;
  bool active_ = false;
  int next_layer_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_LAYER_RECEIVER_H_
