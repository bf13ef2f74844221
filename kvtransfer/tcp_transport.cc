#include "kvtransfer/tcp_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvtransfer/crc32c.h"

namespace tandem {
namespace {

constexpr uint32_t kHeaderMagic = 0x31564B54;   // "TKV1" little-endian
constexpr uint32_t kTrailerMagic = 0x45564B54;  // "TKVE"
constexpr int kHeaderBytes = 24;
constexpr int kTrailerBytes = 8;

void PutLe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t GetLe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t GetLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

std::string ErrnoString(int err) {
  char buf[256];
  // GNU strerror_r: returns the message, not necessarily in `buf`.
  return absl::StrCat(strerror_r(err, buf, sizeof(buf)), " (errno ", err, ")");
}

// Milliseconds poll() should wait for `deadline`, rounded up; -1 for none.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, INT_MAX));
}

std::string SockAddrString(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    port = ntohs(in->sin_port);
    return absl::StrCat(host, ":", port);
  }
  if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    port = ntohs(in6->sin6_port);
    return absl::StrCat("[", host, "]:", port);
  }
  return "?";
}

std::string DescribeConnection(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len);
  getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len);
  return absl::StrCat(SockAddrString(local), " -> ", SockAddrString(peer));
}

void SetBufferSizes(int fd, const TcpTransportOptions& options) {
  if (options.socket_buffer_bytes <= 0) return;
  const int size = options.socket_buffer_bytes;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

void WakeEventFd(int fd) {
  const uint64_t one = 1;
  const ssize_t n = write(fd, &one, sizeof(one));
  (void)n;  // EAGAIN only when the counter would overflow: it is readable then anyway
}

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

absl::StatusOr<AddrInfoPtr> Resolve(const std::string& host, int port, bool passive) {
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("TCP port ", port, " out of range"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  const std::string service = std::to_string(port);
  const int rc =
      getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  return AddrInfoPtr(result);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TcpTransport

absl::StatusOr<std::unique_ptr<TcpTransport>> TcpTransport::Connect(
    const std::string& host, int port, const TcpTransportOptions& options) {
  ASSIGN_OR_RETURN(AddrInfoPtr addrs, Resolve(host, port, /*passive=*/false));
  const absl::Time deadline = absl::Now() + options.connect_timeout;
  std::string errors;
  for (const addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", "socket: ", ErrnoString(errno));
      continue;
    }
    SetBufferSizes(fd, options);  // before connect, so the window scale is negotiated for it
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = errno;
      if (err == EINPROGRESS || err == EINTR) {
        pollfd pfd{fd, POLLOUT, 0};
        int r;
        do {
          r = poll(&pfd, 1, PollTimeoutMs(deadline));
        } while (r < 0 && errno == EINTR);
        if (r == 0) {
          err = ETIMEDOUT;
        } else if (r < 0) {
          err = errno;
        } else {
          socklen_t len = sizeof(err);
          if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        }
      }
    }
    if (err == 0) return std::make_unique<TcpTransport>(fd, options);
    sockaddr_storage addr{};
    std::memcpy(&addr, ai->ai_addr, std::min<size_t>(ai->ai_addrlen, sizeof(addr)));
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", SockAddrString(addr), ": ",
                    ErrnoString(err));
    close(fd);
  }
  return absl::UnavailableError(
      absl::StrCat("TCP transport: cannot connect to ", host, ":", port, ": ", errors));
}

TcpTransport::TcpTransport(int fd, const TcpTransportOptions& options)
    : fd_(fd),
      wake_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      options_(options),
      description_(DescribeConnection(fd)) {
  CHECK_GE(fd_, 0);
  CHECK_GE(wake_fd_, 0) << "eventfd: " << ErrnoString(errno);
  CHECK_GT(options_.chunk_bytes, 0);
  const int flags = fcntl(fd_, F_GETFL, 0);
  CHECK_GE(flags, 0) << ErrnoString(errno);
  CHECK_EQ(fcntl(fd_, F_SETFL, flags | O_NONBLOCK), 0) << ErrnoString(errno);
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  SetBufferSizes(fd_, options_);
}

