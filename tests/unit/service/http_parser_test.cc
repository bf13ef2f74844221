#include "service/http_parser.h"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using State = HttpRequestParser::State;
using std::string_literals::operator""s;

HttpRequestParser::Limits SmallLimits() { return {.max_header_bytes = 256, .max_body_bytes = 100}; }

// Feeds `data` in pieces cut at `cuts` (ascending offsets) and returns the bytes consumed.
size_t FeedCut(HttpRequestParser& parser, std::string_view data, const std::vector<size_t>& cuts) {
  size_t at = 0;
  size_t used = 0;
  for (size_t cut : cuts) {
    if (parser.state() != State::kNeedMore) break;
    const size_t n = parser.Feed(data.substr(at, cut - at));
    used += n;
    if (n < cut - at) return used;  // done or failed mid-piece
    at = cut;
  }
  if (parser.state() == State::kNeedMore) used += parser.Feed(data.substr(at));
  return used;
}

// Parses one whole request fed at once, then at every single split point and byte by
// byte, and checks all ways give the same result.
HttpRequest ParseAllWays(std::string_view data, HttpRequestParser::Limits limits = {}) {
  HttpRequestParser whole(limits);
  EXPECT_EQ(whole.Feed(data), data.size());
  EXPECT_EQ(whole.state(), State::kDone) << whole.error_message();
  HttpRequest expected = whole.TakeRequest();
  for (size_t cut = 1; cut < data.size(); ++cut) {
    HttpRequestParser parser(limits);
    EXPECT_EQ(FeedCut(parser, data, {cut}), data.size()) << "cut at " << cut;
    EXPECT_EQ(parser.state(), State::kDone) << "cut at " << cut << ": " << parser.error_message();
    const HttpRequest got = parser.TakeRequest();
    EXPECT_EQ(got.method, expected.method) << "cut at " << cut;
    EXPECT_EQ(got.target, expected.target) << "cut at " << cut;
    EXPECT_EQ(got.headers, expected.headers) << "cut at " << cut;
    EXPECT_EQ(got.body, expected.body) << "cut at " << cut;
  }
  HttpRequestParser bytewise(limits);
  size_t used = 0;
  for (char c : data) used += bytewise.Feed(std::string_view(&c, 1));
  EXPECT_EQ(used, data.size());
  EXPECT_EQ(bytewise.state(), State::kDone);
  EXPECT_EQ(bytewise.TakeRequest().body, expected.body);
  return expected;
}

// The status a whole request fails with (0 when it parses).
int ErrorStatus(std::string_view data, HttpRequestParser::Limits limits = {}) {
  HttpRequestParser parser(limits);
  parser.Feed(data);
  if (parser.state() == State::kError) {
    EXPECT_FALSE(parser.error_message().empty());
    // Split at every point too: the verdict must not depend on how the bytes arrive.
    for (size_t cut = 1; cut < data.size(); ++cut) {
      HttpRequestParser split(limits);
      FeedCut(split, data, {cut});
      EXPECT_EQ(split.state(), State::kError) << "cut at " << cut;
      EXPECT_EQ(split.error_status(), parser.error_status()) << "cut at " << cut;
    }
    return parser.error_status();
  }
  return parser.state() == State::kDone ? 0 : -1;
}

TEST(HttpParserTest, GetWithHeaders) {
  const HttpRequest r = ParseAllWays(
      "GET /v1/models?limit=2&x=y HTTP/1.1\r\nHost: example.com\r\n"
      "X-Custom:   spaced value \t\r\nAccept: */*\r\n\r\n");
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.target, "/v1/models?limit=2&x=y");
  EXPECT_EQ(r.path, "/v1/models");
  EXPECT_EQ(r.query, "limit=2&x=y");
  EXPECT_EQ(r.version_minor, 1);
  EXPECT_THAT(r.headers, ElementsAre(Pair("host", "example.com"), Pair("x-custom", "spaced value"),
                                     Pair("accept", "*/*")));
  ASSERT_NE(r.Header("x-custom"), nullptr);
  EXPECT_EQ(*r.Header("x-custom"), "spaced value");
  EXPECT_EQ(r.Header("missing"), nullptr);
  EXPECT_TRUE(r.body.empty());
  EXPECT_TRUE(r.KeepAlive());
}

