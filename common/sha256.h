// SHA-256 (FIPS 180-4), for verifying downloaded model files.
#ifndef TANDEM_COMMON_SHA256_H_
#define TANDEM_COMMON_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tandem {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  // The digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> Finish();
  // Finish() as 64 lowercase hex digits.
  std::string FinishHex();

 private:
  void Compress(const uint8_t* block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string Sha256Hex(std::string_view data);
// Streams the file; NOT_FOUND / UNAVAILABLE naming the path on failure.
absl::StatusOr<std::string> Sha256FileHex(const std::string& path);

}  // namespace tandem

#endif  // TANDEM_COMMON_SHA256_H_
