#include "router/openai_api.h"

#include <string>

#include "gtest/gtest.h"
#include "common/strings.h"
#include "nlohmann/json.hpp"

namespace tandem::router::openai {
namespace {

using nlohmann::json;

ParsedRequest MustParse(Endpoint endpoint, const std::string& body) {
  Error error;
  absl::StatusOr<ParsedRequest> parsed = ParseRequest(endpoint, body, &error);
  EXPECT_TRUE(parsed.ok()) << body << ": " << error.message;
  return parsed.ok() ? *parsed : ParsedRequest{};
}

Error MustFail(Endpoint endpoint, const std::string& body) {
  Error error;
  absl::StatusOr<ParsedRequest> parsed = ParseRequest(endpoint, body, &error);
  EXPECT_FALSE(parsed.ok()) << body;
  EXPECT_EQ(error.http_status, 400) << body;
  EXPECT_EQ(error.type, "invalid_request_error") << body;
  return error;
}

// The JSON of one server-sent event.
json EventJson(const std::string& event) {
  EXPECT_TRUE(event.starts_with("data: ")) << event;
  EXPECT_TRUE(event.ends_with("\n\n")) << event;
  return json::parse(event.substr(6, event.size() - 8));
}

TEST(OpenAiParse, CompletionWithAStringPrompt) {
  ParsedRequest p = MustParse(Endpoint::kCompletions,
                              R"({"model": "m", "prompt": "Hello", "temperature": 0,
                                  "top_p": 0.5, "top_k": 7, "seed": 42, "stop": "\n",
                                  "ignore_eos": true, "user": "ignored", "n": 1})");
  EXPECT_EQ(p.model, "m");
  EXPECT_EQ(p.request.model(), "m");
  EXPECT_EQ(p.request.prompt(), "Hello");
  const v1::SamplingParams& s = p.request.sampling();
  EXPECT_EQ(s.max_tokens(), kDefaultCompletionMaxTokens);
  EXPECT_EQ(s.temperature(), 0.0f);
  EXPECT_FLOAT_EQ(s.top_p(), 0.5f);
  EXPECT_EQ(s.top_k(), 7);
  EXPECT_EQ(s.seed(), 42u);
  ASSERT_EQ(s.stop_size(), 1);
  EXPECT_EQ(s.stop(0), "\n");
  EXPECT_TRUE(s.ignore_eos());
  EXPECT_FALSE(p.stream);
}

TEST(OpenAiParse, PromptShapes) {
  EXPECT_EQ(MustParse(Endpoint::kCompletions, R"({"prompt": ["Hi"]})").request.prompt(), "Hi");
  ParsedRequest ids = MustParse(Endpoint::kCompletions, R"({"prompt": [1, 2, 3]})");
  ASSERT_EQ(ids.request.token_ids().ids_size(), 3);
  EXPECT_EQ(ids.request.token_ids().ids(2), 3);
  EXPECT_EQ(MustParse(Endpoint::kCompletions, R"({"prompt": [[5, 6]]})").request.token_ids().ids(1),
            6);
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": ["a", "b"]})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": [1, "b"]})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": []})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": 5})").param, "prompt");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"model": "m"})").param, "prompt");
}

TEST(OpenAiParse, ChatMessages) {
  ParsedRequest p = MustParse(Endpoint::kChatCompletions, R"({"messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null}]})");
  ASSERT_EQ(p.request.chat().messages_size(), 3);
  EXPECT_EQ(p.request.chat().messages(0).role(), "system");
  EXPECT_EQ(p.request.chat().messages(0).content(), "Be brief.");
  EXPECT_EQ(p.request.chat().messages(1).content(), "Hi there");
  EXPECT_EQ(p.request.chat().messages(2).content(), "");
  // Chat without max_tokens runs to the context: left unset for validation to fill in.
  EXPECT_FALSE(p.request.sampling().has_max_tokens());

  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"messages": []})").param, "messages");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"prompt": "x"})").param, "messages");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions, R"({"messages": [{"content": "x"}]})").param,
            "messages[0].role");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions,
                     R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})")
                .param,
            "messages[0].content");
}

