#include "service/http_parser.h"

#include <algorithm>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "common/strings.h"

namespace tandem {
namespace {

// A chunk-size line is a hex number and extensions we ignore; longer lines are abuse.
constexpr size_t kMaxChunkLineBytes = 4096;

// tchar in RFC 9110 5.6.2.
bool IsTokenChar(char c) {
  if (absl::ascii_isalnum(static_cast<unsigned char>(c))) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

// field-value characters: visible ASCII, obs-text, space and tab (no CR, LF, NUL, ...).
bool IsFieldValueChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

bool IsOws(char c) { return c == ' ' || c == '\t'; }

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

// NOTE: Debian's abseil has its own absl::string_view, so the absl::Str* helpers that take
// one are avoided here in favour of these few on std::string_view.
bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return absl::ascii_tolower(static_cast<unsigned char>(x)) ==
                  absl::ascii_tolower(static_cast<unsigned char>(y));
         });
}

// The items of a comma-separated header list, whitespace-trimmed (empty ones included).
std::vector<std::string_view> SplitList(std::string_view value) {
  std::vector<std::string_view> items;
  while (true) {
    const size_t comma = value.find(',');
    items.push_back(TrimOws(value.substr(0, comma)));
    if (comma == std::string_view::npos) return items;
    value.remove_prefix(comma + 1);
  }
}

// Whether the comma-separated header list `value` holds `token` (case-insensitive).
bool ListHasToken(std::string_view value, std::string_view token) {
  for (std::string_view item : SplitList(value)) {
    if (EqualsIgnoreCase(item, token)) return true;
  }
  return false;
}

// Drops one trailing CR, LF or CRLF.
std::string_view StripLineEnd(std::string_view line) {
  if (line.ends_with('\n')) line.remove_suffix(1);
  if (line.ends_with('\r')) line.remove_suffix(1);
  return line;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

const std::string* HttpRequest::Header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return &value;
  }
  return nullptr;
}

bool HttpRequest::KeepAlive() const {
  bool close = false;
  bool keep_alive = false;
  for (const auto& [name, value] : headers) {
    if (name != "connection") continue;
    close |= ListHasToken(value, "close");
    keep_alive |= ListHasToken(value, "keep-alive");
  }
  if (close) return false;
  return version_minor >= 1 || keep_alive;
}

void HttpRequestParser::Reset() {
  state_ = State::kNeedMore;
  phase_ = Phase::kHead;
  buffer_.clear();
  request_ = HttpRequest();
  body_remaining_ = 0;
  trailer_bytes_ = 0;
  started_ = false;
  expects_continue_ = false;
  error_status_ = 0;
  error_message_.clear();
}

bool HttpRequestParser::Fail(int status, std::string message) {
  state_ = State::kError;
  error_status_ = status;
  error_message_ = std::move(message);
  return false;
}

size_t HttpRequestParser::Feed(std::string_view data) {
  size_t used = 0;
  while (state_ == State::kNeedMore && used < data.size()) {
    const std::string_view rest = data.substr(used);
    switch (phase_) {
      case Phase::kHead:
        used += FeedHead(rest);
        break;
      case Phase::kBody:
        used += FeedBody(rest);
        break;
      default:
        used += FeedChunked(rest);
        break;
    }
  }
  return used;
}

size_t HttpRequestParser::FeedHead(std::string_view data) {
  size_t skipped = 0;
  if (buffer_.empty()) {
    // RFC 9112 2.2: ignore empty lines before the request line (a client's stray CRLF
    // after a previous body).
    while (skipped < data.size() && (data[skipped] == '\r' || data[skipped] == '\n')) {
      ++skipped;
    }
    data.remove_prefix(skipped);
    if (data.empty()) return skipped;
    started_ = true;
  }
  // Keep at most one byte past the limit: enough to tell that the head is too long.
  const size_t old_size = buffer_.size();
  const size_t take = std::min(data.size(), limits_.max_header_bytes + 1 - old_size);
  buffer_.append(data.data(), take);
  // The head ends with an empty line: LF then (CR) LF. A bare LF ends a line too (RFC 9112
  // 2.2 allows it); a bare CR anywhere is rejected when the lines are parsed.
  size_t end = std::string::npos;
  for (size_t i = buffer_.find('\n', old_size); i != std::string::npos;
       i = buffer_.find('\n', i + 1)) {
    if ((i >= 1 && buffer_[i - 1] == '\n') ||
        (i >= 2 && buffer_[i - 1] == '\r' && buffer_[i - 2] == '\n')) {
      end = i + 1;
      break;
    }
  }
  if (end == std::string::npos) {
    if (buffer_.size() > limits_.max_header_bytes) {
      Fail(431, Cat("request head exceeds ", limits_.max_header_bytes, " bytes"));
    }
    return skipped + take;
  }
  if (end > limits_.max_header_bytes) {
    Fail(431, Cat("request head exceeds ", limits_.max_header_bytes, " bytes"));
    return skipped + take;
  }
  buffer_.resize(end);
  const size_t used = skipped + (end - old_size);
  const std::string head = std::move(buffer_);
  buffer_.clear();
  ParseHead(head);
  return used;
}

