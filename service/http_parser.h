// An incremental HTTP/1.1 request parser (RFC 9112) for HttpServer: the request line, the
// headers and a body sized by Content-Length or sent chunked. It reads outside data, so it
// never trusts a length, bounds everything it keeps, and is fuzzed
// (tests/fuzz/http_parser_fuzzer.cc). Depends on absl only (the fuzz build has no gRPC).
#ifndef TANDEM_SERVICE_HTTP_PARSER_H_
#define TANDEM_SERVICE_HTTP_PARSER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem {

struct HttpRequest {
  std::string method;     // "GET", "POST", ... (case-sensitive, as sent)
  std::string target;     // as sent: "/v1/models?x=1"
  std::string path;       // target up to '?'
  std::string query;      // after '?', without it
  int version_minor = 1;  // HTTP/1.<minor>
  // Names lower-cased, in arrival order; values without surrounding whitespace.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;  // de-chunked
  std::string peer;  // "127.0.0.1:54321", filled in by the server

  // The first header with this (lower-case) name, or nullptr.
  const std::string* Header(std::string_view lower_name) const;
  // Whether the connection stays open after the response (HTTP/1.1 unless "Connection:
  // close"; HTTP/1.0 only with "Connection: keep-alive").
  bool KeepAlive() const;
};

class HttpRequestParser {
 public:
  struct Limits {
    size_t max_header_bytes = 64 << 10;
    size_t max_body_bytes = 16 << 20;
  };
  enum class State { kNeedMore, kDone, kError };

  explicit HttpRequestParser(Limits limits) : limits_(limits) {}

  // Consumes bytes from `data` and returns how many it used: after kDone the rest belongs
  // to the next request (pipelining); after kError nothing more is read.
  size_t Feed(std::string_view data);
  State state() const { return state_; }
  // With kDone: the request. Moves it out; Reset() before the next one.
  HttpRequest TakeRequest() { return std::move(request_); }
  // With kError: the status to answer (400, 413, 431, 501, 505) and why, for the body.
  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }
  // True once the request line and headers are complete and the client sent
  // "Expect: 100-continue" (the server then answers "100 Continue" before the body).
  bool expects_continue() const { return expects_continue_; }
  // Whether the request line has started (for idle-versus-slow-request timeouts).
  bool started() const { return started_; }
  void Reset();

 private:
  // Each Feed* consumes a prefix of `data` in its phase and returns its length.
  size_t FeedHead(std::string_view data);
  size_t FeedBody(std::string_view data);
  size_t FeedChunked(std::string_view data);
  // Appends `data` up to its first LF to buffer_ (*complete: the LF was seen); a line past
  // `max_bytes` fails.
  size_t FeedLine(std::string_view data, size_t max_bytes, bool* complete);
  // Each returns false when it set an error.
  bool ParseHead(std::string_view head);
  bool ParseRequestLine(std::string_view line);
  bool ParseHeaderLine(std::string_view line);
  bool Fail(int status, std::string message);

  Limits limits_;
  State state_ = State::kNeedMore;
  enum class Phase { kHead, kBody, kChunkSize, kChunkData, kChunkDataEnd, kTrailers };
  Phase phase_ = Phase::kHead;
  std::string buffer_;  // the head so far, or a partial chunk-size/trailer line
  HttpRequest request_;
  size_t body_remaining_ = 0;  // of the Content-Length body or the current chunk
  size_t trailer_bytes_ = 0;   // <= limits_.max_header_bytes
  bool started_ = false;
  bool expects_continue_ = false;
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace tandem

#endif  // TANDEM_SERVICE_HTTP_PARSER_H_
