#include "kvtransfer/crc32c.h"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  uint64_t x = seed;
  for (size_t i = 0; i < n; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    out[i] = static_cast<uint8_t>(x >> 56);
  }
  return out;
}

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32cExtendPortable(0, "123456789", 9), 0xE3069283u);
  // RFC 3720 (iSCSI) B.4.
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(Crc32c(ascending), 0x46DD794Eu);
}

// The three-stream path, the tail loops and the alignment prologue against the table, at
// every length around the stream boundaries and at every alignment.
TEST(Crc32cTest, HardwareMatchesPortable) {
  const std::vector<uint8_t> data = RandomBytes(3 * 8192 * 3 + 4096, 7);
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 200; ++n) lengths.push_back(n);
  for (size_t n : {767, 768, 769, 3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 768 + 13,
                   2 * 3 * 8192 + 5, 3 * 3 * 8192 + 4000}) {
    lengths.push_back(n);
  }
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n : lengths) {
      ASSERT_LE(offset + n, data.size());
      EXPECT_EQ(Crc32cExtend(0x12345678, data.data() + offset, n),
                Crc32cExtendPortable(0x12345678, data.data() + offset, n))
          << "offset " << offset << " length " << n;
    }
  }
}

TEST(Crc32cTest, ExtendComposes) {
  const std::vector<uint8_t> data = RandomBytes(100000, 3);
  const uint32_t whole = Crc32c(data.data(), data.size());
  for (size_t split : {0, 1, 7, 4096, 50001, 99999, 100000}) {
    const uint32_t head = Crc32c(data.data(), split);
    EXPECT_EQ(Crc32cExtend(head, data.data() + split, data.size() - split), whole) << split;
  }
  std::vector<uint8_t> flipped = data;
  flipped[31337] ^= 0x10;
  EXPECT_NE(Crc32c(flipped.data(), flipped.size()), whole);
}

// Prints, does not assert: the checksum must stay well above TCP loopback speed.
TEST(Crc32cTest, Throughput) {
  const std::vector<uint8_t> data = RandomBytes(64 << 20, 5);
  uint32_t sink = 0;
  absl::Time start = absl::Now();
  for (int i = 0; i < 4; ++i) sink ^= Crc32c(data.data(), data.size());
  const double fast = 4.0 * data.size() / absl::ToDoubleSeconds(absl::Now() - start) / 1e9;
  start = absl::Now();
  sink ^= Crc32cExtendPortable(0, data.data(), data.size());
  const double portable = 1.0 * data.size() / absl::ToDoubleSeconds(absl::Now() - start) / 1e9;
  std::printf("crc32c: %.2f GB/s, portable table: %.2f GB/s (%08x)\n", fast, portable, sink);
}

}  // namespace
}  // namespace tandem