bool HttpRequestParser::ParseHead(std::string_view head) {
  bool first = true;
  while (!head.empty()) {
    const size_t lf = head.find('\n');  // the head ends with LF, so there is one
    const std::string_view line = StripLineEnd(head.substr(0, lf));
    head.remove_prefix(lf + 1);
    if (line.empty()) break;  // the blank line that ends the head
    if (line.find('\r') != std::string_view::npos) return Fail(400, "bare CR in request head");
    if (first) {
      if (!ParseRequestLine(line)) return false;
      first = false;
    } else if (!ParseHeaderLine(line)) {
      return false;
    }
  }

  // Framing (RFC 9112 6): chunked, or Content-Length, or no body.
  bool has_length = false;
  bool length_too_large = false;
  size_t length = 0;
  bool chunked = false;
  bool has_transfer_encoding = false;
  for (const auto& [name, value] : request_.headers) {
    if (name == "content-length") {
      if (value.empty() || !std::all_of(value.begin(), value.end(), absl::ascii_isdigit)) {
        return Fail(400, "invalid Content-Length");
      }
      // Saturates above the limit instead of overflowing.
      size_t n = 0;
      bool too_large = false;
      for (char c : value) {
        n = n * 10 + static_cast<size_t>(c - '0');
        if (n > limits_.max_body_bytes) {
          too_large = true;
          n = limits_.max_body_bytes + 1;
        }
      }
      if (has_length && (n != length || too_large != length_too_large)) {
        return Fail(400, "conflicting Content-Length values");
      }
      has_length = true;
      length = n;
      length_too_large = too_large;
    } else if (name == "transfer-encoding") {
      has_transfer_encoding = true;
      for (std::string_view coding : SplitList(value)) {
        if (coding.empty()) continue;
        if (!EqualsIgnoreCase(coding, "chunked")) {
          return Fail(501, Cat("unsupported transfer coding: ", coding));
        }
        if (chunked) return Fail(400, "chunked applied more than once");
        chunked = true;
      }
    } else if (name == "expect") {
      // HTTP/1.0 clients do not wait for the interim response (RFC 9110 10.1.1).
      expects_continue_ = request_.version_minor >= 1 && EqualsIgnoreCase(value, "100-continue");
    }
  }
  if (has_transfer_encoding) {
    if (has_length) return Fail(400, "both Content-Length and Transfer-Encoding");
    // RFC 9112 6.1: HTTP/1.0 has no chunked framing to trust.
    if (request_.version_minor == 0) return Fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (!chunked) return Fail(400, "Transfer-Encoding without chunked");
    phase_ = Phase::kChunkSize;
    return true;
  }
  if (length_too_large) {
    return Fail(413, Cat("request body exceeds ", limits_.max_body_bytes, " bytes"));
  }
  if (has_length && length > 0) {
    phase_ = Phase::kBody;
    body_remaining_ = length;
    // Not reserve(length): the length is the client's word; the body grows as it arrives.
    return true;
  }
  state_ = State::kDone;
  return true;
}

bool HttpRequestParser::ParseRequestLine(std::string_view line) {
  // request-line = method SP request-target SP HTTP-version
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return Fail(400, "malformed request line");
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) return Fail(400, "invalid method");

  // HTTP-version = "HTTP/" DIGIT "." DIGIT
  if (version.size() != 8 || !version.starts_with("HTTP/") ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[5])) || version[6] != '.' ||
      !absl::ascii_isdigit(static_cast<unsigned char>(version[7]))) {
    return Fail(400, "malformed HTTP version");
  }
  if (version[5] != '1' || (version[7] != '0' && version[7] != '1')) {
    return Fail(505, Cat("unsupported HTTP version: ", version));
  }
  request_.version_minor = version[7] - '0';

  if (target.empty() ||
      !std::all_of(target.begin(), target.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    return Fail(400, "invalid request target");
  }
  std::string_view path_and_query;
  if (target.front() == '/') {
    path_and_query = target;  // origin-form
  } else if (target == "*") {
    if (method != "OPTIONS") return Fail(400, "'*' target is only for OPTIONS");
    path_and_query = target;  // asterisk-form
  } else {
    // absolute-form: scheme "://" authority [path-abempty] ["?" query]
    std::string_view rest = target;
    if (rest.starts_with("http://")) {
      rest.remove_prefix(7);
    } else if (rest.starts_with("https://")) {
      rest.remove_prefix(8);
    } else {
      return Fail(400, "invalid request target");
    }
    const size_t authority_end = rest.find_first_of("/?");
    if (authority_end == 0 || rest.empty()) return Fail(400, "absolute target without a host");
    path_and_query = authority_end == std::string_view::npos ? "" : rest.substr(authority_end);
  }
  const size_t question = path_and_query.find('?');
  std::string_view path = path_and_query.substr(0, question);
  if (path.empty()) path = "/";
  request_.method = std::string(method);
  request_.target = std::string(target);
  request_.path = std::string(path);
  request_.query =
      question == std::string_view::npos ? "" : std::string(path_and_query.substr(question + 1));
  return true;
}

