// Feeds arbitrary bytes to HttpRequestParser, in pieces whose sizes the first input byte
// chooses, and parses pipelined requests until the data or the parser gives out. Checks:
// nothing crashes; Feed never reports more than it was given, and nothing after an error;
// errors carry a status in the documented set and a message; nothing kept grows past the
// limits; and the result (each request, or the error) does not depend on how the bytes were
// split: the same data fed whole must parse the same way.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "service/http_parser.h"

namespace tandem {
namespace {

// Small limits, so the fuzzer reaches 413 and 431 with short inputs.
constexpr HttpRequestParser::Limits kLimits{.max_header_bytes = 512, .max_body_bytes = 256};
constexpr int kMaxRequests = 16;

struct Outcome {
  std::vector<HttpRequest> requests;
  int error_status = 0;
  std::string error_message;
  size_t consumed = 0;
};

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

// Parses `data` fed in pieces of `piece` bytes (0: all at once).
Outcome Parse(std::string_view data, size_t piece) {
  Outcome out;
  HttpRequestParser parser(kLimits);
  for (int n = 0; n < kMaxRequests && out.consumed < data.size(); ++n) {
    while (parser.state() == HttpRequestParser::State::kNeedMore && out.consumed < data.size()) {
      const std::string_view rest = data.substr(out.consumed);
      const std::string_view chunk = piece == 0 ? rest : rest.substr(0, piece);
      const size_t used = parser.Feed(chunk);
      Check(used <= chunk.size(), "Feed consumed more than it was given");
      if (parser.state() == HttpRequestParser::State::kNeedMore) {
        Check(used == chunk.size(), "Feed stopped early without a result");
      }
      out.consumed += used;
    }
    if (parser.state() == HttpRequestParser::State::kError) {
      Check(parser.Feed("GET / HTTP/1.1\r\n\r\n") == 0, "Feed read after an error");
      const int s = parser.error_status();
      Check(s == 400 || s == 413 || s == 431 || s == 501 || s == 505, "unexpected status");
      Check(!parser.error_message().empty(), "error without a message");
      out.error_status = s;
      out.error_message = parser.error_message();
      return out;
    }
    if (parser.state() != HttpRequestParser::State::kDone) return out;
    HttpRequest request = parser.TakeRequest();
    Check(!request.method.empty() && !request.target.empty(), "empty method or target");
    Check(request.version_minor == 0 || request.version_minor == 1, "bad version");
    Check(request.body.size() <= kLimits.max_body_bytes, "body past the limit");
    Check(request.target.size() <= kLimits.max_header_bytes, "target past the limit");
    for (const auto& [name, value] : request.headers) {
      Check(!name.empty(), "empty header name");
      for (char c : name) Check(!(c >= 'A' && c <= 'Z'), "header name not lower-cased");
      Check(value.empty() || (value.front() != ' ' && value.back() != ' '), "untrimmed value");
    }
    out.requests.push_back(std::move(request));
    parser.Reset();
  }
  return out;
}

bool SameRequests(const std::vector<HttpRequest>& a, const std::vector<HttpRequest>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].method != b[i].method || a[i].target != b[i].target || a[i].path != b[i].path ||
        a[i].query != b[i].query || a[i].version_minor != b[i].version_minor ||
        a[i].headers != b[i].headers || a[i].body != b[i].body) {
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace tandem

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the piece size (1..32 bytes); the rest is the HTTP stream.
  const size_t piece = data[0] % 32 + 1;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const tandem::Outcome split = tandem::Parse(input, piece);
  const tandem::Outcome whole = tandem::Parse(input, 0);
  tandem::Check(split.error_status == whole.error_status, "error depends on the split");
  tandem::Check(split.error_message == whole.error_message, "message depends on the split");
  // After an error how much was read depends on the pieces; otherwise it must not.
  if (whole.error_status == 0) {
    tandem::Check(split.consumed == whole.consumed, "consumed depends on the split");
  }
  tandem::Check(tandem::SameRequests(split.requests, whole.requests), "request depends on split");
  return 0;
}
