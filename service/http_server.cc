#include "service/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "service/http_exchange.h"

namespace tandem {
namespace {

using http_internal::ErrorResponse;
using http_internal::Exchange;
using http_internal::LoopMailbox;
using http_internal::Response;

using Clock = std::chrono::steady_clock;

// Timeouts are checked by a sweep this often, so they fire up to this much late.
constexpr auto kSweepInterval = std::chrono::milliseconds(100);
// After a final response on a closing connection the write side is shut and unread input
// drained for this long, so a client still sending (say, a body we refused with 413) reads
// our answer instead of losing it to the RST that closing with unread data causes.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kReadChunkBytes = 64 << 10;
// Reads per readiness event, so one fast uploader does not starve the loop's others.
constexpr int kReadsPerDrive = 16;
// One SSL_write at most; a retry after WANT_WRITE then never asks for less than before.
constexpr size_t kMaxTlsWriteBytes = 256 << 10;
// epoll_event.data.u64 for the two fds that are not connections; connection ids start above.
constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;

std::string Errno(std::string_view what) { return Cat(what, ": ", std::strerror(errno)); }

// The OpenSSL error queue as text (and emptied), for a status message.
std::string TlsErrors() {
  std::string out;
  while (const unsigned long err = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown error" : out;
}

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

absl::Status CheckReadable(const std::string& path, std::string_view what) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) {
    return absl::InvalidArgumentError(Errno(Cat("cannot read TLS ", what, " file ", path)));
  }
  std::fclose(f);
  return absl::OkStatus();
}

absl::StatusOr<SslCtxPtr> MakeTlsContext(const HttpServerOptions& options) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return absl::InternalError(Cat("SSL_CTX_new: ", TlsErrors()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  // Renegotiation is a DoS lever and HTTP/1.1 has no use for it. An EOF without close_notify
  // is how most HTTP clients leave: treat it as a close, not an error.
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  // The output buffer may grow (move) between a WANT_WRITE and the retry.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  RETURN_IF_ERROR(CheckReadable(options.tls_cert_file, "certificate"));
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), options.tls_cert_file.c_str()) != 1) {
    return absl::InvalidArgumentError(
        Cat("bad TLS certificate file ", options.tls_cert_file, ": ", TlsErrors()));
  }
  RETURN_IF_ERROR(CheckReadable(options.tls_key_file, "key"));
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), options.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        Cat("bad TLS key file ", options.tls_key_file, ": ", TlsErrors()));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::InvalidArgumentError(Cat("TLS key file ", options.tls_key_file,
                                          " does not match certificate file ",
                                          options.tls_cert_file, ": ", TlsErrors()));
  }
  if (!options.tls_client_ca_file.empty()) {
    const std::string& ca = options.tls_client_ca_file;
    RETURN_IF_ERROR(CheckReadable(ca, "client CA"));
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str());
    if (SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1 || names == nullptr) {
      if (names != nullptr) sk_X509_NAME_pop_free(names, X509_NAME_free);
      return absl::InvalidArgumentError(Cat("bad TLS client CA file ", ca, ": ", TlsErrors()));
    }
    SSL_CTX_set_client_CA_list(ctx.get(), names);  // takes ownership
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

