#include "common/sha256.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(Sha256Test, KnownVectors) {
  // FIPS 180-4 / NIST examples.
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(Sha256Hex("The quick brown fox jumps over the lazy dog"),
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592");
}

TEST(Sha256Test, ChunkingDoesNotMatter) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data += static_cast<char>(i * 31 + 7);
  const std::string whole = Sha256Hex(data);
  for (size_t chunk : {1, 3, 55, 56, 63, 64, 65, 127, 999}) {
    Sha256 h;
    for (size_t i = 0; i < data.size(); i += chunk) h.Update(data.substr(i, chunk));
    EXPECT_EQ(h.FinishHex(), whole) << chunk;
  }
  // Every length around the padding boundaries.
  for (size_t n = 50; n < 130; ++n) {
    Sha256 h;
    h.Update(data.substr(0, n / 2));
    h.Update(data.substr(n / 2, n - n / 2));
    EXPECT_EQ(h.FinishHex(), Sha256Hex(data.substr(0, n))) << n;
  }
}

TEST(Sha256Test, Files) {
  const std::string path = ::testing::TempDir() + "/sha256_test.txt";
  std::ofstream(path, std::ios::binary) << "abc";
  auto hex = Sha256FileHex(path);
  ASSERT_TRUE(hex.ok()) << hex.status();
  EXPECT_EQ(*hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256FileHex(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tandem