TEST(HttpParserTest, PostWithContentLength) {
  const HttpRequest r = ParseAllWays(
      "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
      "Content-Length: 17\r\n\r\n{\"model\":\"tiny\"}\n");
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/v1/chat/completions");
  EXPECT_EQ(r.query, "");
  EXPECT_EQ(r.body, "{\"model\":\"tiny\"}\n");
}

TEST(HttpParserTest, ChunkedBodyWithExtensionsAndTrailers) {
  const HttpRequest r = ParseAllWays(
      "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=value\r\nhello\r\n"
      "1A\r\n abcdefghijklmnopqrstuvwxy\r\n"
      "0\r\nX-Trailer: dropped\r\nY: also\r\n\r\n");
  EXPECT_EQ(r.body, "hello abcdefghijklmnopqrstuvwxy");
  EXPECT_EQ(r.Header("x-trailer"), nullptr);
  EXPECT_THAT(r.headers, ElementsAre(Pair("transfer-encoding", "chunked")));
}

TEST(HttpParserTest, BareLineFeedsAndLeadingEmptyLines) {
  const HttpRequest r = ParseAllWays("\r\n\nGET / HTTP/1.0\nHost: a\n\n");
  EXPECT_EQ(r.path, "/");
  EXPECT_EQ(r.version_minor, 0);
  EXPECT_FALSE(r.KeepAlive());
}

TEST(HttpParserTest, AbsoluteAndAsteriskTargets) {
  HttpRequest r = ParseAllWays("GET http://example.com:8000/metrics?a=1 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.path, "/metrics");
  EXPECT_EQ(r.query, "a=1");
  r = ParseAllWays("GET https://example.com HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.path, "/");
  r = ParseAllWays("OPTIONS * HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.target, "*");
  EXPECT_EQ(ErrorStatus("GET * HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET example.com/x HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET http:///x HTTP/1.1\r\n\r\n"), 400);
}

TEST(HttpParserTest, KeepAliveRules) {
  auto keep_alive = [](std::string_view head) {
    HttpRequestParser parser({});
    parser.Feed(head);
    EXPECT_EQ(parser.state(), State::kDone);
    return parser.TakeRequest().KeepAlive();
  };
  EXPECT_TRUE(keep_alive("GET / HTTP/1.1\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(keep_alive("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
}

TEST(HttpParserTest, PipelinedRequestsStopAtTheBoundary) {
  const std::string first = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  const std::string second = "GET /b HTTP/1.1\r\n\r\n";
  const std::string both = first + second;
  for (size_t cut = 0; cut <= both.size(); ++cut) {
    HttpRequestParser parser({});
    size_t at = FeedCut(parser, both, {cut});
    ASSERT_EQ(parser.state(), State::kDone) << "cut at " << cut;
    EXPECT_EQ(at, first.size()) << "cut at " << cut;
    EXPECT_EQ(parser.TakeRequest().body, "abc");
    parser.Reset();
    EXPECT_FALSE(parser.started());
    at += parser.Feed(std::string_view(both).substr(at));
    ASSERT_EQ(parser.state(), State::kDone);
    EXPECT_EQ(at, both.size());
    const HttpRequest b = parser.TakeRequest();
    EXPECT_EQ(b.path, "/b");
    EXPECT_TRUE(b.body.empty());
  }
}

TEST(HttpParserTest, StartedAndExpectContinue) {
  HttpRequestParser parser({});
  EXPECT_EQ(parser.Feed("\r\n"), 2u);
  EXPECT_FALSE(parser.started());
  parser.Feed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n");
  EXPECT_TRUE(parser.started());
  EXPECT_FALSE(parser.expects_continue());  // the head is not complete yet
  parser.Feed("\r\n");
  EXPECT_EQ(parser.state(), State::kNeedMore);
  EXPECT_TRUE(parser.expects_continue());
  parser.Feed("body");
  EXPECT_EQ(parser.state(), State::kDone);
  EXPECT_EQ(parser.TakeRequest().body, "body");

  HttpRequestParser http10({});
  http10.Feed("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
  EXPECT_FALSE(http10.expects_continue());
}

TEST(HttpParserTest, MalformedRequestLines) {
  EXPECT_EQ(ErrorStatus("GET  / HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1 \r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("G(T / HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET /a\x01 HTTP/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\rX\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTQ/1.1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/11\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET /\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/2.0\r\n\r\n"), 505);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.2\r\n\r\n"), 505);
  EXPECT_EQ(ErrorStatus("GET / HTTP/0.9\r\n\r\n"), 505);
}

TEST(HttpParserTest, MalformedHeaders) {
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nNo colon\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\n: empty\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nA: b\0c\r\n\r\n"s), 400);
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"), 400);
  // obs-text in values is allowed.
  EXPECT_EQ(ErrorStatus("GET / HTTP/1.1\r\nA: caf\xc3\xa9\r\n\r\n"), 0);
}

TEST(HttpParserTest, ContentLengthRules) {
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab"),
            400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"), 0);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 0);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n1234567"), 0);
  // Far past 2^64: no overflow wraps it to something small.
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 18446744073709551617\r\n\r\n"), 413);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: "
                        "99999999999999999999999999999999999999999999\r\n\r\n"),
            413);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", SmallLimits()), 413);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'x'),
                        SmallLimits()),
            0);
}

TEST(HttpParserTest, TransferEncodingRules) {
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 501);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                        "Content-Length: 5\r\n\r\n"),
            400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400);
  EXPECT_EQ(ErrorStatus("POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"), 0);
}

