#include "kvtransfer/cuda/framed_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

namespace tandem {
namespace {

absl::Status Errno(absl::string_view what, int err) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Fills `addr` for a path or an '@'-prefixed abstract name; returns the address length.
absl::StatusOr<socklen_t> MakeAddress(const std::string& address, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (address.empty() || address.size() >= sizeof(addr->sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket address '", address,
                                                   "' is empty or longer than ",
                                                   sizeof(addr->sun_path) - 1, " bytes"));
  }
  std::memcpy(addr->sun_path, address.data(), address.size());
  if (address[0] == '@') {
    addr->sun_path[0] = '\0';  // abstract: the name is the bytes after the NUL
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
  }
  return static_cast<socklen_t>(sizeof(sockaddr_un));
}

// Milliseconds for poll(): -1 for no deadline, 0 when it has passed.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<double>(std::ceil(absl::ToDoubleMilliseconds(left)), 1 << 30));
}

// Waits until `fd` is ready for `events`. DEADLINE_EXCEEDED past the deadline.
absl::Status WaitFd(int fd, short events, absl::Time deadline, absl::string_view what) {
  while (true) {
    const int timeout = PollTimeoutMs(deadline);
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, timeout);
    if (r > 0) return absl::OkStatus();  // ready, or error/hang-up: the next call says which
    if (r == 0) return absl::DeadlineExceededError(absl::StrCat(what, ": deadline exceeded"));
    if (errno != EINTR) return Errno(absl::StrCat(what, ": poll"), errno);
  }
}

absl::Status SetNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return absl::InternalError(absl::StrCat("fcntl(O_NONBLOCK): ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

struct FrameHeader {
  uint32_t type;
  uint32_t length;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FramedSocket>> FramedSocket::Connect(const std::string& address,
                                                                    absl::Time deadline) {
  sockaddr_un addr;
  ASSIGN_OR_RETURN(const socklen_t len, MakeAddress(address, &addr));
  while (true) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket", errno);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0) {
      auto sock = std::make_unique<FramedSocket>(fd);
      RETURN_IF_ERROR(SetNonBlocking(fd));
      return sock;
    }
    const int err = errno;
    ::close(fd);
    // Not listening yet (no file, no abstract name, or a full backlog): retry.
    if (err != ENOENT && err != ECONNREFUSED && err != EAGAIN && err != EINTR) {
      return Errno(absl::StrCat("connect ", address), err);
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "connect ", address, ": no listener before the deadline (", std::strerror(err), ")"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

FramedSocket::FramedSocket(int fd) : fd_(fd) {}

FramedSocket::~FramedSocket() {
  if (fd_ >= 0) ::close(fd_);
}

void FramedSocket::Shutdown() { ::shutdown(fd_, SHUT_RDWR); }

absl::Status FramedSocket::WriteAll(const char* data, size_t n, absl::Time deadline) {
  while (n > 0) {
    const ssize_t w = ::send(fd_, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      RETURN_IF_ERROR(WaitFd(fd_, POLLOUT, deadline, "side channel send"));
      continue;
    }
    return Errno("side channel send (peer gone?)", w < 0 ? errno : EPIPE);
  }
  return absl::OkStatus();
}

absl::Status FramedSocket::ReadAll(char* data, size_t n, absl::Time deadline) {
  while (n > 0) {
    const ssize_t r = ::recv(fd_, data, n, 0);
    if (r > 0) {
      data += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return absl::UnavailableError("side channel: the peer closed the connection");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      RETURN_IF_ERROR(WaitFd(fd_, POLLIN, deadline, "side channel receive"));
      continue;
    }
    return Errno("side channel receive", errno);
  }
  return absl::OkStatus();
}

absl::Status FramedSocket::Send(uint32_t type, std::string_view payload, absl::Time deadline) {
  if (payload.size() > kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrCat("frame of ", payload.size(), " bytes"));
  }
  std::string frame(sizeof(FrameHeader) + payload.size(), '\0');
  const FrameHeader h{type, static_cast<uint32_t>(payload.size())};
  std::memcpy(frame.data(), &h, sizeof(h));
  if (!payload.empty()) std::memcpy(frame.data() + sizeof(h), payload.data(), payload.size());
  return WriteAll(frame.data(), frame.size(), deadline);
}

absl::Status FramedSocket::Recv(uint32_t* type, std::string* payload, absl::Time deadline) {
  FrameHeader h;
  RETURN_IF_ERROR(ReadAll(reinterpret_cast<char*>(&h), sizeof(h), deadline));
  if (h.length > kMaxPayload) {
    return absl::DataLossError(absl::StrCat("side channel: frame of ", h.length, " bytes"));
  }
  payload->resize(h.length);
  if (h.length > 0) RETURN_IF_ERROR(ReadAll(payload->data(), h.length, deadline));
  *type = h.type;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FramedListener>> FramedListener::Listen(std::string address) {
  if (address.empty()) {
    static std::atomic<int> counter{0};
    address = absl::StrCat("@tandem-", ::getpid(), "-", counter.fetch_add(1), "-",
                           std::random_device{}());
  }
  sockaddr_un addr;
  ASSIGN_OR_RETURN(const socklen_t len, MakeAddress(address, &addr));
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket", errno);
  if (address[0] != '@') ::unlink(address.c_str());  // a stale file from an earlier run
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0 || ::listen(fd, 8) != 0) {
    const int err = errno;
    ::close(fd);
    return Errno(absl::StrCat("bind/listen ", address), err);
  }
  const absl::Status nonblocking = SetNonBlocking(fd);
  if (!nonblocking.ok()) {
    ::close(fd);
    return nonblocking;
  }
  return std::unique_ptr<FramedListener>(new FramedListener(fd, std::move(address)));
}

FramedListener::~FramedListener() {
  ::close(fd_);
  if (!address_.empty() && address_[0] != '@') ::unlink(address_.c_str());
}

absl::StatusOr<std::unique_ptr<FramedSocket>> FramedListener::Accept(absl::Time deadline) {
  while (true) {
    const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      auto sock = std::make_unique<FramedSocket>(fd);
      RETURN_IF_ERROR(SetNonBlocking(fd));
      return sock;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return Errno("accept", errno);
    RETURN_IF_ERROR(WaitFd(fd_, POLLIN, deadline, absl::StrCat("accept on ", address_)));
  }
}

}  // namespace tandem
