// The inside of HttpServer's responses (service/http_server.h): what the handler's threads
// and a connection's event loop share. LoopMailbox carries work to a loop; Exchange holds one
// request's response, encoded by whichever thread answers and taken by the loop; Response is
// the HttpResponse a handler holds. Only http_server.cc includes this.
#ifndef TANDEM_SERVICE_HTTP_EXCHANGE_H_
#define TANDEM_SERVICE_HTTP_EXCHANGE_H_

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "service/http_parser.h"
#include "service/http_server.h"

namespace tandem {
namespace http_internal {

// The server's own answer to a request it could not take: `status` with a JSON body in
// OpenAI's error shape, and "Connection: close".
std::string ErrorResponse(int status, std::string_view message);

// Where other threads leave work for one event loop: connections to adopt, connections whose
// response has new output, a stop request. Responses hold it by shared_ptr, so it outlives
// the loop; once the loop stopped, everything posted is refused and dropped.
class LoopMailbox {
 public:
  struct Batch {
    std::vector<int> fds;         // accepted sockets to adopt
    std::vector<uint64_t> ready;  // connection ids with output from their response
    bool stop = false;
  };

  explicit LoopMailbox(int event_fd) : event_fd_(event_fd) {}
  ~LoopMailbox() { Stop(); }

  bool PostConnection(int fd) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return false;
    batch_.fds.push_back(fd);
    WakeLocked();
    return true;
  }
  void NotifyOutput(uint64_t connection_id) {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    batch_.ready.push_back(connection_id);
    WakeLocked();
  }
  void RequestStop() {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    batch_.stop = true;
    WakeLocked();
  }
  // Loop thread only.
  Batch Take() {
    absl::MutexLock lock(&mu_);
    uint64_t count;
    while (event_fd_ >= 0 && read(event_fd_, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
    woken_ = false;
    return std::exchange(batch_, Batch());
  }
  // Refuses all later posts and closes the eventfd (the loop is done with it); returns the
  // sockets that were never adopted, for the caller to close.
  std::vector<int> Stop() {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    if (event_fd_ >= 0) close(event_fd_);
    event_fd_ = -1;
    return std::exchange(batch_, Batch()).fds;
  }

 private:
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (woken_) return;
    woken_ = true;
    const uint64_t one = 1;
    while (write(event_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
  }

  absl::Mutex mu_;
  int event_fd_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;  // a wake-up is in the eventfd, unread
  Batch batch_ ABSL_GUARDED_BY(mu_);
};

// One request's response as both sides see it: the handler's threads encode bytes into it,
// the connection's loop takes them. The connection and the handler's HttpResponse share it.
class Exchange {
 public:
  Exchange(std::shared_ptr<LoopMailbox> mailbox, uint64_t connection_id, const HttpRequest& request,
           size_t max_pending_bytes)
      : mailbox_(std::move(mailbox)),
        connection_id_(connection_id),
        head_request_(request.method == "HEAD"),
        version_minor_(request.version_minor),
        max_pending_bytes_(max_pending_bytes),
        close_after_(!request.KeepAlive()) {}

  void Send(int status, HttpHeaders headers, std::string body);
  void StartStream(int status, HttpHeaders headers);
  bool Write(std::string_view data);
  void End();
  void OnClose(std::function<void()> on_close);
  bool closed() const;

  // The handler dropped its HttpResponse: an unanswered request gets a 500, an unfinished
  // stream is cut (the client must not take a truncated body for a whole one).
  void Abandon();

  // Loop side. What the loop takes from the exchange in one go.
  struct Output {
    std::string bytes;
    bool ended = false;        // all the response's bytes are in `bytes` or taken before
    bool kill = false;         // close the connection now (client too far behind, or cut)
    bool close_after = false;  // close the connection after the response
  };
  Output Take();
  // The bytes of this response the loop holds but the socket has not taken yet.
  void SetUnwritten(size_t bytes);
  // The connection closed. Runs OnClose's callback (here, on the loop thread) unless the
  // response had ended.
  void Abort();

 private:
  enum class Phase { kNew, kStreaming, kEnded };

  std::string HeadLocked(int status, const HttpHeaders& headers, std::string_view framing)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AppendLocked(std::string_view bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<LoopMailbox> mailbox_;
  const uint64_t connection_id_;
  const bool head_request_;
  const int version_minor_;
  const size_t max_pending_bytes_;

  mutable absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kNew;
  bool close_after_ ABSL_GUARDED_BY(mu_);
  bool chunked_ ABSL_GUARDED_BY(mu_) = false;
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;       // the connection closed
  bool closed_early_ ABSL_GUARDED_BY(mu_) = false;  // ... before the response ended
  bool kill_ ABSL_GUARDED_BY(mu_) = false;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;      // the loop has been told to Take
  std::string pending_ ABSL_GUARDED_BY(mu_);        // encoded, not yet taken by the loop
  size_t loop_unwritten_ ABSL_GUARDED_BY(mu_) = 0;  // taken, not yet written to the socket
  bool on_close_set_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_close_ ABSL_GUARDED_BY(mu_);
};

// What the handler holds. Separate from Exchange so that dropping it is noticed (the
// connection keeps the Exchange alive).
class Response final : public HttpResponse {
 public:
  explicit Response(std::shared_ptr<Exchange> exchange) : exchange_(std::move(exchange)) {}
  ~Response() override { exchange_->Abandon(); }

  void Send(int status, HttpHeaders headers, std::string body) override {
    exchange_->Send(status, std::move(headers), std::move(body));
  }
  void StartStream(int status, HttpHeaders headers) override {
    exchange_->StartStream(status, std::move(headers));
  }
  bool Write(std::string_view data) override { return exchange_->Write(data); }
  void End() override { exchange_->End(); }
  void OnClose(std::function<void()> on_close) override { exchange_->OnClose(std::move(on_close)); }
  bool closed() const override { return exchange_->closed(); }

 private:
  const std::shared_ptr<Exchange> exchange_;
};

}  // namespace http_internal
}  // namespace tandem

#endif  // TANDEM_SERVICE_HTTP_EXCHANGE_H_
