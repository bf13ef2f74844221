// CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected), the checksum of iSCSI, ext4 and
// gRPC's transport tests: Crc32c("123456789") == 0xE3069283. Used to check every KV frame
// that crosses a TCP transport.
#ifndef TANDEM_KVTRANSFER_CRC32C_H_
#define TANDEM_KVTRANSFER_CRC32C_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

// Extends `crc` (the Crc32c of the preceding bytes; 0 for none) with `size` more bytes, so
// that Crc32cExtend(Crc32c(a), b) == Crc32c(a + b). Uses the SSE4.2 crc32 instruction
// (three interleaved streams) where the CPU has it, a table otherwise. Thread-safe.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size);

inline uint32_t Crc32c(const void* data, size_t size) { return Crc32cExtend(0, data, size); }
inline uint32_t Crc32c(std::string_view data) { return Crc32c(data.data(), data.size()); }

// The portable table implementation, whatever the CPU: the reference the tests compare the
// hardware path against.
uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t size);

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_CRC32C_H_
