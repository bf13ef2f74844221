#include "engine/tokenizer.h"

#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf_file.h"
#include "engine/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

nlohmann::json LoadGolden() {
  const std::string path = testing::SourceDir() + "/tests/golden/tokenizer_golden.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

std::unique_ptr<GgufFile> OpenModel() {
  auto gguf = GgufFile::Open(testing::DefaultModelPath());
  EXPECT_TRUE(gguf.ok()) << gguf.status();
  return gguf.ok() ? std::move(*gguf) : nullptr;
}

std::unique_ptr<Tokenizer> LoadModelTokenizer() {
  std::unique_ptr<GgufFile> gguf = OpenModel();
  if (gguf == nullptr) return nullptr;
  auto tok = Tokenizer::FromGguf(*gguf);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

// A small vocabulary: the 256 byte tokens, a few merges, two control tokens.
TokenizerData SyntheticData() {
  TokenizerData data;
  for (int b = 0; b < 256; ++b) data.tokens.push_back(ByteLevelEncode(std::string(1, b)));
  for (const char* extra : {"ab", "bc", "Ġa", "<|im_start|>", "<|im_end|>"}) {
    data.tokens.push_back(extra);
  }
  data.token_types.assign(data.tokens.size(), 1);
  data.token_types[259] = 3;
  data.token_types[260] = 3;
  data.merges = {"a b", "b c", "Ġ a"};
  data.eos_id = 260;
  return data;
}

class ModelTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    golden_ = new nlohmann::json(LoadGolden());
    tokenizer_ = LoadModelTokenizer().release();
  }
  static void TearDownTestSuite() {
    delete golden_;
    delete tokenizer_;
  }
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr); }

  static nlohmann::json* golden_;
  static Tokenizer* tokenizer_;
};

nlohmann::json* ModelTokenizerTest::golden_ = nullptr;
Tokenizer* ModelTokenizerTest::tokenizer_ = nullptr;

TEST_F(ModelTokenizerTest, Metadata) {
  const Tokenizer& tok = *tokenizer_;
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.pre_tokenizer(), PreTokenizerKind::kSmolLm);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_FALSE(tok.add_bos());
  EXPECT_EQ(tok.TokenText(1), "<|im_start|>");
  EXPECT_EQ(tok.TokenText(905), "Ġworld");
  EXPECT_EQ(tok.TokenBytes(905), " world");
  EXPECT_EQ(tok.TokenId("Ġworld"), 905);
  EXPECT_EQ(tok.token_type(2), TokenType::kControl);
  EXPECT_TRUE(tok.IsEog(2));  // <|im_end|>
  EXPECT_TRUE(tok.IsEog(0));  // <|endoftext|>
  EXPECT_FALSE(tok.IsEog(1));
  EXPECT_FALSE(tok.IsEog(905));
  EXPECT_FALSE(tok.IsEog(-1));
  EXPECT_FALSE(tok.IsEog(49152));
}

TEST_F(ModelTokenizerTest, MatchesHuggingFaceIds) {
  const auto& strings = (*golden_)["strings"];
  ASSERT_GE(strings.size(), 40u);
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i].get<std::string>();
    const auto expected = (*golden_)["ids"][i].get<std::vector<int32_t>>();
    const std::vector<int32_t> ids = tokenizer_->Encode(s, /*parse_special=*/true);
    EXPECT_EQ(ids, expected) << "string " << i << ": \"" << s << "\"";
    const auto expected_plain = (*golden_)["ids_no_special"][i].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->Encode(s, /*parse_special=*/false), expected_plain)
        << "string " << i << ": \"" << s << "\"";
  }
}

TEST_F(ModelTokenizerTest, Gpt2PreTokenizerMatchesHuggingFace) {
  std::unique_ptr<GgufFile> gguf = OpenModel();
  ASSERT_NE(gguf, nullptr);
  auto data = Tokenizer::DataFromGguf(*gguf);
  ASSERT_TRUE(data.ok()) << data.status();
  data->pre = "gpt2";
  auto gpt2 = Tokenizer::FromData(std::move(*data));
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  const auto& strings = (*golden_)["strings"];
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string s = strings[i].get<std::string>();
    EXPECT_EQ((*gpt2)->Encode(s, true), (*golden_)["ids_gpt2"][i].get<std::vector<int32_t>>())
        << "string " << i << ": \"" << s << "\"";
  }
}

