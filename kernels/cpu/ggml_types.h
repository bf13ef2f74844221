// The GGML tensor types tandem reads, with their block geometry. Type ids are GGUF's.
#ifndef TANDEM_KERNELS_CPU_GGML_TYPES_H_
#define TANDEM_KERNELS_CPU_GGML_TYPES_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace tandem {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ6_K = 14,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
};

// Traits of a supported type; nullptr for any other raw id (unknown or unsupported).
const GgmlTypeTraits* FindGgmlType(uint32_t raw_type);
// Name for messages, also for unsupported ids ("Q5_K", "type 99").
std::string GgmlTypeName(uint32_t raw_type);
inline std::string GgmlTypeName(GgmlType type) { return GgmlTypeName(static_cast<uint32_t>(type)); }
const GgmlTypeTraits& Traits(GgmlType type);

// Bytes of a row of `n` elements; `n` must be a multiple of the block size.
int64_t RowBytes(GgmlType type, int64_t n);

}  // namespace tandem

#endif  // TANDEM_KERNELS_CPU_GGML_TYPES_H_
