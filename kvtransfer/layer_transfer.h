// Layer-wise KV movement over any Transport: LayerSender (layer_sender.h) runs on the
// prefill worker, LayerReceiver (layer_receiver.h) on the decode worker. Both are
// transport-agnostic: they pack a sequence's blocks of one layer with
// ModelRunner::ReadKvLayer into a staging buffer, move it with one Send/Recv pair, and
// unpack it with WriteKvLayer.
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
#ifndef TANDEM_KVTRANSFER_LAYER_TRANSFER_H_
#define TANDEM_KVTRANSFER_LAYER_TRANSFER_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/model_runner.h"
#include "kvtransfer/kv_layout.h"
#include "kvtransfer/transport.h"

namespace tandem {

// Memory for the staging buffer, from the CUDA side (kvtransfer/data_path.h,
// MakeStagingAllocator): device memory for a device transport; pinned host memory for a
// device runner on a host transport, so that its KV copies are DMA the copy engine runs on
// its own (pageable memory makes the driver copy through a bounce buffer, synchronously).
class StagingAllocator {
 public:
  virtual ~StagingAllocator() = default;
  virtual MemoryKind memory() const = 0;
  virtual absl::StatusOr<void*> Allocate(int64_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
};

struct LayerTransferOptions {
  // Required with a device-memory transport (an allocator of device memory); optional with
  // a host transport (pinned host memory; null: ordinary host memory). Must outlive the
  // sender/receiver.
  StagingAllocator* staging_allocator = nullptr;
};

// One reusable staging buffer, grown to the largest layer seen: from `allocator` when there
// is one (rounded up to a power of two), else in ordinary host memory.
class KvStagingBuffer {
 public:
  explicit KvStagingBuffer(StagingAllocator* allocator);
  ~KvStagingBuffer();
  KvStagingBuffer(const KvStagingBuffer&) = delete;
  KvStagingBuffer& operator=(const KvStagingBuffer&) = delete;

  // A buffer of at least `bytes` bytes, valid until the next Reserve.
  absl::StatusOr<void*> Reserve(int64_t bytes);
  int64_t capacity() const { return capacity_; }

 private:
  StagingAllocator* const allocator_;
  std::vector<uint8_t> host_;  // [capacity_] without an allocator
  void* allocated_ = nullptr;  // [capacity_] from the allocator
  int64_t capacity_ = 0;
};

// Checks what both ends need before a channel carries KV: `local` describes `runner`'s
// cache, `peer` is compatible with it (FAILED_PRECONDITION naming the field otherwise), and
// the transport can reach the runner's KV (a device-memory transport needs a device runner;
// a host transport serves both, through host staging).
absl::Status CheckLayerTransferSetup(const ModelRunner& runner, const KvLayout& local,
                                     const KvLayout& peer, const Transport& transport,
                                     const LayerTransferOptions& options);

// Checks a transfer's blocks: ceil(num_tokens / block_size) of them, each a valid id of
// `runner`'s cache. INVALID_ARGUMENT otherwise.
absl::Status CheckTransferBlocks(const ModelRunner& runner, absl::Span<const int32_t> blocks,
                                 int64_t num_tokens);

// What a sender and a receiver share: the transfer's blocks, the staging buffer, and the
// in-order walk over the layers. Subclasses supply the per-layer move.
class LayerTransfer {
 public:
  virtual ~LayerTransfer() = default;
  LayerTransfer(const LayerTransfer&) = delete;
  LayerTransfer& operator=(const LayerTransfer&) = delete;

  // Starts the transfer of one sequence whose `num_tokens` tokens of KV live in (or go to)
  // `blocks`, in token order: exactly ceil(num_tokens / block_size) of them.
  // INVALID_ARGUMENT otherwise.
  absl::Status Begin(absl::Span<const int32_t> blocks, int64_t num_tokens);

  // Whether every layer of the current transfer has moved.
  bool done() const { return active_ && next_layer_ == layout_.n_layers; }
  int64_t layer_bytes() const;
  const KvLayout& layout() const { return layout_; }

 protected:
  LayerTransfer(ModelRunner* runner, const KvLayout& layout, Transport* transport,
                const LayerTransferOptions& options);

  // Runs `move(staging, bytes)` for `layer` after checking that a transfer is in progress
  // and `layer` is the next one (FAILED_PRECONDITION naming `caller` otherwise). A failed
  // move ends the transfer.
  absl::Status MoveLayer(std::string_view caller, int layer,
                         absl::FunctionRef<absl::Status(void* staging, int64_t bytes)> move);
  // `move_layer(layer)` for every layer not moved yet.
  absl::Status MoveRemainingLayers(std::string_view caller,
                                   absl::FunctionRef<absl::Status(int layer)> move_layer);

  ModelRunner* const runner_;
  const KvLayout layout_;
  Transport* const transport_;
  std::vector<int32_t> blocks_;

 private:
  KvStagingBuffer staging_;  // [layer_bytes()]: K then V of the blocks
  bool active_ = false;      // between a Begin and a failure
  int next_layer_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_LAYER_TRANSFER_H_
