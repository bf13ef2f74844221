#include "engine/incremental_detokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf_file.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"
#include "gtest/gtest.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

constexpr char kReplacement[] = "\xEF\xBF\xBD";

// The 256 byte tokens (id == byte) and one control token, 256.
std::unique_ptr<Tokenizer> ByteTokenizer() {
  TokenizerData data;
  for (int b = 0; b < 256; ++b) data.tokens.push_back(ByteLevelEncode(std::string(1, b)));
  data.tokens.push_back("<|im_end|>");
  data.token_types.assign(data.tokens.size(), 1);
  data.token_types[256] = 3;
  auto tok = Tokenizer::FromData(std::move(data));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(*tok);
}

std::vector<std::string> PushAll(IncrementalDetokenizer& detok, const std::vector<int>& ids) {
  std::vector<std::string> out;
  for (const int id : ids) out.push_back(detok.Push(id));
  out.push_back(detok.Flush());
  return out;
}

TEST(IncrementalDetokenizerTest, HoldsBackIncompleteCharacters) {
  auto tok = ByteTokenizer();
  IncrementalDetokenizer detok(*tok);
  // "€" = E2 82 AC, then "a".
  EXPECT_EQ(PushAll(detok, {0xE2, 0x82, 0xAC, 'a'}),
            (std::vector<std::string>{"", "", "\xE2\x82\xAC", "a", ""}));
  EXPECT_EQ(detok.pending_bytes(), 0u);
  // A 4-byte emoji.
  EXPECT_EQ(PushAll(detok, {0xF0, 0x9F, 0x98, 0x80}),
            (std::vector<std::string>{"", "", "", "\xF0\x9F\x98\x80", ""}));
}

TEST(IncrementalDetokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  auto tok = ByteTokenizer();
  IncrementalDetokenizer detok(*tok);
  // A truncated sequence interrupted by ASCII: one U+FFFD as soon as it cannot complete.
  EXPECT_EQ(PushAll(detok, {0xE2, 0x82, 'a'}),
            (std::vector<std::string>{"", "", std::string(kReplacement) + "a", ""}));
  // A byte that can never start a sequence comes out at once.
  EXPECT_EQ(PushAll(detok, {0xFF}), (std::vector<std::string>{kReplacement, ""}));
  // A truncated sequence at the end comes out on Flush.
  EXPECT_EQ(PushAll(detok, {'x', 0xF0, 0x9F}),
            (std::vector<std::string>{"x", "", "", kReplacement}));
  // Surrogates (ED A0 80) are three maximal subparts.
  EXPECT_EQ(
      PushAll(detok, {0xED, 0xA0, 0x80}),
      (std::vector<std::string>{"", std::string(kReplacement) + kReplacement, kReplacement, ""}));
}

TEST(IncrementalDetokenizerTest, SpecialTokens) {
  auto tok = ByteTokenizer();
  IncrementalDetokenizer plain(*tok);
  EXPECT_EQ(plain.Push(256), "<|im_end|>");
  IncrementalDetokenizer skipping(*tok, {.skip_special = true});
  EXPECT_EQ(skipping.Push(256), "");
  EXPECT_EQ(skipping.Push(-5), "");  // out of range: no text
}

TEST(IncrementalDetokenizerTest, MatchesDecodeOnGoldenStrings) {
  auto gguf = GgufFile::Open(testing::DefaultModelPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto tok = Tokenizer::FromGguf(**gguf);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::ifstream in(testing::SourceDir() + "/tests/golden/tokenizer_golden.json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const nlohmann::json golden = nlohmann::json::parse(buffer.str());
  bool saw_partial = false;
  for (const auto& item : golden["strings"]) {
    const std::string s = item.get<std::string>();
    const std::vector<int32_t> ids = (*tok)->Encode(s, true);
    IncrementalDetokenizer detok(**tok);
    std::string streamed;
    for (const int32_t id : ids) {
      const std::string piece = detok.Push(id);
      EXPECT_TRUE(IsValidUtf8(piece)) << s;
      saw_partial |= detok.pending_bytes() > 0;
      streamed += piece;
    }
    streamed += detok.Flush();
    EXPECT_EQ(streamed, (*tok)->Decode(ids)) << s;
  }
  EXPECT_TRUE(saw_partial);  // the emoji and CJK strings split characters across tokens
}

}  // namespace
}  // namespace tandem
