#include "kvtransfer/kv_layout.h"

#include "absl/strings/str_cat.h"
#include "common/sha256.h"

namespace tandem {

KvLayout KvLayout::For(const ModelConfig& config, int block_size, KvDtype dtype) {
  KvLayout layout;
  layout.model_fingerprint = config.Fingerprint();
  layout.n_layers = config.n_layers;
  layout.n_kv_heads = config.n_kv_heads;
  layout.head_dim = config.head_dim;
  layout.block_size = block_size;
  layout.dtype = dtype;
  return layout;
}

std::string KvLayout::Fingerprint() const {
  // Versioned and labelled so that a new field or a changed encoding never collides with an
  // old digest.
  const std::string canonical =
      absl::StrCat("tandem.kv_layout.v1\nmodel=", model_fingerprint, "\nn_layers=", n_layers,
                   "\nn_kv_heads=", n_kv_heads, "\nhead_dim=", head_dim,
                   "\nblock_size=", block_size, "\ndtype=", KvDtypeName(dtype), "\n");
  return Sha256Hex(canonical);
}

std::string KvLayout::ToString() const {
  return absl::StrCat("KV layout of ", model_fingerprint, ": ", n_layers, " layers, ", n_kv_heads,
                      " kv heads, head dim ", head_dim, ", block size ", block_size, ", ",
                      KvDtypeName(dtype));
}

absl::Status KvLayout::CheckCompatible(const KvLayout& peer) const {
  auto mismatch = [](const char* field, const auto& here, const auto& there) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV layout mismatch: ", field, " ", here, " here, ", there, " at the peer"));
  };
  // Shape fields first: they say more than the model fingerprint, which covers them too.
  if (n_layers != peer.n_layers) return mismatch("n_layers", n_layers, peer.n_layers);
  if (n_kv_heads != peer.n_kv_heads) return mismatch("n_kv_heads", n_kv_heads, peer.n_kv_heads);
  if (head_dim != peer.head_dim) return mismatch("head_dim", head_dim, peer.head_dim);
  if (block_size != peer.block_size) return mismatch("block_size", block_size, peer.block_size);
  if (dtype != peer.dtype) return mismatch("dtype", KvDtypeName(dtype), KvDtypeName(peer.dtype));
  if (model_fingerprint != peer.model_fingerprint) {
    return mismatch("model_fingerprint", model_fingerprint, peer.model_fingerprint);
  }
  return absl::OkStatus();
}

}  // namespace tandem