TEST(OpenAiParse, MaxTokens) {
  EXPECT_EQ(MustParse(Endpoint::kChatCompletions,
                      R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 9})")
                .request.sampling()
                .max_tokens(),
            9);
  // The newer name wins.
  EXPECT_EQ(MustParse(Endpoint::kCompletions,
                      R"({"prompt": "x", "max_tokens": 9, "max_completion_tokens": 4})")
                .request.sampling()
                .max_tokens(),
            4);
  // Range checks are validation's (with the same messages as gRPC); types are checked here.
  EXPECT_EQ(MustParse(Endpoint::kCompletions, R"({"prompt": "x", "max_tokens": 0})")
                .request.sampling()
                .max_tokens(),
            0);
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "max_tokens": "5"})").param,
            "max_tokens");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "max_tokens": 2.5})").param,
            "max_tokens");
}

TEST(OpenAiParse, SamplingEdges) {
  EXPECT_EQ(MustParse(Endpoint::kCompletions, R"({"prompt": "x", "top_k": -1})")
                .request.sampling()
                .top_k(),
            0);
  ParsedRequest stops = MustParse(Endpoint::kCompletions, R"({"prompt": "x", "stop": ["a", "b"]})");
  EXPECT_EQ(stops.request.sampling().stop_size(), 2);
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "stop": [1]})").param, "stop");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "n": 2})").param, "n");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "temperature": "hot"})").param,
            "temperature");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "ignore_eos": 1})").param,
            "ignore_eos");
}

TEST(OpenAiParse, Streaming) {
  ParsedRequest p = MustParse(
      Endpoint::kCompletions,
      R"({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}})");
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_FALSE(MustParse(Endpoint::kCompletions, R"({"prompt": "x", "stream": true})").include_usage);
  EXPECT_EQ(MustFail(Endpoint::kCompletions,
                     R"({"prompt": "x", "stream_options": {"include_usage": true}})")
                .param,
            "stream_options");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "stream": "yes"})").param,
            "stream");
}

TEST(OpenAiParse, UnsupportedOptionsAreRefusedUnlessNoOps) {
  MustParse(Endpoint::kChatCompletions,
            R"({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0,
                "frequency_penalty": 0, "logprobs": false, "tools": [], "logit_bias": {},
                "response_format": {"type": "text"}})");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions,
                     R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})")
                .param,
            "logprobs");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "logprobs": 3})").param,
            "logprobs");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "presence_penalty": 0.5})").param,
            "presence_penalty");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "echo": true})").param, "echo");
  EXPECT_EQ(MustFail(Endpoint::kCompletions, R"({"prompt": "x", "best_of": 2})").param, "best_of");
  EXPECT_EQ(MustFail(Endpoint::kChatCompletions,
                     R"({"messages": [{"role": "user", "content": "x"}],
                         "response_format": {"type": "json_object"}})")
                .param,
            "response_format");
}

TEST(OpenAiParse, MalformedBodies) {
  for (const std::string body :
       {"", "{", "not json", "[1, 2]", "\"prompt\"", "{\"prompt\": \"x\",}", "null"}) {
    MustFail(Endpoint::kCompletions, body);
  }
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_NE(MustFail(Endpoint::kCompletions, Cat("{\"prompt\": ", deep, "}")).message.find("deeper"),
            std::string::npos);
  // Brackets inside strings do not count as nesting.
  MustParse(Endpoint::kCompletions, Cat("{\"prompt\": \"", std::string(100, '['), "\"}"));
}

