// TcpTransport: the Transport over one TCP connection, for host memory. One connection per
// (prefill, decode) pair; the decode side listens (TcpTransportListener), the prefill side
// connects.
//
// Wire format, per Send (integers little-endian):
//   header  (24 B): magic "TKV1" u32, crc32c of the next 16 header bytes u32,
//                   sequence number u64 (0, 1, 2, ... per direction), payload length u64
//   payload (length B)
//   trailer  (8 B): crc32c of the payload u32, magic "TKVE" u32
// The payload's checksum trails it so that both ends checksum each chunk while it is hot in
// cache, in one pass, instead of reading a large layer twice before sending it.
//
// Recv checks the magic, the header checksum, the sequence number (nothing lost, nothing
// reordered), that the length is the one asked for, and the payload checksum: any mismatch is
// DATA_LOSS naming the message, and the transport is then broken. A peer that closes or
// resets the connection is UNAVAILABLE at once; a stalled one DEADLINE_EXCEEDED at the
// deadline. Every failure breaks the transport: later calls fail with UNAVAILABLE.
//
// Thread contract: one thread may Send while another Recvs (the connection is full
// duplex), but two Sends (or two Recvs) must not overlap. Close() is safe from any thread,
// at any time before destruction.
#ifndef TANDEM_KVTRANSFER_TCP_TRANSPORT_H_
#define TANDEM_KVTRANSFER_TCP_TRANSPORT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvtransfer/transport.h"

namespace tandem {

struct TcpTransportOptions {
  absl::Duration connect_timeout = absl::Seconds(5);
  // SO_SNDBUF / SO_RCVBUF. 0 leaves them to the kernel's autotuning, which grows them up to
  // net.ipv4.tcp_rmem/tcp_wmem's maximum (32 / 4 MiB here) — more than an unprivileged
  // setsockopt may ask (net.core.rmem_max) — and which a fixed size would switch off.
  int socket_buffer_bytes = 0;
  // Payload bytes per syscall and per checksum step. On loopback 1 MiB moved ~3.6 GB/s
  // where 256 KiB moved ~2.6 and 64 KiB ~1.2 (syscall overhead dominates below).
  int64_t chunk_bytes = 1 << 20;
};

class TcpTransport final : public Transport {
 public:
  // Connects to `host`:`port` (a name or a numeric IPv4/IPv6 address). UNAVAILABLE when
  // nobody listens there or the connection does not complete within connect_timeout.
  static absl::StatusOr<std::unique_ptr<TcpTransport>> Connect(
      const std::string& host, int port, const TcpTransportOptions& options = {});

  // Takes ownership of `fd`, a connected stream socket.
  TcpTransport(int fd, const TcpTransportOptions& options);
  ~TcpTransport() override;
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  TransportKind kind() const override { return TransportKind::kTcp; }
  MemoryKind memory() const override { return MemoryKind::kHost; }

  absl::Status Send(const void* src, int64_t bytes, absl::Time deadline) override;
  absl::Status Recv(void* dst, int64_t bytes, absl::Time deadline) override;
  // Also shuts the connection down, so the peer's pending calls fail at once too.
  void Close() override;

  // The failure that broke the transport (OK while it works).
  absl::Status status() const;

  // "127.0.0.1:41234 -> 127.0.0.1:5000", for logs.
  const std::string& description() const { return description_; }

 private:
  struct IoSpan {
    void* data;
    int64_t bytes;
  };

  // Moves every byte of `spans` (scatter/gather), waiting in poll() until `deadline`.
  absl::Status WriteAll(IoSpan* spans, int n, absl::Time deadline, const char* what);
  absl::Status ReadAll(IoSpan* spans, int n, absl::Time deadline, const char* what);
  // Waits until the socket is ready for `events`, or fails: closed, deadline, error.
  absl::Status Wait(short events, absl::Time deadline, const char* what);
  // Records the first failure, shuts the connection down and wakes every waiter; returns
  // `status` for convenience.
  absl::Status Break(absl::Status status);
  absl::Status CheckUsable() const;

  const int fd_;
  const int wake_fd_;  // eventfd, readable once the transport is closed or broken
  const TcpTransportOptions options_;
  const std::string description_;

  mutable absl::Mutex mu_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> closed_{false};  // Close() or Break() happened

  uint64_t send_seq_ = 0;  // sending thread only
  uint64_t recv_seq_ = 0;  // receiving thread only
  // Bytes of the current Send/Recv already moved, for error messages.
  int64_t send_done_ = 0;
  int64_t recv_done_ = 0;
};

class TcpTransportListener {
 public:
  // Listens on `host`:`port`; port 0 picks a free one (see port()). Use "0.0.0.0" or "::" for
  // every interface, "127.0.0.1" for loopback only.
  static absl::StatusOr<std::unique_ptr<TcpTransportListener>> Listen(
      const std::string& host, int port, const TcpTransportOptions& options = {});

  ~TcpTransportListener();
  TcpTransportListener(const TcpTransportListener&) = delete;
  TcpTransportListener& operator=(const TcpTransportListener&) = delete;

  int port() const { return port_; }

  // The next incoming connection. DEADLINE_EXCEEDED when none arrives by `deadline`,
  // UNAVAILABLE after Close(). One Accept at a time.
  absl::StatusOr<std::unique_ptr<TcpTransport>> Accept(absl::Time deadline);

  // Unblocks a pending Accept and fails later ones. Thread-safe.
  void Close();

 private:
  TcpTransportListener(int fd, int wake_fd, int port, const TcpTransportOptions& options);

  const int fd_;
  const int wake_fd_;
  const int port_;
  const TcpTransportOptions options_;
  std::atomic<bool> closed_{false};
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_TCP_TRANSPORT_H_