TcpTransport::~TcpTransport() {
  close(fd_);
  close(wake_fd_);
}

absl::Status TcpTransport::status() const {
  absl::MutexLock lock(&mu_);
  return broken_;
}

absl::Status TcpTransport::CheckUsable() const {
  absl::MutexLock lock(&mu_);
  if (broken_.ok()) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("TCP transport ", description_, " is unusable: ", broken_.message()));
}

absl::Status TcpTransport::Break(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) broken_ = status;
  }
  closed_.store(true, std::memory_order_release);
  shutdown(fd_, SHUT_RDWR);
  WakeEventFd(wake_fd_);
  return status;
}

void TcpTransport::Close() {
  Break(absl::UnavailableError(absl::StrCat("TCP transport ", description_, " closed")))
      .IgnoreError();
}

absl::Status TcpTransport::Wait(short events, absl::Time deadline, const char* what) {
  for (;;) {
    if (closed_.load(std::memory_order_acquire)) {
      absl::Status usable = CheckUsable();
      return absl::UnavailableError(absl::StrCat(what, ": ", usable.message()));
    }
    const int timeout = PollTimeoutMs(deadline);
    if (timeout == 0) {
      return Break(absl::DeadlineExceededError(
          absl::StrCat("TCP transport ", description_, ": ", what, ": deadline exceeded after ",
                       events == POLLOUT ? send_done_ : recv_done_, " bytes")));
    }
    pollfd fds[2] = {{fd_, events, 0}, {wake_fd_, POLLIN, 0}};
    const int r = poll(fds, 2, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Break(absl::InternalError(absl::StrCat("TCP transport ", description_, ": ", what,
                                                    ": poll: ", ErrnoString(errno))));
    }
    if (fds[1].revents != 0) continue;  // closed: reported at the top
    // POLLERR / POLLHUP: the next syscall reports what happened.
    if (fds[0].revents != 0) return absl::OkStatus();
  }
}

absl::Status TcpTransport::WriteAll(IoSpan* spans, int n, absl::Time deadline, const char* what) {
  constexpr int kMaxIov = 4;
  CHECK_LE(n, kMaxIov);
  int first = 0;
  while (first < n && spans[first].bytes == 0) ++first;
  while (first < n) {
    iovec iov[kMaxIov];
    int count = 0;
    for (int i = first; i < n; ++i)
      iov[count++] = {spans[i].data, static_cast<size_t>(spans[i].bytes)};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    const ssize_t sent = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        RETURN_IF_ERROR(Wait(POLLOUT, deadline, what));
        continue;
      }
      if (closed_.load(std::memory_order_acquire)) return Wait(POLLOUT, deadline, what);
      return Break(absl::UnavailableError(absl::StrCat(
          "TCP transport ", description_, ": ", what, " failed after ", send_done_,
          " bytes: ", err == EPIPE || err == ECONNRESET ? "the peer closed the connection: " : "",
          ErrnoString(err))));
    }
    send_done_ += sent;
    for (int64_t left = sent; left > 0 || (first < n && spans[first].bytes == 0);) {
      const int64_t take = std::min(left, spans[first].bytes);
      spans[first].data = static_cast<uint8_t*>(spans[first].data) + take;
      spans[first].bytes -= take;
      left -= take;
      if (spans[first].bytes == 0 && ++first == n) break;
    }
  }
  return absl::OkStatus();
}

