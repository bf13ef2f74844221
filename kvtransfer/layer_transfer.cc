#include "kvtransfer/layer_transfer.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem {

KvStagingBuffer::KvStagingBuffer(StagingAllocator* allocator) : allocator_(allocator) {}

KvStagingBuffer::~KvStagingBuffer() {
  if (allocated_ != nullptr) allocator_->Free(allocated_);
}

absl::StatusOr<void*> KvStagingBuffer::Reserve(int64_t bytes) {
  if (allocator_ == nullptr) {
    if (bytes > capacity_) {
      host_.resize(bytes);
      capacity_ = bytes;
    }
    return static_cast<void*>(host_.data());
  }
  if (bytes <= capacity_) return allocated_;
  // Grown to a power of two (at least 1 MiB), so a channel's growing prompts reallocate a
  // few times, not on every longer one: cudaFree waits for the whole device, the decode
  // step in flight included.
  int64_t grown = int64_t{1} << 20;
  while (grown < bytes) grown *= 2;
  if (allocated_ != nullptr) allocator_->Free(allocated_);
  allocated_ = nullptr;
  capacity_ = 0;
  ASSIGN_OR_RETURN(allocated_, allocator_->Allocate(grown));
  capacity_ = grown;
  return allocated_;
}

absl::Status CheckLayerTransferSetup(const ModelRunner& runner, const KvLayout& local,
                                     const KvLayout& peer, const Transport& transport,
                                     const LayerTransferOptions& options) {
  const KvLayout actual = KvLayout::For(runner.config(), runner.block_size(), runner.kv_dtype());
  if (absl::Status s = actual.CheckCompatible(local); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the local KV layout does not describe the runner's cache (runner vs "
                     "layout): ",
                     s.message()));
  }
  if (runner.KvLayerBytes(1) != local.LayerBlockBytes()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the local KV layout does not describe the runner's cache: ", runner.KvLayerBytes(1),
        " bytes per block and layer in the runner, ", local.LayerBlockBytes(), " in the layout (",
        local.ToString(), ")"));
  }
  RETURN_IF_ERROR(local.CheckCompatible(peer));
  // A host transport serves any runner (a device runner copies through host staging); a
  // device transport needs the KV on the device.
  const bool device_transport = transport.memory() == MemoryKind::kDevice;
  if (device_transport && !runner.kv_on_device()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the runner keeps KV in host memory but the ",
                     std::string(TransportKindName(transport.kind())),
                     " transport moves device memory (run the worker with --device cuda)"));
  }
  if (device_transport && (options.staging_allocator == nullptr ||
                           options.staging_allocator->memory() != MemoryKind::kDevice)) {
    return absl::FailedPreconditionError(
        absl::StrCat("the ", std::string(TransportKindName(transport.kind())),
                     " transport moves device memory: LayerTransferOptions::staging_allocator "
                     "must allocate device memory"));
  }
  if (!device_transport && options.staging_allocator != nullptr &&
      options.staging_allocator->memory() != MemoryKind::kHost) {
    return absl::FailedPreconditionError(
        absl::StrCat("the ", std::string(TransportKindName(transport.kind())),
                     " transport moves host memory: the staging allocator must allocate host "
                     "memory"));
  }
  return absl::OkStatus();
}

absl::Status CheckTransferBlocks(const ModelRunner& runner, absl::Span<const int32_t> blocks,
                                 int64_t num_tokens) {
  if (num_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a KV transfer needs at least one token, got ", num_tokens));
  }
  const int64_t expected = (num_tokens + runner.block_size() - 1) / runner.block_size();
  if (static_cast<int64_t>(blocks.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("a KV transfer of ", num_tokens,
                                                   " tokens needs ", expected, " blocks of ",
                                                   runner.block_size(), ", got ", blocks.size()));
  }
  for (int32_t b : blocks) {
    if (b < 0 || b >= runner.num_kv_blocks()) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV block id ", b, " out of range [0, ", runner.num_kv_blocks(), ")"));
    }
  }
  return absl::OkStatus();
}

LayerTransfer::LayerTransfer(ModelRunner* runner, const KvLayout& layout, Transport* transport,
                             const LayerTransferOptions& options)
    : runner_(runner),
      layout_(layout),
      transport_(transport),
      staging_(options.staging_allocator) {}

int64_t LayerTransfer::layer_bytes() const {
  return runner_->KvLayerBytes(static_cast<int64_t>(blocks_.size()));
}

absl::Status LayerTransfer::Begin(absl::Span<const int32_t> blocks, int64_t num_tokens) {
  active_ = false;
  RETURN_IF_ERROR(CheckTransferBlocks(*runner_, blocks, num_tokens));
  blocks_.assign(blocks.begin(), blocks.end());
  RETURN_IF_ERROR(staging_.Reserve(layer_bytes()).status());
  next_layer_ = 0;
  active_ = true;
  return absl::OkStatus();
}

absl::Status LayerTransfer::MoveLayer(
    std::string_view caller, int layer,
    absl::FunctionRef<absl::Status(void* staging, int64_t bytes)> move) {
  if (!active_) {
    return absl::FailedPreconditionError(Cat(caller, " without a transfer in progress"));
  }
  if (layer != next_layer_) {
    return absl::FailedPreconditionError(Cat(caller, "(", layer, "): layers go in order, layer ",
                                             next_layer_, " is next (of ", layout_.n_layers,
                                             ")"));
  }
  const int64_t bytes = layer_bytes();
  ASSIGN_OR_RETURN(void* staging, staging_.Reserve(bytes));
  if (absl::Status status = move(staging, bytes); !status.ok()) {
    active_ = false;
    return status;
  }
  ++next_layer_;
  return absl::OkStatus();
}

absl::Status LayerTransfer::MoveRemainingLayers(
    std::string_view caller, absl::FunctionRef<absl::Status(int layer)> move_layer) {
  if (!active_) {
    return absl::FailedPreconditionError(Cat(caller, " without a transfer in progress"));
  }
  while (next_layer_ < layout_.n_layers) RETURN_IF_ERROR(move_layer(next_layer_));
  return absl::OkStatus();
}

}  // namespace tandem