TEST(HttpParserTest, MalformedChunks) {
  const std::string head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  EXPECT_EQ(ErrorStatus(head + "x\r\n"), 400);
  EXPECT_EQ(ErrorStatus(head + "\r\n"), 400);
  EXPECT_EQ(ErrorStatus(head + "5x\r\n"), 400);
  EXPECT_EQ(ErrorStatus(head + "3\r\nabcX"), 400);
  EXPECT_EQ(ErrorStatus(head + "3\r\nabc\rX"), 400);
  EXPECT_EQ(ErrorStatus(head + std::string(5000, '0') + "\r\n"), 400);
  // Size past the limit: refused from the size line, before any data is kept.
  EXPECT_EQ(ErrorStatus(head + "65\r\n", SmallLimits()), 413);
  EXPECT_EQ(ErrorStatus(head + "ffffffffffffffffffffffff\r\n"), 413);
  EXPECT_EQ(ErrorStatus(head + "32\r\n" + std::string(50, 'a') + "\r\n33\r\n", SmallLimits()), 413);
  EXPECT_EQ(ErrorStatus(head + "32\r\n" + std::string(50, 'a') + "\r\n32\r\n" +
                            std::string(50, 'b') + "\r\n0\r\n\r\n",
                        SmallLimits()),
            0);
  EXPECT_EQ(ErrorStatus(head + "0\r\n" + std::string(300, 'T') + "\r\n\r\n", SmallLimits()), 431);
}

TEST(HttpParserTest, HeadLimit) {
  const HttpRequestParser::Limits limits = SmallLimits();
  const std::string prefix = "GET / HTTP/1.1\r\nA: ";
  // Exactly at the limit parses; one byte more is 431.
  const std::string at_limit = prefix + std::string(256 - prefix.size() - 4, 'x') + "\r\n\r\n";
  ASSERT_EQ(at_limit.size(), 256u);
  EXPECT_EQ(ErrorStatus(at_limit, limits), 0);
  const std::string over = prefix + std::string(256 - prefix.size() - 3, 'x') + "\r\n\r\n";
  EXPECT_EQ(ErrorStatus(over, limits), 431);
  // A head that never ends fails once past the limit, without buffering more.
  HttpRequestParser parser(limits);
  const std::string endless(10000, 'a');
  const size_t used = parser.Feed(endless);
  EXPECT_EQ(parser.state(), State::kError);
  EXPECT_EQ(parser.error_status(), 431);
  EXPECT_LE(used, 257u);
  EXPECT_EQ(parser.Feed("more"), 0u);  // nothing is read after an error
}

TEST(HttpParserTest, ResetAfterError) {
  HttpRequestParser parser({});
  parser.Feed("BAD\r\n\r\n");
  ASSERT_EQ(parser.state(), State::kError);
  EXPECT_EQ(parser.error_status(), 400);
  EXPECT_THAT(parser.error_message(), HasSubstr("request line"));
  parser.Reset();
  EXPECT_EQ(parser.error_status(), 0);
  parser.Feed("GET /ok HTTP/1.1\r\n\r\n");
  ASSERT_EQ(parser.state(), State::kDone);
  EXPECT_EQ(parser.TakeRequest().path, "/ok");
}

}  // namespace
}  // namespace tandem