absl::Status TcpTransport::ReadAll(IoSpan* spans, int n, absl::Time deadline, const char* what) {
  constexpr int kMaxIov = 4;
  CHECK_LE(n, kMaxIov);
  int first = 0;
  while (first < n && spans[first].bytes == 0) ++first;
  while (first < n) {
    iovec iov[kMaxIov];
    int count = 0;
    for (int i = first; i < n; ++i)
      iov[count++] = {spans[i].data, static_cast<size_t>(spans[i].bytes)};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = count;
    const ssize_t got = recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (got == 0) {
      if (closed_.load(std::memory_order_acquire)) return Wait(POLLIN, deadline, what);
      return Break(absl::UnavailableError(absl::StrCat("TCP transport ", description_, ": ", what,
                                                       ": the peer closed the connection after ",
                                                       recv_done_, " bytes")));
    }
    if (got < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        RETURN_IF_ERROR(Wait(POLLIN, deadline, what));
        continue;
      }
      if (closed_.load(std::memory_order_acquire)) return Wait(POLLIN, deadline, what);
      return Break(absl::UnavailableError(absl::StrCat("TCP transport ", description_, ": ", what,
                                                       " failed after ", recv_done_,
                                                       " bytes: ", ErrnoString(err))));
    }
    recv_done_ += got;
    for (int64_t left = got; left > 0 || (first < n && spans[first].bytes == 0);) {
      const int64_t take = std::min(left, spans[first].bytes);
      spans[first].data = static_cast<uint8_t*>(spans[first].data) + take;
      spans[first].bytes -= take;
      left -= take;
      if (spans[first].bytes == 0 && ++first == n) break;
    }
  }
  return absl::OkStatus();
}

absl::Status TcpTransport::Send(const void* src, int64_t bytes, absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  if (bytes < 0 || (bytes > 0 && src == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("TcpTransport::Send of ", bytes, " bytes"));
  }
  const uint64_t seq = send_seq_;
  const std::string what = absl::StrCat("Send of message #", seq, " (", bytes, " bytes)");
  uint8_t header[kHeaderBytes];
  PutLe32(header, kHeaderMagic);
  PutLe64(header + 8, seq);
  PutLe64(header + 16, static_cast<uint64_t>(bytes));
  PutLe32(header + 4, Crc32c(header + 8, 16));
  uint8_t trailer[kTrailerBytes];

  send_done_ = 0;
  const uint8_t* p = static_cast<const uint8_t*>(src);
  int64_t remaining = bytes;
  uint32_t crc = 0;
  bool first = true;
  do {
    const int64_t chunk = std::min(remaining, options_.chunk_bytes);
    if (chunk > 0) crc = Crc32cExtend(crc, p, chunk);
    IoSpan spans[3];
    int n = 0;
    if (first) spans[n++] = {header, kHeaderBytes};
    spans[n++] = {const_cast<uint8_t*>(p), chunk};
    if (chunk == remaining) {
      PutLe32(trailer, crc);
      PutLe32(trailer + 4, kTrailerMagic);
      spans[n++] = {trailer, kTrailerBytes};
    }
    RETURN_IF_ERROR(WriteAll(spans, n, deadline, what.c_str()));
    p += chunk;
    remaining -= chunk;
    first = false;
  } while (remaining > 0);
  ++send_seq_;
  return absl::OkStatus();
}