TEST_F(ModelTokenizerTest, DecodeRoundTrips) {
  for (const auto& item : (*golden_)["strings"]) {
    const std::string s = item.get<std::string>();
    ASSERT_TRUE(IsValidUtf8(s));
    if (!tokenizer_->CanRoundTrip(s)) {
      // SmolLM2 has no token for byte 0x04: dropped, as Hugging Face does.
      EXPECT_NE(s.find('\x04'), std::string::npos) << s;
      continue;
    }
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(s, true)), s);
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(s, false)), s);
  }
}

TEST_F(ModelTokenizerTest, SpecialTokensOnlyWhenParsed) {
  EXPECT_THAT(tokenizer_->Encode("<|im_start|>", true), ElementsAre(1));
  const std::vector<int32_t> plain = tokenizer_->Encode("<|im_start|>", false);
  EXPECT_GT(plain.size(), 1u);
  for (const int32_t id : plain) EXPECT_FALSE(tokenizer_->IsControl(id));
  EXPECT_EQ(tokenizer_->Decode(plain), "<|im_start|>");
  EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode("a<|im_end|>b", true), /*skip_special=*/true),
            "ab");
}

TEST_F(ModelTokenizerTest, InvalidUtf8BecomesByteTokens) {
  const std::string bad = "ok\x80 \xe2\x82 caf\xc3 \xed\xa0\x80!";
  const std::vector<int32_t> ids = tokenizer_->Encode(bad, true);
  EXPECT_EQ(tokenizer_->DecodeBytes(ids), bad);
  const std::string decoded = tokenizer_->Decode(ids);
  EXPECT_TRUE(IsValidUtf8(decoded));
  EXPECT_EQ(decoded,
            "ok\xEF\xBF\xBD \xEF\xBF\xBD caf\xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD"
            "\xEF\xBF\xBD!");
  // Bytes the vocabulary has no token for (0xFF) are dropped; nothing crashes.
  EXPECT_FALSE(tokenizer_->CanRoundTrip("\xff"));
  EXPECT_TRUE(tokenizer_->Encode("\xff\xfe", true).empty());
}

TEST_F(ModelTokenizerTest, EncodesThousandsOfTokensInMilliseconds) {
  std::string text;
  while (tokenizer_->Encode(text, true).size() < 2000) {
    for (const auto& item : (*golden_)["strings"]) text += item.get<std::string>() + "\n";
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tokenizer_->Encode(text, true);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << ids.size() << " tokens from " << text.size() << " bytes in " << ms << " ms\n";
  EXPECT_LT(ms, 50.0);
}

TEST(TokenizerTest, BpeMergesLowestRankFirst) {
  auto tok = Tokenizer::FromData(SyntheticData());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const Tokenizer& t = **tok;
  const int32_t ab = t.TokenId("ab");
  const int32_t c = t.TokenId("c");
  EXPECT_THAT(t.Encode("abc", false), ElementsAre(ab, c));  // "a b" outranks "b c"
  EXPECT_THAT(t.Encode("bc", false), ElementsAre(t.TokenId("bc")));
  EXPECT_THAT(t.Encode(" ab", false), ElementsAre(t.TokenId("Ġ"), ab));  // "Ġ a" ranks last
  EXPECT_THAT(t.Encode("<|im_end|>", true), ElementsAre(260));
  EXPECT_TRUE(t.IsEog(260));
  EXPECT_TRUE(t.Encode("", true).empty());
}

TEST(TokenizerTest, SplitsLikeGpt2) {
  auto tok = Tokenizer::FromData(SyntheticData());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // Pieces are visible through Decode of each id run: check a few known splits by counting
  // the space tokens that start words.
  const Tokenizer& t = **tok;
  const int32_t space = t.TokenId("Ġ");
  const std::vector<int32_t> ids = t.Encode("x  y", false);
  EXPECT_THAT(ids, ElementsAre(t.TokenId("x"), space, space, t.TokenId("y")));
  EXPECT_EQ(t.Decode(t.Encode("I'm 12 \t\n", false)), "I'm 12 \t\n");
}

TEST(TokenizerTest, RejectsUnsupportedModels) {
  TokenizerData data = SyntheticData();
  data.model = "llama";
  auto tok = Tokenizer::FromData(data);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("'llama'"));

  data = SyntheticData();
  data.pre = "deepseek-llm";
  tok = Tokenizer::FromData(data);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(tok.status().message()), HasSubstr("'deepseek-llm'"));
}