bool HttpRequestParser::ParseHeaderLine(std::string_view line) {
  if (IsOws(line.front())) return Fail(400, "obsolete header line folding");
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return Fail(400, "header line without a colon");
  const std::string_view name = line.substr(0, colon);
  // Also rejects whitespace before the colon (RFC 9112 5.1).
  if (!IsToken(name)) return Fail(400, "invalid header name");
  const std::string_view value = TrimOws(line.substr(colon + 1));
  if (!std::all_of(value.begin(), value.end(), IsFieldValueChar)) {
    return Fail(400, "invalid character in header value");
  }
  std::string lower_name(name);
  for (char& c : lower_name) c = absl::ascii_tolower(static_cast<unsigned char>(c));
  request_.headers.emplace_back(std::move(lower_name), std::string(value));
  return true;
}

size_t HttpRequestParser::FeedBody(std::string_view data) {
  const size_t take = std::min(data.size(), body_remaining_);
  request_.body.append(data.data(), take);
  body_remaining_ -= take;
  if (body_remaining_ == 0) state_ = State::kDone;
  return take;
}

size_t HttpRequestParser::FeedLine(std::string_view data, size_t max_bytes, bool* complete) {
  const size_t lf = data.find('\n');
  const size_t take = lf == std::string_view::npos ? data.size() : lf + 1;
  *complete = lf != std::string_view::npos;
  if (buffer_.size() + take > max_bytes) {
    Fail(phase_ == Phase::kTrailers ? 431 : 400, "chunk line or trailers too long");
    *complete = false;
    return take;
  }
  buffer_.append(data.data(), take);
  return take;
}

size_t HttpRequestParser::FeedChunked(std::string_view data) {
  switch (phase_) {
    case Phase::kChunkSize: {
      bool complete = false;
      const size_t used = FeedLine(data, kMaxChunkLineBytes, &complete);
      if (!complete) return used;
      const std::string_view line = StripLineEnd(buffer_);
      // chunk-size [ chunk-ext ]; the extensions are ignored but must be clean text.
      size_t digits = 0;
      size_t size = 0;
      const size_t room = limits_.max_body_bytes - request_.body.size();
      bool too_large = false;
      for (; digits < line.size() && HexDigit(line[digits]) >= 0; ++digits) {
        size = size * 16 + static_cast<size_t>(HexDigit(line[digits]));
        if (size > room) {
          too_large = true;
          size = room + 1;  // saturate instead of overflowing
        }
      }
      const std::string_view ext = line.substr(digits);
      if (digits == 0 || (!ext.empty() && ext.front() != ';' && !IsOws(ext.front())) ||
          !std::all_of(ext.begin(), ext.end(), IsFieldValueChar)) {
        Fail(400, "invalid chunk size line");
        return used;
      }
      buffer_.clear();
      if (too_large) {
        Fail(413, Cat("request body exceeds ", limits_.max_body_bytes, " bytes"));
        return used;
      }
      if (size == 0) {
        phase_ = Phase::kTrailers;
        trailer_bytes_ = 0;
      } else {
        phase_ = Phase::kChunkData;
        body_remaining_ = size;
      }
      return used;
    }
    case Phase::kChunkData: {
      const size_t take = std::min(data.size(), body_remaining_);
      request_.body.append(data.data(), take);
      body_remaining_ -= take;
      if (body_remaining_ == 0) phase_ = Phase::kChunkDataEnd;
      return take;
    }
    case Phase::kChunkDataEnd: {
      // CRLF (or a bare LF) after the chunk's data; a CR seen earlier waits in buffer_.
      const char c = data.front();
      if (c == '\r' && buffer_.empty()) {
        buffer_.push_back('\r');
        return 1;
      }
      if (c != '\n') {
        Fail(400, "chunk data not followed by CRLF");
        return 1;
      }
      buffer_.clear();
      phase_ = Phase::kChunkSize;
      return 1;
    }
    case Phase::kTrailers: {
      // Trailer lines are read and dropped, within the head's size limit.
      bool complete = false;
      const size_t used = FeedLine(data, limits_.max_header_bytes - trailer_bytes_, &complete);
      if (!complete) return used;
      trailer_bytes_ += buffer_.size();
      const bool blank = buffer_ == "\n" || buffer_ == "\r\n";
      buffer_.clear();
      if (blank) state_ = State::kDone;
      return used;
    }
    default:
      return 0;  // not reached: Feed calls this in the chunked phases only
  }
}

}  // namespace tandem