absl::StatusOr<int> Listen(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* addrs = nullptr;
  const std::string port_text = std::to_string(port);
  if (const int rc =
          getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &addrs);
      rc != 0) {
    return absl::UnavailableError(Cat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* a = addrs; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = Errno("socket");
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      error = Errno("bind/listen");
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(addrs);
  if (fd < 0) return absl::UnavailableError(Cat("cannot listen on ", host, ":", port, ": ", error));
  return fd;
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "";
  char ip[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
    return Cat(ip, ":", ntohs(in->sin_port));
  }
  const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
  inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
  return Cat("[", ip, "]:", ntohs(in6->sin6_port));
}

class EventLoop;

// What the loops share; owned by the server, which outlives its loops.
struct ServerContext {
  HttpServerOptions options;
  HttpHandler handler;
  SslCtxPtr ssl_ctx;  // null: plain HTTP
  int listen_fd = -1;
  std::atomic<int> connections{0};
  std::vector<std::unique_ptr<EventLoop>> loops;
};

struct Connection {
  explicit Connection(HttpRequestParser::Limits limits) : parser(limits) {}

  uint64_t id = 0;
  int fd = -1;
  SSL* ssl = nullptr;  // null: plain HTTP
  std::string peer;
  bool handshake_done = false;
  bool handshake_wants_write = false;
  bool read_wants_write = false;  // TLS: SSL_read needs the socket writable
  bool write_wants_read = false;  // TLS: SSL_write needs the socket readable
  HttpRequestParser parser;
  std::string input;   // read, not yet parsed: the rest of pipelined requests waits here
  std::string output;  // for the socket; output[0, output_sent) is sent
  size_t output_sent = 0;
  std::shared_ptr<Exchange> exchange;  // the request in flight; null between requests
  bool exchange_ended = false;         // ... and all its bytes are in `output`
  bool close_after_exchange = false;
  bool continue_sent = false;
  bool peer_eof = false;   // the client sent FIN: it sends nothing more
  bool closing = false;    // close once `output` is flushed
  bool lingering = false;  // write side shut; draining input until EOF or the deadline
  bool dead = false;       // closed; erased from the loop after the current event
  uint32_t events = 0;     // registered with epoll

  enum class Timer { kNone, kRequest, kIdle, kLinger };
  Timer timer = Timer::kNone;
  Clock::time_point timer_start;

  bool flushed() const { return output_sent == output.size(); }
};

// One thread, one epoll set, any number of connections. Everything but the mailbox is
// touched by the loop's thread only.
class EventLoop {
 public:
  EventLoop(ServerContext& server, int index) : server_(server), index_(index) {}
  ~EventLoop() {
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  absl::Status Init() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd_ < 0) return absl::InternalError(Errno("epoll_create1"));
    const int event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd < 0) return absl::InternalError(Errno("eventfd"));
    mailbox_ = std::make_shared<LoopMailbox>(event_fd);
    RETURN_IF_ERROR(Register(event_fd, kWakeId, EPOLLIN));
    if (index_ == 0) RETURN_IF_ERROR(Register(server_.listen_fd, kListenId, EPOLLIN));
    return absl::OkStatus();
  }
  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() { thread_.join(); }
  bool OnThisThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  LoopMailbox& mailbox() { return *mailbox_; }

  // Takes a new connection's socket (loop thread).
  void Adopt(int fd) {
    auto c = std::make_unique<Connection>(
        HttpRequestParser::Limits{.max_header_bytes = server_.options.max_header_bytes,
                                  .max_body_bytes = server_.options.max_body_bytes});
    c->id = next_id_++;
    c->fd = fd;
    c->peer = PeerName(fd);
    c->timer = Connection::Timer::kRequest;  // the first request (and handshake) must come
    c->timer_start = Clock::now();
    if (server_.ssl_ctx != nullptr) {
      c->ssl = SSL_new(server_.ssl_ctx.get());
      if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1) {
        LOG(ERROR) << "SSL_new: " << TlsErrors();
        if (c->ssl != nullptr) SSL_free(c->ssl);
        close(fd);
        --server_.connections;
        return;
      }
      SSL_set_accept_state(c->ssl);
    } else {
      c->handshake_done = true;
    }
    c->events = EPOLLIN | EPOLLRDHUP;
    if (!Register(fd, c->id, c->events).ok()) {
      LOG(ERROR) << "epoll_ctl: " << std::strerror(errno);
      if (c->ssl != nullptr) SSL_free(c->ssl);
      close(fd);
      --server_.connections;
      return;
    }
    connections_.emplace(c->id, std::move(c));
  }

 private:
  absl::Status Register(int fd, uint64_t id, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      return absl::InternalError(Errno("epoll_ctl"));
    }
    return absl::OkStatus();
  }

  void Run() {
    pthread_setname_np(pthread_self(), Cat("http-loop-", index_).c_str());
    // OpenSSL writes to the socket with write(), which raises SIGPIPE when the client has
    // gone. Blocked on this thread, the write fails with EPIPE instead and the process
    // lives. Plain sockets use MSG_NOSIGNAL.
    sigset_t sigpipe;
    sigemptyset(&sigpipe);
    sigaddset(&sigpipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigpipe, nullptr);

    std::array<epoll_event, 256> events;
    Clock::time_point next_sweep = Clock::now() + kSweepInterval;
    bool stop = false;
    while (!stop) {
      const int timeout_ms = static_cast<int>(
          std::chrono::ceil<std::chrono::milliseconds>(next_sweep - Clock::now()).count());
      const int n = epoll_wait(epoll_fd_, events.data(), events.size(), std::max(timeout_ms, 0));
      if (n < 0 && errno != EINTR) LOG(FATAL) << Errno("epoll_wait");
      for (int i = 0; i < n; ++i) {
        const uint64_t id = events[i].data.u64;
        if (id == kListenId) {
          AcceptAll();
        } else if (id == kWakeId) {
          stop |= HandleMailbox();
        } else if (auto it = connections_.find(id); it != connections_.end()) {
          OnEvent(*it->second, events[i].events);
        }
      }
      const Clock::time_point now = Clock::now();
      if (now >= next_sweep) {
        Sweep(now);
        next_sweep = now + kSweepInterval;
      }
      Reap();
    }
    for (const int fd : mailbox_->Stop()) {
      close(fd);
      --server_.connections;
    }
    for (auto& [id, c] : connections_) Close(*c);
    connections_.clear();
  }

  // Loop 0 only: takes every pending connection and deals them out round robin.
  void AcceptAll() {
    while (true) {
      const int fd = accept4(server_.listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: stop listening until the next sweep rather than spin on a
          // listen socket that stays readable.
          LOG(WARNING) << Errno("accept4") << "; pausing accepts";
          epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, server_.listen_fd, nullptr);
          accept_paused_ = true;
        } else if (errno != EAGAIN) {
          LOG(ERROR) << Errno("accept4");
        }
        return;
      }
      if (server_.connections.load() >= server_.options.max_connections) {
        close(fd);
        continue;
      }
      ++server_.connections;
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // events go out at once
      EventLoop& loop = *server_.loops[next_loop_++ % server_.loops.size()];
      if (&loop == this) {
        Adopt(fd);
      } else if (!loop.mailbox().PostConnection(fd)) {
        close(fd);  // that loop is shutting down
        --server_.connections;
      }
    }
  }

  // Returns whether the server asked this loop to stop.
  bool HandleMailbox() {
    LoopMailbox::Batch batch = mailbox_->Take();
    for (const int fd : batch.fds) Adopt(fd);
    for (const uint64_t id : batch.ready) {
      if (auto it = connections_.find(id); it != connections_.end()) Drive(*it->second);
    }
    return batch.stop;
  }

  void OnEvent(Connection& c, uint32_t events) {
    if (events & EPOLLERR) {
      Close(c);  // reset by the peer, or a failed write
      return;
    }
    if (!c.handshake_done) {
      Handshake(c);  // drives the connection once done
      return;
    }
    if (c.lingering) {
      Drain(c);
      return;
    }
    if ((events & (EPOLLRDHUP | EPOLLHUP)) && c.exchange != nullptr) {
      // The client left (or half-closed) while its request is in flight: that cancels it.
      // Input is not read then, so FIN shows only as RDHUP.
      if (!c.exchange_ended) {
        Close(c);
        return;
      }
      c.peer_eof = true;
    } else if ((events & (EPOLLRDHUP | EPOLLHUP)) && c.closing) {
      c.peer_eof = true;  // input is no longer read; stop the level-triggered RDHUP
    }
    Drive(c);
  }

  void Handshake(Connection& c) {
    ERR_clear_error();
    const int rc = SSL_do_handshake(c.ssl);
    if (rc == 1) {
      c.handshake_done = true;
      c.handshake_wants_write = false;
      Drive(c);  // the request may have come with the handshake's last flight
      return;
    }
    const int err = SSL_get_error(c.ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      c.handshake_wants_write = err == SSL_ERROR_WANT_WRITE;
      UpdateInterest(c);
      return;
    }
    LOG(INFO) << "TLS handshake with " << c.peer
              << " failed: " << (err == SSL_ERROR_SSL ? TlsErrors() : "connection closed");
    ERR_clear_error();
    Close(c);
  }

  // Moves the connection as far as it can go without blocking: takes the response's
  // output, writes, finishes the exchange, parses (and dispatches) the next request, reads.
  void Drive(Connection& c) {
    int reads_left = kReadsPerDrive;
    while (!c.dead) {
      bool progress = false;
      if (c.exchange != nullptr && !c.exchange_ended) {
        progress |= PullOutput(c);
        if (c.dead) return;
      }
      if (!c.flushed() && !Flush(c)) return;
      if (c.exchange != nullptr && c.exchange_ended && c.flushed()) {
        FinishExchange(c);
        progress = true;
      }
      if (c.closing) {
        if (c.flushed()) StartLinger(c);
        break;
      }
      if (c.exchange == nullptr) {
        if (!c.input.empty()) {
          Parse(c);
          progress = true;
        } else if (!c.peer_eof && reads_left-- > 0) {
          progress |= Read(c);
        }
      }
      if (!progress) break;
    }
    if (c.dead) return;
    if (c.peer_eof && c.exchange == nullptr && c.input.empty() && c.flushed()) {
      Close(c);  // nothing more will come, and nothing is owed
      return;
    }
    UpdateInterest(c);
  }

  // Returns whether the exchange ended (progress for Drive); data alone is flushed by Drive.
  bool PullOutput(Connection& c) {
    Exchange::Output out = c.exchange->Take();
    if (out.kill) {
      Close(c);
      return false;
    }
    c.output += out.bytes;
    c.close_after_exchange = out.close_after;
    c.exchange_ended = out.ended;
    return out.ended;
  }

  // Returns false when the connection closed.
  bool Flush(Connection& c) {
    while (!c.flushed()) {
      const char* data = c.output.data() + c.output_sent;
      const size_t size = c.output.size() - c.output_sent;
      ssize_t n;
      if (c.ssl != nullptr) {
        ERR_clear_error();
        size_t written = 0;
        const int rc = SSL_write_ex(c.ssl, data, std::min(size, kMaxTlsWriteBytes), &written);
        if (rc != 1) {
          const int err = SSL_get_error(c.ssl, rc);
          if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
            c.write_wants_read = err == SSL_ERROR_WANT_READ;
            break;
          }
          ERR_clear_error();
          Close(c);
          return false;
        }
        c.write_wants_read = false;
        n = static_cast<ssize_t>(written);
      } else {
        n = send(c.fd, data, size, MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) break;
          Close(c);
          return false;
        }
      }
      c.output_sent += static_cast<size_t>(n);
    }
    if (c.flushed()) {
      c.output.clear();
      c.output_sent = 0;
    } else if (c.output_sent > c.output.size() / 2) {
      c.output.erase(0, c.output_sent);
      c.output_sent = 0;
    }
    if (c.exchange != nullptr) c.exchange->SetUnwritten(c.output.size() - c.output_sent);
    return true;
  }

  // Appends what the socket has (one chunk). Returns whether anything changed.
  bool Read(Connection& c) {
    char* buf = read_buffer_.data();
    while (true) {
      ssize_t n;
      if (c.ssl != nullptr) {
        ERR_clear_error();
        size_t got = 0;
        const int rc = SSL_read_ex(c.ssl, buf, read_buffer_.size(), &got);
        if (rc != 1) {
          const int err = SSL_get_error(c.ssl, rc);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            c.read_wants_write = err == SSL_ERROR_WANT_WRITE;
            return false;
          }
          ERR_clear_error();
          if (err == SSL_ERROR_ZERO_RETURN) {
            c.peer_eof = true;
            return true;
          }
          Close(c);
          return false;
        }
        c.read_wants_write = false;
        n = static_cast<ssize_t>(got);
      } else {
        n = recv(c.fd, buf, read_buffer_.size(), 0);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) return false;
          Close(c);
          return false;
        }
        if (n == 0) {
          c.peer_eof = true;
          return true;
        }
      }
      c.input.append(buf, static_cast<size_t>(n));
      return true;
    }
  }

  void Parse(Connection& c) {
    const bool was_started = c.parser.started();
    const size_t used = c.parser.Feed(c.input);
    c.input.erase(0, used);
    if (!was_started && c.parser.started()) {
      c.timer = Connection::Timer::kRequest;
      c.timer_start = Clock::now();
    }
    switch (c.parser.state()) {
      case HttpRequestParser::State::kError:
        SendError(c, c.parser.error_status(), c.parser.error_message());
        return;
      case HttpRequestParser::State::kDone:
        Dispatch(c);
        return;
      case HttpRequestParser::State::kNeedMore:
        if (c.parser.expects_continue() && !c.continue_sent) {
          c.output += "HTTP/1.1 100 Continue\r\n\r\n";
          c.continue_sent = true;
        }
        return;
    }
  }

  void Dispatch(Connection& c) {
    HttpRequest request = c.parser.TakeRequest();
    c.parser.Reset();
    request.peer = c.peer;
    c.continue_sent = false;
    c.timer = Connection::Timer::kNone;  // a response may stream for as long as it likes
    c.exchange = std::make_shared<Exchange>(mailbox_, c.id, request,
                                            server_.options.max_pending_output_bytes);
    c.exchange_ended = false;
    server_.handler(std::move(request), std::make_shared<Response>(c.exchange));
  }

  void FinishExchange(Connection& c) {
    c.exchange = nullptr;
    if (c.close_after_exchange) {
      c.closing = true;
    } else {
      c.timer = Connection::Timer::kIdle;
      c.timer_start = Clock::now();
    }
  }

  void SendError(Connection& c, int status, std::string_view message) {
    c.output += ErrorResponse(status, message);
    c.closing = true;
    c.input.clear();
    // Bounds the time a client that does not read may hold the connection.
    c.timer = Connection::Timer::kLinger;
    c.timer_start = Clock::now();
  }

  void StartLinger(Connection& c) {
    if (c.peer_eof) {
      Close(c);
      return;
    }
    if (c.ssl != nullptr) {
      ERR_clear_error();
      SSL_shutdown(c.ssl);  // close_notify, best effort
      ERR_clear_error();
    }
    shutdown(c.fd, SHUT_WR);
    c.lingering = true;
    c.timer = Connection::Timer::kLinger;
    c.timer_start = Clock::now();
    UpdateInterest(c);
  }

  // Lingering: reads and drops the client's input until it closes (or the deadline).
  void Drain(Connection& c) {
    for (int i = 0; i < kReadsPerDrive; ++i) {
      const ssize_t n = recv(c.fd, read_buffer_.data(), read_buffer_.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return;
      if (n <= 0) break;
    }
    Close(c);
  }

  void UpdateInterest(Connection& c) {
    uint32_t events = c.peer_eof ? 0u : static_cast<uint32_t>(EPOLLRDHUP);
    if (!c.handshake_done) {
      events |= c.handshake_wants_write ? EPOLLOUT : EPOLLIN;
    } else if (c.lingering) {
      events |= EPOLLIN;
    } else {
      const bool wants_input = c.exchange == nullptr && !c.closing && !c.peer_eof;
      if (wants_input || c.write_wants_read) events |= EPOLLIN;
      if (!c.flushed() || c.read_wants_write) events |= EPOLLOUT;
    }
    if (events == c.events) return;
    c.events = events;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = c.id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev) != 0) {
      LOG(ERROR) << Errno("epoll_ctl");
      Close(c);
    }
  }

  void Close(Connection& c) {
    if (c.dead) return;
    c.dead = true;
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
    if (c.ssl != nullptr) SSL_free(c.ssl);
    c.ssl = nullptr;
    close(c.fd);
    --server_.connections;
    dead_.push_back(c.id);
    // Last: OnClose's callback may run here and post to other responses.
    if (std::shared_ptr<Exchange> exchange = std::move(c.exchange)) exchange->Abort();
  }

  void Sweep(Clock::time_point now) {
    const HttpServerOptions& o = server_.options;
    const auto request_timeout = absl::ToChronoNanoseconds(o.request_timeout);
    const auto idle_timeout = absl::ToChronoNanoseconds(o.idle_timeout);
    for (auto& [id, c] : connections_) {
      if (c->dead) continue;
      switch (c->timer) {
        case Connection::Timer::kNone:
          break;
        case Connection::Timer::kRequest:
          if (now - c->timer_start < request_timeout) break;
          if (c->handshake_done && c->parser.started()) {
            SendError(*c, 408, "request timed out");
            Drive(*c);
          } else {
            Close(*c);
          }
          break;
        case Connection::Timer::kIdle:
          if (now - c->timer_start >= idle_timeout) Close(*c);
          break;
        case Connection::Timer::kLinger:
          if (now - c->timer_start >= kLingerTime) Close(*c);
          break;
      }
    }
    if (accept_paused_) {
      accept_paused_ = false;
      if (!Register(server_.listen_fd, kListenId, EPOLLIN).ok()) accept_paused_ = true;
    }
  }

  void Reap() {
    for (const uint64_t id : dead_) connections_.erase(id);
    dead_.clear();
  }

  ServerContext& server_;
  const int index_;
  int epoll_fd_ = -1;
  std::shared_ptr<LoopMailbox> mailbox_;
  std::thread thread_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::vector<uint64_t> dead_;  // closed during this iteration, erased at its end
  uint64_t next_id_ = kWakeId + 1;
  size_t next_loop_ = 0;  // loop 0: where the next accepted connection goes
  bool accept_paused_ = false;
  std::array<char, kReadChunkBytes> read_buffer_;
};

