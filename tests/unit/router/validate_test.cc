#include "router/validate.h"

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/router_model.h"
#include "tests/testing/test_env.h"

namespace tandem::router {
namespace {

using ::testing::HasSubstr;

class ValidateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto model = RouterModel::Load(testing::DefaultModelPath());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  static v1::GenerateRequest Prompt(const std::string& text, int max_tokens) {
    v1::GenerateRequest r;
    r.set_prompt(text);
    r.mutable_sampling()->set_max_tokens(max_tokens);
    return r;
  }

  // INVALID_ARGUMENT whose message contains `field`.
  static void ExpectInvalid(const v1::GenerateRequest& request, const std::string& field) {
    absl::StatusOr<ValidatedRequest> v = ValidateGenerateRequest(request, *model_);
    ASSERT_FALSE(v.ok()) << request.ShortDebugString();
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << v.status();
    EXPECT_THAT(std::string(v.status().message()), HasSubstr(field));
  }

  static RouterModel* model_;
};

RouterModel* ValidateTest::model_ = nullptr;

TEST_F(ValidateTest, ModelMetadata) {
  EXPECT_EQ(model_->id(), "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(model_->context_length(), 8192);
  EXPECT_EQ(model_->fingerprint(), model_->config().Fingerprint());
  EXPECT_FALSE(model_->fingerprint().empty());
  EXPECT_TRUE(model_->Matches(""));
  EXPECT_TRUE(model_->Matches("SmolLM2-135M-Instruct.Q4_1"));
  EXPECT_TRUE(model_->Matches(model_->config().name));
  EXPECT_FALSE(model_->Matches("gpt-4"));
  ASSERT_NE(model_->chat_template(), nullptr);
}

TEST_F(ValidateTest, PromptIsTokenizedAsIs) {
  auto v = ValidateGenerateRequest(Prompt("Hello <|im_start|>", 8), *model_);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->prompt_tokens, model_->tokenizer().Encode("Hello <|im_start|>", false));
  // The control token's text is not parsed as the control token.
  for (int32_t t : v->prompt_tokens) EXPECT_FALSE(model_->tokenizer().IsControl(t));
  EXPECT_EQ(v->sampling.max_tokens(), 8);
}

TEST_F(ValidateTest, ChatIsRenderedWithTheGenerationPrompt) {
  v1::GenerateRequest r;
  auto* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("What is 2+2?");
  r.mutable_sampling()->set_max_tokens(8);
  auto v = ValidateGenerateRequest(r, *model_);
  ASSERT_TRUE(v.ok()) << v.status();
  auto text = model_->chat_template()->Render({{"user", "What is 2+2?"}}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(v->prompt_tokens, model_->tokenizer().Encode(*text, true));
  EXPECT_EQ(model_->tokenizer().TokenText(v->prompt_tokens.front()), "<|im_start|>");
}

TEST_F(ValidateTest, TokenIdsPassThrough) {
  v1::GenerateRequest r;
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(49151);
  r.mutable_sampling()->set_max_tokens(1);
  r.set_model("SmolLM2-135M-Instruct.Q4_1");
  auto v = ValidateGenerateRequest(r, *model_);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->prompt_tokens, (std::vector<int32_t>{1, 49151}));
}

TEST_F(ValidateTest, EdgesOfTheValidRange) {
  v1::GenerateRequest r = Prompt("Hello", 1);
  r.mutable_sampling()->set_top_p(1.0f);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_top_k(0);
  for (int i = 0; i < kMaxStopStrings; ++i)
    r.mutable_sampling()->mutable_stop()->Add(std::string("x"));
  EXPECT_TRUE(ValidateGenerateRequest(r, *model_).ok());
  // Prompt + max_tokens exactly the context.
  v1::GenerateRequest full;
  for (int i = 0; i < 100; ++i) full.mutable_token_ids()->add_ids(1000);
  full.mutable_sampling()->set_max_tokens(8192 - 100);
  EXPECT_TRUE(ValidateGenerateRequest(full, *model_).ok());
}

TEST_F(ValidateTest, BadInputs) {
  ExpectInvalid(Prompt("", 8), "prompt");
  v1::GenerateRequest none;
  none.mutable_sampling()->set_max_tokens(8);
  ExpectInvalid(none, "input");
  v1::GenerateRequest empty_ids;
  empty_ids.mutable_token_ids();
  empty_ids.mutable_sampling()->set_max_tokens(8);
  ExpectInvalid(empty_ids, "token_ids");
  v1::GenerateRequest empty_chat;
  empty_chat.mutable_chat();
  empty_chat.mutable_sampling()->set_max_tokens(8);
  ExpectInvalid(empty_chat, "chat.messages");
  v1::GenerateRequest bad_role = empty_chat;
  bad_role.mutable_chat()->add_messages()->set_role("user");
  bad_role.mutable_chat()->add_messages()->set_role("wizard");
  ExpectInvalid(bad_role, "chat.messages[1].role");
  v1::GenerateRequest bad_ids;
  bad_ids.mutable_token_ids()->add_ids(5);
  bad_ids.mutable_token_ids()->add_ids(49152);
  bad_ids.mutable_sampling()->set_max_tokens(8);
  ExpectInvalid(bad_ids, "token_ids.ids[1]");
  bad_ids.mutable_token_ids()->set_ids(1, -1);
  ExpectInvalid(bad_ids, "token_ids.ids[1]");
}

TEST_F(ValidateTest, UnknownModel) {
  v1::GenerateRequest r = Prompt("Hello", 8);
  r.set_model("no-such-model");
  ExpectInvalid(r,
                "model 'no-such-model' is not served; this router serves "
                "'SmolLM2-135M-Instruct.Q4_1'");
}

TEST_F(ValidateTest, BadSampling) {
  ExpectInvalid(Prompt("Hello", 0), "sampling.max_tokens must be > 0, got 0");
  ExpectInvalid(Prompt("Hello", -3), "sampling.max_tokens");
  ExpectInvalid(Prompt("Hello", 8193), "sampling.max_tokens");
  const float bad_temperatures[] = {-1.0f, std::nanf(""), std::numeric_limits<float>::infinity()};
  for (float t : bad_temperatures) {
    v1::GenerateRequest r = Prompt("Hello", 8);
    r.mutable_sampling()->set_temperature(t);
    ExpectInvalid(r, "sampling.temperature");
  }
  for (float p : {0.0f, -0.5f, 1.5f, std::nanf("")}) {
    v1::GenerateRequest r = Prompt("Hello", 8);
    r.mutable_sampling()->set_top_p(p);
    ExpectInvalid(r, "sampling.top_p");
  }
  v1::GenerateRequest k = Prompt("Hello", 8);
  k.mutable_sampling()->set_top_k(-1);
  ExpectInvalid(k, "sampling.top_k");
  v1::GenerateRequest stop = Prompt("Hello", 8);
  stop.mutable_sampling()->mutable_stop()->Add(std::string("ok"));
  stop.mutable_sampling()->mutable_stop()->Add(std::string(""));
  ExpectInvalid(stop, "sampling.stop[1]");
  v1::GenerateRequest many = Prompt("Hello", 8);
  for (int i = 0; i <= kMaxStopStrings; ++i)
    many.mutable_sampling()->mutable_stop()->Add(std::string("s"));
  ExpectInvalid(many, "sampling.stop");
}

// Without max_tokens the request may generate as many tokens as the context leaves.
TEST_F(ValidateTest, UnsetMaxTokensFillsTheContext) {
  v1::GenerateRequest no_sampling;
  no_sampling.set_prompt("Hello");
  absl::StatusOr<ValidatedRequest> v = ValidateGenerateRequest(no_sampling, *model_);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->sampling.max_tokens(),
            model_->context_length() - static_cast<int>(v->prompt_tokens.size()));
}

TEST_F(ValidateTest, ContextLimits) {
  v1::GenerateRequest long_prompt;
  for (int i = 0; i < 8192; ++i) long_prompt.mutable_token_ids()->add_ids(1000);
  long_prompt.mutable_sampling()->set_max_tokens(1);
  ExpectInvalid(long_prompt, "prompt has 8192 tokens; the context is 8192");
  v1::GenerateRequest over;
  for (int i = 0; i < 100; ++i) over.mutable_token_ids()->add_ids(1000);
  over.mutable_sampling()->set_max_tokens(8192 - 99);
  ExpectInvalid(over, "sampling.max_tokens");
}

}  // namespace
}  // namespace tandem::router
