#include "kvtransfer/crc32c.h"

#include <array>
#include <cstring>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace tandem {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // 0x1EDC6F41 bit-reversed

// A linear map on the 32-bit CRC register: column i is the image of bit i.
using Gf2Matrix = std::array<uint32_t, 32>;

uint32_t Apply(const Gf2Matrix& m, uint32_t v) {
  uint32_t out = 0;
  for (int i = 0; v != 0; ++i, v >>= 1) {
    if (v & 1) out ^= m[i];
  }
  return out;
}

Gf2Matrix Multiply(const Gf2Matrix& a, const Gf2Matrix& b) {
  Gf2Matrix c;
  for (int i = 0; i < 32; ++i) c[i] = Apply(a, b[i]);
  return c;
}

// Tables that advance a raw CRC register over `bytes` zero bytes, one table per byte of the
// register: the register-level equivalent of appending zeros, which combines interleaved
// streams (crc(A || B) = Shift(crc(A), |B|) ^ crc_from_zero(B)).
struct ZeroShift {
  uint32_t table[4][256];

  explicit ZeroShift(int64_t bytes) {
    Gf2Matrix step;  // one zero bit
    step[0] = kPoly;
    for (int i = 1; i < 32; ++i) step[i] = 1u << (i - 1);
    Gf2Matrix op;
    for (int i = 0; i < 32; ++i) op[i] = 1u << i;
    for (int64_t e = 8 * bytes; e != 0; e >>= 1) {
      if (e & 1) op = Multiply(step, op);
      step = Multiply(step, step);
    }
    for (int k = 0; k < 4; ++k) {
      for (uint32_t b = 0; b < 256; ++b) table[k][b] = Apply(op, b << (8 * k));
    }
  }

  uint32_t Shift(uint32_t crc) const {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^
           table[3][crc >> 24];
  }
};

struct ByteTable {
  uint32_t table[256];
  ByteTable() {
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1)));
      table[n] = c;
    }
  }
};

const ByteTable& Table() {
  static const ByteTable* const table = new ByteTable();
  return *table;
}

#if defined(__SSE4_2__)
constexpr int64_t kLong = 8192;
constexpr int64_t kShort = 256;

const ZeroShift& LongShift() {
  static const ZeroShift* const shift = new ZeroShift(kLong);
  return *shift;
}
const ZeroShift& ShortShift() {
  static const ZeroShift* const shift = new ZeroShift(kShort);
  return *shift;
}

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Three independent crc32 streams hide the instruction's 3-cycle latency.
template <int64_t kLen>
uint32_t ThreeStreams(uint32_t crc0, const uint8_t*& next, size_t& size, const ZeroShift& shift) {
  while (size >= 3 * kLen) {
    uint64_t c0 = crc0, c1 = 0, c2 = 0;
    const uint8_t* end = next + kLen;
    do {
      c0 = _mm_crc32_u64(c0, Load64(next));
      c1 = _mm_crc32_u64(c1, Load64(next + kLen));
      c2 = _mm_crc32_u64(c2, Load64(next + 2 * kLen));
      next += 8;
    } while (next < end);
    crc0 = shift.Shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
    crc0 = shift.Shift(crc0) ^ static_cast<uint32_t>(c2);
    next += 2 * kLen;
    size -= 3 * kLen;
  }
  return crc0;
}

uint32_t ExtendHardware(uint32_t crc, const uint8_t* next, size_t size) {
  uint32_t c = ~crc;
  while (size > 0 && (reinterpret_cast<uintptr_t>(next) & 7) != 0) {
    c = _mm_crc32_u8(c, *next++);
    --size;
  }
  c = ThreeStreams<kLong>(c, next, size, LongShift());
  c = ThreeStreams<kShort>(c, next, size, ShortShift());
  uint64_t c64 = c;
  for (; size >= 8; size -= 8, next += 8) c64 = _mm_crc32_u64(c64, Load64(next));
  c = static_cast<uint32_t>(c64);
  for (; size > 0; --size) c = _mm_crc32_u8(c, *next++);
  return ~c;
}
#endif  // __SSE4_2__

}  // namespace

uint32_t Crc32cExtendPortable(uint32_t crc, const void* data, size_t size) {
  const uint32_t* table = Table().table;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t size) {
#if defined(__SSE4_2__)
  return ExtendHardware(crc, static_cast<const uint8_t*>(data), size);
#else
  return Crc32cExtendPortable(crc, data, size);
#endif
}

}  // namespace tandem