class HttpServerImpl final : public HttpServer {
 public:
  HttpServerImpl(HttpServerOptions options, HttpHandler handler) {
    context_.options = std::move(options);
    context_.handler = std::move(handler);
  }
  ~HttpServerImpl() override { Shutdown(); }

  absl::Status Init() {
    const HttpServerOptions& o = context_.options;
    if (o.threads < 1) return absl::InvalidArgumentError("HttpServerOptions.threads must be >= 1");
    if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
      return absl::InvalidArgumentError("tls_cert_file and tls_key_file go together");
    }
    if (!o.tls_client_ca_file.empty() && o.tls_cert_file.empty()) {
      return absl::InvalidArgumentError("tls_client_ca_file needs tls_cert_file and tls_key_file");
    }
    if (!o.tls_cert_file.empty()) {
      ASSIGN_OR_RETURN(context_.ssl_ctx, MakeTlsContext(o));
    }
    ASSIGN_OR_RETURN(context_.listen_fd, Listen(o.host, o.port));
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (getsockname(context_.listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return absl::InternalError(Errno("getsockname"));
    }
    port_ =
        ntohs(addr.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in*>(&addr)->sin_port
                                        : reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
    for (int i = 0; i < o.threads; ++i) {
      context_.loops.push_back(std::make_unique<EventLoop>(context_, i));
      RETURN_IF_ERROR(context_.loops.back()->Init());
    }
    for (auto& loop : context_.loops) loop->Start();
    started_ = true;
    return absl::OkStatus();
  }

  int port() const override { return port_; }

  void Shutdown() override {
    absl::MutexLock lock(&shutdown_mu_);
    if (!shut_down_) {
      shut_down_ = true;
      if (started_) {
        for (auto& loop : context_.loops) {
          CHECK(!loop->OnThisThread()) << "HttpServer::Shutdown from its own event loop";
        }
        for (auto& loop : context_.loops) loop->mailbox().RequestStop();
        for (auto& loop : context_.loops) loop->Join();
      }
      context_.loops.clear();
      if (context_.listen_fd >= 0) close(context_.listen_fd);
      context_.listen_fd = -1;
    }
  }

 private:
  ServerContext context_;
  int port_ = 0;
  bool started_ = false;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpServerOptions options,
                                                              HttpHandler handler) {
  if (handler == nullptr) return absl::InvalidArgumentError("HttpServer needs a handler");
  auto server = std::make_unique<HttpServerImpl>(std::move(options), std::move(handler));
  RETURN_IF_ERROR(server->Init());
  return std::unique_ptr<HttpServer>(std::move(server));
}

std::string_view HttpReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 499:
      return "Client Closed Request";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "";
  }
}

}  // namespace tandem