TEST(OpenAiErrors, StatusCodesAndShape) {
  Error e = ErrorFromStatus(absl::StatusCode::kInvalidArgument, "sampling.top_p must be in (0, 1]");
  EXPECT_EQ(e.http_status, 400);
  EXPECT_EQ(e.param, "top_p");
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kInvalidArgument, "prompt has 9000 tokens").param,
            "prompt");
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kInvalidArgument, "chat.messages[0].role").param,
            "messages");
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kUnauthenticated, "missing API key").http_status, 401);
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kResourceExhausted, "full").http_status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kUnavailable, "no worker").http_status, 503);
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kDeadlineExceeded, "late").http_status, 504);
  EXPECT_EQ(ErrorFromStatus(absl::StatusCode::kInternal, "bug").http_status, 500);
  EXPECT_EQ(ErrorFromStatus(absl::NotFoundError("x")).http_status, 404);

  const json body = json::parse(ErrorJson(BadRequest("bad top_p", "top_p")));
  EXPECT_EQ(body["error"]["message"], "bad top_p");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "top_p");
  EXPECT_TRUE(body["error"]["code"].is_null());
}

v1::GenerateFinal Final(v1::FinishReason reason) {
  v1::GenerateFinal final;
  final.set_finish_reason(reason);
  final.set_prompt_tokens(10);
  final.set_completion_tokens(4);
  final.set_cached_prompt_tokens(8);
  return final;
}

TEST(OpenAiRender, WholeResponses) {
  ResponseContext chat{Endpoint::kChatCompletions, "chatcmpl-1", "m", 1700000000};
  json c = json::parse(CompletionJson(chat, "Paris", Final(v1::FINISH_REASON_STOP)));
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["id"], "chatcmpl-1");
  EXPECT_EQ(c["created"], 1700000000);
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "Paris");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(c["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(c["usage"]["completion_tokens"], 4);
  EXPECT_EQ(c["usage"]["total_tokens"], 14);
  EXPECT_EQ(c["usage"]["prompt_tokens_details"]["cached_tokens"], 8);

  ResponseContext text{Endpoint::kCompletions, "cmpl-1", "m", 1};
  json t = json::parse(CompletionJson(text, "abc", Final(v1::FINISH_REASON_CONTEXT)));
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "abc");
  EXPECT_EQ(t["choices"][0]["finish_reason"], "length");
  // Invalid UTF-8 from a model is replaced, never thrown on.
  EXPECT_FALSE(CompletionJson(text, "\xff\xfe", Final(v1::FINISH_REASON_STOP)).empty());
}

TEST(OpenAiRender, StreamChunks) {
  ResponseContext chat{Endpoint::kChatCompletions, "chatcmpl-2", "m", 5};
  json role = EventJson(RoleChunk(chat, false));
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  EXPECT_FALSE(role.contains("usage"));
  json delta = EventJson(TextChunk(chat, "Hel", true));
  EXPECT_EQ(delta["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(delta["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(delta.contains("usage"));
  EXPECT_TRUE(delta["usage"].is_null());
  json finish = EventJson(FinishChunk(chat, Final(v1::FINISH_REASON_LENGTH), true));
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(finish["choices"][0]["delta"].empty());
  json usage = EventJson(UsageChunk(chat, Final(v1::FINISH_REASON_LENGTH)));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 14);

  ResponseContext text{Endpoint::kCompletions, "cmpl-2", "m", 5};
  json t = EventJson(TextChunk(text, "lo", false));
  EXPECT_EQ(t["object"], "text_completion");
  EXPECT_EQ(t["choices"][0]["text"], "lo");

  json error = EventJson(ErrorEvent(ErrorFromStatus(absl::StatusCode::kUnavailable, "gone")));
  EXPECT_EQ(error["error"]["message"], "gone");
}

TEST(OpenAiRender, Models) {
  json list = json::parse(ModelListJson("smol", 7, 8192));
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0]["id"], "smol");
  EXPECT_EQ(list["data"][0]["object"], "model");
  EXPECT_EQ(list["data"][0]["max_model_len"], 8192);
  EXPECT_EQ(json::parse(ModelJson("smol", 7, 8192))["owned_by"], "tandem");
}

}  // namespace
}  // namespace tandem::router::openai
