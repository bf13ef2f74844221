#include "kernels/cpu/quant.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ggml_types.h"

namespace tandem {
namespace {

std::vector<float> RandomRow(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

TEST(HalfTest, KnownValues) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN payloads
    EXPECT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: goes up to even.
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
}

TEST(QuantTest, Q4_0KnownBlock) {
  // d = 0.5 (fp16 0x3800); qs[j] = j | (15 - j) << 4.
  uint8_t block[18];
  block[0] = 0x00;
  block[1] = 0x38;
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  DequantizeRow(GgmlType::kQ4_0, block, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], (j - 8) * 0.5f);
    EXPECT_EQ(out[j + 16], (15 - j - 8) * 0.5f);
  }
}

TEST(QuantTest, Q4_1KnownBlock) {
  // d = 0.25 (0x3400), m = -1 (0xbc00).
  uint8_t block[20] = {0x00, 0x34, 0x00, 0xbc};
  for (int j = 0; j < 16; ++j) block[4 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  DequantizeRow(GgmlType::kQ4_1, block, out, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], j * 0.25f - 1.0f);
    EXPECT_EQ(out[j + 16], (15 - j) * 0.25f - 1.0f);
  }
}

TEST(QuantTest, Q8_0KnownBlock) {
  uint8_t block[34] = {0x00, 0x40};  // d = 2
  for (int j = 0; j < 32; ++j) block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  float out[32];
  DequantizeRow(GgmlType::kQ8_0, block, out, 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], (j - 16) * 2.0f);
}

TEST(QuantTest, Q6_KKnownBlock) {
  // Build the block by hand from ggml's layout: level q (0..63) of element i sits in
  // ql/qh as documented in DequantizeQ6_K; value = d * scales[i / 16] * (q - 32).
  uint8_t block[210] = {};
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  int8_t* scales = reinterpret_cast<int8_t*>(block + 192);
  block[208] = 0x00;
  block[209] = 0x3c;  // d = 1
  int levels[256];
  for (int i = 0; i < 256; ++i) levels[i] = (i * 7 + 3) % 64;
  for (int s = 0; s < 16; ++s) scales[s] = static_cast<int8_t>(s - 8);
  for (int i = 0; i < 256; ++i) {
    const int half = i / 128, k = (i % 128) / 32, l = i % 32;
    const int q = levels[i];
    uint8_t& low = ql[64 * half + l + 32 * (k & 1)];
    low |= static_cast<uint8_t>((q & 0xf) << (k >= 2 ? 4 : 0));
    qh[32 * half + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
  }
  float out[256];
  DequantizeRow(GgmlType::kQ6_K, block, out, 256);
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(out[i], static_cast<float>((i / 16 - 8) * (levels[i] - 32))) << i;
  }
}

struct RoundTripCase {
  GgmlType type;
  float max_rel_rms;  // RMS error relative to the RMS of the input
};

class QuantRoundTripTest : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(QuantRoundTripTest, ErrorWithinBound) {
  const RoundTripCase c = GetParam();
  const int64_t n = 512;
  std::vector<float> x = RandomRow(n, 42);
  std::vector<uint8_t> q(RowBytes(c.type, n));
  std::vector<float> y(n);
  QuantizeRow(c.type, x.data(), q.data(), n);
  DequantizeRow(c.type, q.data(), y.data(), n);
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < n; ++i) {
    err2 += (x[i] - y[i]) * (x[i] - y[i]);
    ref2 += x[i] * x[i];
  }
  EXPECT_LE(std::sqrt(err2 / ref2), c.max_rel_rms) << GgmlTypeName(c.type);

  // Quantizing the dequantized row again must reproduce it (the levels are stable).
  std::vector<uint8_t> q2(q.size());
  std::vector<float> y2(n);
  QuantizeRow(c.type, y.data(), q2.data(), n);
  DequantizeRow(c.type, q2.data(), y2.data(), n);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y2[i], y[i], 1e-2f * std::fabs(y[i]) + 1e-3f);
}

// Bounds: uniform quantization error is step/sqrt(12); 4-bit steps over ±~2.5σ blocks give
// ~9% (Q4_0, sign-preserving scale) and ~7% (Q4_1); 8 bits ~0.6%; 6-bit K-quants ~2%.
INSTANTIATE_TEST_SUITE_P(
    AllTypes, QuantRoundTripTest,
    ::testing::Values(RoundTripCase{GgmlType::kF32, 0.0f}, RoundTripCase{GgmlType::kF16, 5e-4f},
                      RoundTripCase{GgmlType::kBF16, 4e-3f}, RoundTripCase{GgmlType::kQ4_0, 0.12f},
                      RoundTripCase{GgmlType::kQ4_1, 0.10f}, RoundTripCase{GgmlType::kQ8_0, 0.01f},
                      RoundTripCase{GgmlType::kQ6_K, 0.03f}));

TEST(QuantTest, ZeroBlocksStayZero) {
  for (GgmlType t : {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ6_K}) {
    std::vector<float> x(256, 0.0f), y(256, 1.0f);
    std::vector<uint8_t> q(RowBytes(t, 256));
    QuantizeRow(t, x.data(), q.data(), 256);
    DequantizeRow(t, q.data(), y.data(), 256);
    for (float v : y) EXPECT_EQ(v, 0.0f) << GgmlTypeName(t);
  }
}

}  // namespace
}  // namespace tandem