absl::Status TcpTransport::Recv(void* dst, int64_t bytes, absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  if (bytes < 0 || (bytes > 0 && dst == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat("TcpTransport::Recv of ", bytes, " bytes"));
  }
  const uint64_t seq = recv_seq_;
  const std::string what = absl::StrCat("Recv of message #", seq, " (", bytes, " bytes)");
  auto data_loss = [&](const std::string& why) {
    return Break(
        absl::DataLossError(absl::StrCat("TCP transport ", description_, ": ", what, ": ", why)));
  };

  recv_done_ = 0;
  uint8_t header[kHeaderBytes];
  IoSpan header_span = {header, kHeaderBytes};
  RETURN_IF_ERROR(ReadAll(&header_span, 1, deadline, what.c_str()));
  const uint32_t magic = GetLe32(header);
  if (magic != kHeaderMagic) {
    return data_loss(absl::StrFormat(
        "bad frame magic 0x%08x (expected 0x%08x): the byte stream is corrupted or out of step",
        magic, kHeaderMagic));
  }
  if (GetLe32(header + 4) != Crc32c(header + 8, 16)) {
    return data_loss("frame header checksum mismatch: the header was corrupted in transit");
  }
  const uint64_t got_seq = GetLe64(header + 8);
  if (got_seq != seq) {
    return data_loss(absl::StrCat("frame carries sequence number ", got_seq, ", expected ", seq,
                                  ": a message was lost or reordered"));
  }
  const uint64_t length = GetLe64(header + 16);
  if (length != static_cast<uint64_t>(bytes)) {
    return data_loss(absl::StrCat("the message carries ", length,
                                  " bytes but the receiver asked for ", bytes,
                                  ": Send and Recv sizes are out of step"));
  }

  uint8_t trailer[kTrailerBytes];
  uint8_t* p = static_cast<uint8_t*>(dst);
  int64_t remaining = bytes;
  uint32_t crc = 0;
  do {
    const int64_t chunk = std::min(remaining, options_.chunk_bytes);
    IoSpan spans[2];
    int n = 0;
    spans[n++] = {p, chunk};
    if (chunk == remaining) spans[n++] = {trailer, kTrailerBytes};
    RETURN_IF_ERROR(ReadAll(spans, n, deadline, what.c_str()));
    if (chunk > 0) crc = Crc32cExtend(crc, p, chunk);
    p += chunk;
    remaining -= chunk;
  } while (remaining > 0);
  if (GetLe32(trailer + 4) != kTrailerMagic) {
    return data_loss(absl::StrFormat("bad frame trailer magic 0x%08x (expected 0x%08x)",
                                     GetLe32(trailer + 4), kTrailerMagic));
  }
  const uint32_t sent_crc = GetLe32(trailer);
  if (sent_crc != crc) {
    return data_loss(absl::StrFormat(
        "payload checksum mismatch (crc32c 0x%08x received, 0x%08x sent): the payload was "
        "corrupted in transit",
        crc, sent_crc));
  }
  ++recv_seq_;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// TcpTransportListener

absl::StatusOr<std::unique_ptr<TcpTransportListener>> TcpTransportListener::Listen(
    const std::string& host, int port, const TcpTransportOptions& options) {
  ASSIGN_OR_RETURN(AddrInfoPtr addrs, Resolve(host, port, /*passive=*/true));
  std::string errors;
  for (const addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", "socket: ", ErrnoString(errno));
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    SetBufferSizes(fd, options);  // inherited by accepted sockets, before the handshake
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", ErrnoString(errno));
      close(fd);
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
    const int bound_port = local.ss_family == AF_INET6
                               ? ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port)
                               : ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    const int wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd < 0) {
      const int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("eventfd: ", ErrnoString(err)));
    }
    return std::unique_ptr<TcpTransportListener>(
        new TcpTransportListener(fd, wake_fd, bound_port, options));
  }
  return absl::UnavailableError(
      absl::StrCat("TCP transport: cannot listen on ", host, ":", port, ": ", errors));
}

TcpTransportListener::TcpTransportListener(int fd, int wake_fd, int port,
                                           const TcpTransportOptions& options)
    : fd_(fd), wake_fd_(wake_fd), port_(port), options_(options) {}

TcpTransportListener::~TcpTransportListener() {
  close(fd_);
  close(wake_fd_);
}

void TcpTransportListener::Close() {
  closed_.store(true, std::memory_order_release);
  WakeEventFd(wake_fd_);
}

absl::StatusOr<std::unique_ptr<TcpTransport>> TcpTransportListener::Accept(absl::Time deadline) {
  for (;;) {
    if (closed_.load(std::memory_order_acquire)) {
      return absl::UnavailableError(absl::StrCat("TCP listener on port ", port_, " closed"));
    }
    const int fd = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return std::make_unique<TcpTransport>(fd, options_);
    const int err = errno;
    if (err == EINTR || err == ECONNABORTED) continue;
    if (err != EAGAIN && err != EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat("TCP listener on port ", port_, ": accept: ", ErrnoString(err)));
    }
    const int timeout = PollTimeoutMs(deadline);
    if (timeout == 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("TCP listener on port ", port_, ": no connection before the deadline"));
    }
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, timeout) < 0 && errno != EINTR) {
      return absl::InternalError(
          absl::StrCat("TCP listener on port ", port_, ": poll: ", ErrnoString(errno)));
    }
  }
}

}  // namespace tandem
