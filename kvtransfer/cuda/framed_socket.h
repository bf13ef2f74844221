// A minimal framed message pipe over a Unix domain socket: the host side channel of
// CudaIpcTransport (handles, "slot ready" / "slot consumed", small control messages). Both
// processes sit on one machine, so frames are in host byte order.
//
// Addresses are socket paths; a leading '@' names Linux's abstract namespace (no file).
// Every call has a deadline; Shutdown() unblocks the other calls from any thread.
#ifndef TANDEM_KVTRANSFER_CUDA_FRAMED_SOCKET_H_
#define TANDEM_KVTRANSFER_CUDA_FRAMED_SOCKET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tandem {

// One connected end. Send and Recv may run on different threads; each on one at a time.
class FramedSocket {
 public:
  static constexpr uint32_t kMaxPayload = 1u << 20;

  // Connects to a listener, retrying while it does not exist yet (the peer may still be
  // starting) until `deadline`: DEADLINE_EXCEEDED then.
  static absl::StatusOr<std::unique_ptr<FramedSocket>> Connect(const std::string& address,
                                                               absl::Time deadline);
  explicit FramedSocket(int fd);  // takes a connected stream socket
  ~FramedSocket();
  FramedSocket(const FramedSocket&) = delete;
  FramedSocket& operator=(const FramedSocket&) = delete;

  // One frame: a 32-bit type and up to kMaxPayload bytes. UNAVAILABLE when the peer is gone
  // (or after Shutdown), DEADLINE_EXCEEDED past `deadline` (the stream is then out of step:
  // a frame may be half written or half read).
  absl::Status Send(uint32_t type, std::string_view payload, absl::Time deadline);
  absl::Status Recv(uint32_t* type, std::string* payload, absl::Time deadline);

  // Shuts the connection down both ways: pending and later calls fail with UNAVAILABLE, the
  // peer reads end-of-stream. Thread-safe.
  void Shutdown();

 private:
  absl::Status WriteAll(const char* data, size_t n, absl::Time deadline);
  absl::Status ReadAll(char* data, size_t n, absl::Time deadline);

  int fd_ = -1;
};

class FramedListener {
 public:
  // Binds and listens. An empty address picks a unique abstract one.
  static absl::StatusOr<std::unique_ptr<FramedListener>> Listen(std::string address);
  ~FramedListener();  // closes; removes the socket file of a path address
  FramedListener(const FramedListener&) = delete;
  FramedListener& operator=(const FramedListener&) = delete;

  const std::string& address() const { return address_; }
  absl::StatusOr<std::unique_ptr<FramedSocket>> Accept(absl::Time deadline);

 private:
  FramedListener(int fd, std::string address) : fd_(fd), address_(std::move(address)) {}

  int fd_ = -1;
  std::string address_;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_CUDA_FRAMED_SOCKET_H_
