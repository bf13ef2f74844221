#include "engine/chat_template.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/gguf_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

constexpr char kSmolLmSystem[] =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

nlohmann::json LoadGolden() {
  std::ifstream in(testing::SourceDir() + "/tests/golden/tokenizer_golden.json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

std::vector<ChatMessage> Messages(const nlohmann::json& list) {
  std::vector<ChatMessage> messages;
  for (const auto& m : list) {
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

TEST(ChatTemplateTest, ModelTemplateMatchesHuggingFace) {
  auto gguf = GgufFile::Open(testing::DefaultModelPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto chat = ChatTemplate::FromGguf(**gguf);
  ASSERT_TRUE(chat.ok()) << chat.status();
  ASSERT_TRUE(chat->default_system().has_value());
  EXPECT_EQ(*chat->default_system(), kSmolLmSystem);

  const nlohmann::json golden = LoadGolden();
  ASSERT_GE(golden["chats"].size(), 4u);
  for (const auto& c : golden["chats"]) {
    auto text = chat->Render(Messages(c["messages"]), c["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << c.dump();
  }
}

TEST(ChatTemplateTest, GoldenTemplateStringIsRecognized) {
  const nlohmann::json golden = LoadGolden();
  auto chat = ChatTemplate::FromTemplateString(golden["chat_template"].get<std::string>());
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->default_system(), std::optional<std::string>(kSmolLmSystem));
}

TEST(ChatTemplateTest, EmptyConversationRendersOnlyThePrompt) {
  const ChatTemplate chat = ChatTemplate::ChatMl(std::string(kSmolLmSystem));
  EXPECT_EQ(*chat.Render({}, true), "<|im_start|>assistant\n");
  EXPECT_EQ(*chat.Render({}, false), "");
}

TEST(ChatTemplateTest, PlainChatMl) {
  // The widely used ChatML template, with escaped newlines.
  auto chat = ChatTemplate::FromTemplateString(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
      "{{ '<|im_start|>assistant\\n' }}{% endif %}");
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_FALSE(chat->default_system().has_value());
  const std::vector<ChatMessage> messages = {{"user", "hi"}, {"assistant", "yo"}};
  EXPECT_EQ(*chat->Render(messages, true),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, MultiLineTemplateWithWhitespaceControl) {
  // Rendered by jinja2 (trim_blocks, lstrip_blocks) as the expectation below.
  auto chat = ChatTemplate::FromTemplateString(
      "{%- for message in messages %}\n"
      "    {%- if loop.first and messages[0].role != \"system\" %}\n"
      "        {{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}\n"
      "    {%- endif %}\n"
      "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
      "'\\n' }}\n"
      "{%- endfor %}\n"
      "{%- if add_generation_prompt %}\n"
      "    {{- '<|im_start|>assistant\\n' }}\n"
      "{%- endif %}\n");
  ASSERT_TRUE(chat.ok()) << chat.status();
  const std::vector<ChatMessage> messages = {{"user", "hi"}, {"assistant", "yo"}};
  EXPECT_EQ(*chat->Render(messages, true),
            "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, RejectsTemplatesItCannotRender) {
  // Not ChatML (Llama 3).
  auto chat = ChatTemplate::FromTemplateString(
      "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
      "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}");
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(chat.status().message()), HasSubstr("not ChatML"));
  // ChatML, but with newlines jinja2 would render between messages.
  chat = ChatTemplate::FromTemplateString(
      "{% for message in messages %}\n{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}\n{% endfor %}\n");
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  // ChatML with tool calls.
  chat = ChatTemplate::FromTemplateString(
      "{% if tools %}{{ '<|im_start|>system\\n' + tools | tojson + '<|im_end|>\\n' }}{% endif %}"
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(chat.status().message()), HasSubstr("cannot render"));
  // Unterminated tag.
  EXPECT_EQ(ChatTemplate::FromTemplateString("<|im_start|>{{ 'x'").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(ChatTemplateTest, ValidatesRoles) {
  const ChatTemplate chat = ChatTemplate::ChatMl();
  auto text = chat.Render({{"user", "a"}, {"tool", "b"}}, true);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("'tool'"));
}

}  // namespace
}  // namespace tandem
