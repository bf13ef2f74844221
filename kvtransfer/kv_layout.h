// What a KV cache looks like on the wire: both ends of a KV channel must agree on it, so it
// travels with a fingerprint and a mismatch is refused when the channel opens.
#ifndef TANDEM_KVTRANSFER_KV_LAYOUT_H_
#define TANDEM_KVTRANSFER_KV_LAYOUT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model_config.h"
#include "kernels/cpu/attention.h"

namespace tandem {

struct KvLayout {
  std::string model_fingerprint;  // ModelConfig::Fingerprint()
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  KvDtype dtype = KvDtype::kF16;

  static KvLayout For(const ModelConfig& config, int block_size, KvDtype dtype);

  int64_t ElementBytes() const { return KvDtypeBytes(dtype); }
  // K and V of one block in one layer.
  int64_t LayerBlockBytes() const {
    return 2ll * block_size * n_kv_heads * head_dim * ElementBytes();
  }
  // A stable hex digest of every field: equal layouts, equal fingerprints, in any process.
  std::string Fingerprint() const;
  std::string ToString() const;
  // FAILED_PRECONDITION naming the first field that differs.
  absl::Status CheckCompatible(const KvLayout& peer) const;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_KV_LAYOUT_H_
