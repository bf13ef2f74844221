#include "service/http_exchange.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/strings.h"

namespace tandem {
namespace http_internal {
namespace {

std::string JsonEscape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string HttpDate() {
  return absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", absl::Now(), absl::UTCTimeZone());
}

bool IsTokenChar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace

std::string ErrorResponse(int status, std::string_view message) {
  const std::string body = Cat(R"({"error":{"message":")", JsonEscape(message),
                               R"(","type":"invalid_request_error","param":null,"code":null}})");
  return Cat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status),
             "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
             "\r\nDate: ", HttpDate(), "\r\nConnection: close\r\n\r\n", body);
}

void Exchange::Send(int status, HttpHeaders headers, std::string body) {
  absl::MutexLock lock(&mu_);
  if (phase_ != Phase::kNew) {
    LOG(ERROR) << "HttpResponse::Send after the response started; dropped";
    return;
  }
  phase_ = Phase::kEnded;
  if (aborted_) return;
  // RFC 9110 6.4.1: these never have content, so no length either.
  const bool bodyless = status == 204 || status == 304 || (status >= 100 && status < 200);
  std::string out =
      HeadLocked(status, headers, bodyless ? "" : Cat("Content-Length: ", body.size(), "\r\n"));
  if (!bodyless && !head_request_) out += body;
  AppendLocked(out);
}

void Exchange::StartStream(int status, HttpHeaders headers) {
  absl::MutexLock lock(&mu_);
  if (phase_ != Phase::kNew) {
    LOG(ERROR) << "HttpResponse::StartStream after the response started; dropped";
    return;
  }
  phase_ = Phase::kStreaming;
  if (aborted_) return;
  chunked_ = version_minor_ >= 1;
  if (!chunked_) close_after_ = true;  // HTTP/1.0: the end of the body is the close
  AppendLocked(HeadLocked(status, headers, chunked_ ? "Transfer-Encoding: chunked\r\n" : ""));
}

bool Exchange::Write(std::string_view data) {
  absl::MutexLock lock(&mu_);
  if (phase_ != Phase::kStreaming || aborted_ || kill_) return false;
  if (data.empty() || head_request_) return true;  // an empty chunk would end the body
  if (pending_.size() + loop_unwritten_ + data.size() > max_pending_bytes_) {
    // The loop closes the connection when it sees kill_; OnClose runs then.
    kill_ = true;
    NotifyLocked();
    return false;
  }
  if (chunked_) {
    char size[24];
    std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
    pending_ += size;
  }
  pending_.append(data.data(), data.size());
  if (chunked_) pending_ += "\r\n";
  NotifyLocked();
  return true;
}

void Exchange::End() {
  absl::MutexLock lock(&mu_);
  if (phase_ != Phase::kStreaming) {
    if (phase_ == Phase::kNew) LOG(ERROR) << "HttpResponse::End before StartStream; dropped";
    return;
  }
  phase_ = Phase::kEnded;
  if (aborted_) return;
  AppendLocked(chunked_ && !head_request_ ? "0\r\n\r\n" : "");
}

void Exchange::OnClose(std::function<void()> on_close) {
  {
    absl::MutexLock lock(&mu_);
    if (on_close_set_) {
      LOG(ERROR) << "HttpResponse::OnClose set twice; the second is ignored";
      return;
    }
    on_close_set_ = true;
    if (!closed_early_) {
      on_close_ = std::move(on_close);
      return;
    }
  }
  on_close();  // the connection already closed before the end
}

bool Exchange::closed() const {
  absl::MutexLock lock(&mu_);
  return aborted_ || phase_ == Phase::kEnded;
}

void Exchange::Abandon() {
  absl::MutexLock lock(&mu_);
  if (aborted_) return;
  if (phase_ == Phase::kNew) {
    LOG(ERROR) << "HttpResponse dropped without an answer; sending 500";
    close_after_ = true;
    phase_ = Phase::kEnded;
    const std::string body =
        R"({"error":{"message":"internal error: no response","type":"server_error","param":null,"code":null}})";
    std::string out = HeadLocked(500, {{"Content-Type", "application/json"}},
                                 Cat("Content-Length: ", body.size(), "\r\n"));
    if (!head_request_) out += body;
    AppendLocked(out);
  } else if (phase_ == Phase::kStreaming) {
    kill_ = true;
    NotifyLocked();
  }
}

Exchange::Output Exchange::Take() {
  absl::MutexLock lock(&mu_);
  notified_ = false;
  Output out;
  out.bytes = std::move(pending_);
  pending_.clear();
  loop_unwritten_ += out.bytes.size();
  out.ended = phase_ == Phase::kEnded;
  out.kill = kill_;
  out.close_after = close_after_;
  return out;
}

void Exchange::SetUnwritten(size_t bytes) {
  absl::MutexLock lock(&mu_);
  loop_unwritten_ = bytes;
}

void Exchange::Abort() {
  std::function<void()> on_close;
  {
    absl::MutexLock lock(&mu_);
    if (aborted_) return;
    aborted_ = true;
    pending_.clear();
    if (phase_ == Phase::kEnded) return;
    closed_early_ = true;
    on_close = std::move(on_close_);
  }
  if (on_close) on_close();
}

std::string Exchange::HeadLocked(int status, const HttpHeaders& headers, std::string_view framing) {
  std::string out = Cat("HTTP/1.1 ", status, " ", HttpReasonPhrase(status), "\r\n");
  for (const auto& [name, value] : headers) {
    const bool valid_name = !name.empty() && std::all_of(name.begin(), name.end(), IsTokenChar);
    if (!valid_name || value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      LOG(ERROR) << "dropping invalid response header " << name;  // no response splitting
      continue;
    }
    const std::string lower = Lower(name);
    if (lower == "content-length" || lower == "transfer-encoding") continue;  // ours to set
    if (lower == "connection") {
      close_after_ |= Lower(value).find("close") != std::string::npos;
      continue;
    }
    out += Cat(name, ": ", value, "\r\n");
  }
  out += Cat("Date: ", HttpDate(), "\r\n", framing);
  if (close_after_) {
    out += "Connection: close\r\n";
  } else if (version_minor_ == 0) {
    out += "Connection: keep-alive\r\n";
  }
  out += "\r\n";
  return out;
}

void Exchange::AppendLocked(std::string_view bytes) {
  pending_.append(bytes.data(), bytes.size());
  NotifyLocked();
}

void Exchange::NotifyLocked() {
  if (notified_) return;
  notified_ = true;
  mailbox_->NotifyOutput(connection_id_);
}

}  // namespace http_internal
}  // namespace tandem