TEST(TokenizerTest, RejectsInconsistentData) {
  TokenizerData data = SyntheticData();
  data.merges.push_back("x yz");
  EXPECT_EQ(Tokenizer::FromData(data).status().code(), absl::StatusCode::kInvalidArgument);
  data = SyntheticData();
  data.merges.push_back("nospace");
  EXPECT_EQ(Tokenizer::FromData(data).status().code(), absl::StatusCode::kInvalidArgument);
  data = SyntheticData();
  data.token_types.pop_back();
  EXPECT_EQ(Tokenizer::FromData(data).status().code(), absl::StatusCode::kInvalidArgument);
  data = SyntheticData();
  data.eos_id = 100000;
  EXPECT_EQ(Tokenizer::FromData(data).status().code(), absl::StatusCode::kInvalidArgument);
  data = SyntheticData();
  data.tokens.clear();
  data.token_types.clear();
  data.merges.clear();
  data.eos_id = -1;
  EXPECT_EQ(Tokenizer::FromData(data).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UnicodeTest, Classes) {
  EXPECT_EQ(ClassifyCodepoint('a'), CodepointClass::kLetter);
  EXPECT_EQ(ClassifyCodepoint(0x4E2D), CodepointClass::kLetter);  // 中
  EXPECT_EQ(ClassifyCodepoint(0x00B2), CodepointClass::kNumber);  // ²
  EXPECT_EQ(ClassifyCodepoint(0x0663), CodepointClass::kNumber);  // Arabic-Indic 3
  EXPECT_EQ(ClassifyCodepoint(0x3000), CodepointClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x0085), CodepointClass::kWhitespace);
  EXPECT_EQ(ClassifyCodepoint(0x001C), CodepointClass::kOther);  // isspace() in Python only
  EXPECT_EQ(ClassifyCodepoint(0x200B), CodepointClass::kOther);  // zero-width space
  EXPECT_EQ(ClassifyCodepoint(0x1F600), CodepointClass::kOther);
}

TEST(UnicodeTest, Utf8Steps) {
  EXPECT_EQ(DecodeUtf8Step("\xe2\x82\xac").kind, Utf8Step::Kind::kValid);
  EXPECT_EQ(DecodeUtf8Step("\xe2\x82\xac").codepoint, 0x20ACu);
  EXPECT_EQ(DecodeUtf8Step("\xe2\x82").kind, Utf8Step::Kind::kIncomplete);
  EXPECT_EQ(DecodeUtf8Step("\xe2\x82"
                           "a")
                .kind,
            Utf8Step::Kind::kInvalid);
  EXPECT_EQ(DecodeUtf8Step("\xe2\x82"
                           "a")
                .length,
            2);
  EXPECT_EQ(DecodeUtf8Step("\xc0\x80").kind, Utf8Step::Kind::kInvalid);  // overlong
  EXPECT_EQ(DecodeUtf8Step("\xed\xa0\x80").length, 1);                   // surrogate
  EXPECT_EQ(DecodeUtf8Step("\xf4\x90\x80\x80").kind, Utf8Step::Kind::kInvalid);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(UnicodeToByte(ByteToUnicode(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(ByteToUnicode(' '), 0x120u);  // Ġ
}

}  // namespace
}  // namespace tandem
