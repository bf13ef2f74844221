#include "kvtransfer/cuda/cuda_ipc_transport.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/backoff.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tandem {
namespace {

absl::Status CudaError(cudaError_t err, absl::string_view what) {
  return absl::InternalError(
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

#define IPC_CUDA_OK(expr)                                                 \
  do {                                                                    \
    const cudaError_t ipc_err_ = (expr);                                  \
    if (ipc_err_ != cudaSuccess) return Fail(CudaError(ipc_err_, #expr)); \
  } while (0)

// Side channel frame types.
enum FrameType : uint32_t {
  kHello = 1,     // HelloWire + num_slots event handles
  kHelloAck = 2,  // int32 status code + message: whether the peer opened our handles
  kReady = 3,     // ReadyWire
  kConsumed = 4,  // int32 slot
  kControl = 5,   // caller bytes
};

constexpr uint32_t kMagic = 0x4b564950;  // "KVIP"
constexpr uint32_t kVersion = 1;
constexpr int kMaxSlots = 64;

struct HelloWire {
  uint32_t magic;
  uint32_t version;
  int32_t pid;
  int32_t num_slots;
  int64_t slot_bytes;
  char device_uuid[16];
  cudaIpcMemHandle_t ring;  // valid when num_slots > 0
};

struct ReadyWire {
  int64_t seq;
  int64_t total;
  int64_t offset;
  int64_t bytes;
  int32_t slot;
  int32_t pad;
};

template <typename T>
std::string_view AsBytes(const T& v) {
  return std::string_view(reinterpret_cast<const char*>(&v), sizeof(T));
}

}  // namespace

absl::StatusOr<std::unique_ptr<CudaIpcTransport::Listener>> CudaIpcTransport::Listener::Listen(
    std::string address) {
  ASSIGN_OR_RETURN(std::unique_ptr<FramedListener> l, FramedListener::Listen(std::move(address)));
  return std::unique_ptr<Listener>(new Listener(std::move(l)));
}

absl::StatusOr<std::unique_ptr<CudaIpcTransport>> CudaIpcTransport::Listener::Accept(
    const CudaIpcTransportOptions& options, absl::Time deadline) {
  ASSIGN_OR_RETURN(std::unique_ptr<FramedSocket> socket, listener_->Accept(deadline));
  std::unique_ptr<CudaIpcTransport> t(new CudaIpcTransport(std::move(socket), options));
  RETURN_IF_ERROR(t->Handshake(deadline));
  return t;
}

absl::StatusOr<std::unique_ptr<CudaIpcTransport>> CudaIpcTransport::Connect(
    const std::string& address, const CudaIpcTransportOptions& options, absl::Time deadline) {
  ASSIGN_OR_RETURN(std::unique_ptr<FramedSocket> socket, FramedSocket::Connect(address, deadline));
  std::unique_ptr<CudaIpcTransport> t(new CudaIpcTransport(std::move(socket), options));
  RETURN_IF_ERROR(t->Handshake(deadline));
  return t;
}

CudaIpcTransport::CudaIpcTransport(std::unique_ptr<FramedSocket> socket,
                                   const CudaIpcTransportOptions& options)
    : socket_(std::move(socket)), options_(options) {}

absl::Status CudaIpcTransport::Fail(absl::Status why) {
  if (broken_.ok()) broken_ = why;
  return why;
}

absl::Status CudaIpcTransport::CheckUsable() const {
  if (closed_.load()) return absl::UnavailableError("CUDA IPC transport closed");
  if (!broken_.ok()) {
    return absl::UnavailableError(
        absl::StrCat("CUDA IPC transport is broken: ", broken_.ToString()));
  }
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::Handshake(absl::Time deadline) {
  const int n = options_.num_slots;
  if (n < 0 || n > kMaxSlots || options_.slot_bytes <= 0 || options_.slot_bytes % 256 != 0) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("CudaIpcTransport: num_slots ", n, " (0-", kMaxSlots, "), slot_bytes ",
                     options_.slot_bytes, " (a positive multiple of 256)")));
  }
  IPC_CUDA_OK(cudaSetDevice(options_.device));
  IPC_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  IPC_CUDA_OK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));

  HelloWire hello;
  std::memset(&hello, 0, sizeof(hello));
  hello.magic = kMagic;
  hello.version = kVersion;
  hello.pid = static_cast<int32_t>(::getpid());
  hello.num_slots = n;
  hello.slot_bytes = options_.slot_bytes;
  cudaDeviceProp prop;
  IPC_CUDA_OK(cudaGetDeviceProperties(&prop, options_.device));
  std::memcpy(hello.device_uuid, &prop.uuid, sizeof(hello.device_uuid));
  std::string hello_bytes;
  if (n > 0) {
    IPC_CUDA_OK(cudaMalloc(&ring_, static_cast<size_t>(n) * options_.slot_bytes));
    IPC_CUDA_OK(cudaIpcGetMemHandle(&hello.ring, ring_));
    slot_events_.assign(n, nullptr);
    hello_bytes.append(AsBytes(hello));
    for (int i = 0; i < n; ++i) {
      IPC_CUDA_OK(cudaEventCreateWithFlags(&slot_events_[i],
                                           cudaEventInterprocess | cudaEventDisableTiming));
      cudaIpcEventHandle_t h;
      IPC_CUDA_OK(cudaIpcGetEventHandle(&h, slot_events_[i]));
      hello_bytes.append(AsBytes(h));
      free_slots_.push_back(i);
    }
  } else {
    hello_bytes.append(AsBytes(hello));
  }
  absl::Status s = socket_->Send(kHello, hello_bytes, deadline);
  if (!s.ok()) return Fail(s);

  uint32_t type = 0;
  std::string payload;
  s = socket_->Recv(&type, &payload, deadline);
  if (!s.ok()) return Fail(s);
  HelloWire peer;
  if (type != kHello || payload.size() < sizeof(HelloWire)) {
    return Fail(absl::DataLossError(absl::StrCat("CUDA IPC handshake: frame type ", type, " of ",
                                                 payload.size(), " bytes instead of a hello")));
  }
  std::memcpy(&peer, payload.data(), sizeof(peer));
  if (peer.magic != kMagic || peer.version != kVersion || peer.num_slots < 0 ||
      peer.num_slots > kMaxSlots ||
      payload.size() != sizeof(HelloWire) + peer.num_slots * sizeof(cudaIpcEventHandle_t)) {
    return Fail(absl::DataLossError("CUDA IPC handshake: malformed hello from the peer"));
  }
  // Open the peer's handles; tell the peer how that went whatever the outcome.
  absl::Status opened = absl::OkStatus();
  if (peer.pid == hello.pid) {
    opened = absl::FailedPreconditionError(
        "CUDA IPC handles cannot be opened by the process that made them: peer is this process");
  } else if (peer.num_slots > 0) {
    void* ptr = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&ptr, peer.ring, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      opened = CudaError(e, "cudaIpcOpenMemHandle");
    } else {
      peer_ring_ = static_cast<char*>(ptr);
      peer_num_slots_ = peer.num_slots;
      peer_slot_bytes_ = peer.slot_bytes;
      peer_events_.assign(peer.num_slots, nullptr);
      for (int i = 0; i < peer.num_slots && opened.ok(); ++i) {
        cudaIpcEventHandle_t h;
        std::memcpy(&h, payload.data() + sizeof(HelloWire) + i * sizeof(h), sizeof(h));
        e = cudaIpcOpenEventHandle(&peer_events_[i], h);
        if (e != cudaSuccess) opened = CudaError(e, "cudaIpcOpenEventHandle");
      }
    }
  }
  std::string ack(sizeof(int32_t), '\0');
  const int32_t code = static_cast<int32_t>(opened.code());
  std::memcpy(ack.data(), &code, sizeof(code));
  ack.append(std::string(opened.message()));
  s = socket_->Send(kHelloAck, ack, deadline);
  if (!opened.ok()) return Fail(opened);
  if (!s.ok()) return Fail(s);
  s = socket_->Recv(&type, &payload, deadline);
  if (!s.ok()) return Fail(s);
  if (type != kHelloAck || payload.size() < sizeof(int32_t)) {
    return Fail(absl::DataLossError("CUDA IPC handshake: no acknowledgement from the peer"));
  }
  int32_t peer_code = 0;
  std::memcpy(&peer_code, payload.data(), sizeof(peer_code));
  if (peer_code != 0) {
    return Fail(absl::Status(static_cast<absl::StatusCode>(peer_code),
                             absl::StrCat("the peer could not open this end's CUDA IPC handles: ",
                                          payload.substr(sizeof(int32_t)))));
  }
  return absl::OkStatus();
}

CudaIpcTransport::~CudaIpcTransport() {
  if (CheckUsable().ok() && ring_ != nullptr &&
      static_cast<int>(free_slots_.size()) < options_.num_slots) {
    // The peer may still be reading this end's slots: they must outlive its copies.
    const absl::Status flushed = Flush(absl::Now() + absl::Seconds(1));
    if (!flushed.ok()) LOG(WARNING) << "CudaIpcTransport: " << flushed;
  }
  socket_.reset();  // the peer reads end-of-stream
  if (cudaSetDevice(options_.device) != cudaSuccess) return;
  // Bounded: a copy waiting on the event of a peer that died may never run.
  const absl::Time limit = absl::Now() + absl::Seconds(2);
  while (stream_ != nullptr && cudaStreamQuery(stream_) == cudaErrorNotReady &&
         absl::Now() < limit) {
    absl::SleepFor(absl::Microseconds(100));
  }
  (void)cudaGetLastError();  // the queries' "not ready" (see WaitEventDone)
  for (cudaEvent_t e : peer_events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (peer_ring_ != nullptr) cudaIpcCloseMemHandle(peer_ring_);
  for (cudaEvent_t e : slot_events_) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (ring_ != nullptr) cudaFree(ring_);
  if (copied_ != nullptr) cudaEventDestroy(copied_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaIpcTransport::Close() {
  closed_.store(true);
  socket_->Shutdown();
}

absl::Status CudaIpcTransport::PumpOne(absl::Time deadline) {
  uint32_t type = 0;
  std::string payload;
  const absl::Status s = socket_->Recv(&type, &payload, deadline);
  if (!s.ok()) {
    if (closed_.load()) return Fail(absl::UnavailableError("CUDA IPC transport closed"));
    return Fail(s);
  }
  switch (type) {
    case kReady: {
      ReadyWire w;
      if (payload.size() != sizeof(w)) break;
      std::memcpy(&w, payload.data(), sizeof(w));
      if (w.bytes > 0 && (w.slot < 0 || w.slot >= peer_num_slots_ || w.bytes > peer_slot_bytes_)) {
        return Fail(absl::DataLossError(
            absl::StrCat("CUDA IPC: READY for slot ", w.slot, " with ", w.bytes, " bytes")));
      }
      ready_.push_back(Ready{w.seq, w.total, w.offset, w.bytes, w.slot});
      return absl::OkStatus();
    }
    case kConsumed: {
      int32_t slot = -1;
      if (payload.size() != sizeof(slot)) break;
      std::memcpy(&slot, payload.data(), sizeof(slot));
      if (slot < 0 || slot >= options_.num_slots ||
          static_cast<int>(free_slots_.size()) >= options_.num_slots) {
        return Fail(absl::DataLossError(absl::StrCat("CUDA IPC: CONSUMED for slot ", slot)));
      }
      free_slots_.push_back(slot);
      return absl::OkStatus();
    }
    case kControl:
      control_.push_back(std::move(payload));
      return absl::OkStatus();
    default:
      break;
  }
  return Fail(absl::DataLossError(
      absl::StrCat("CUDA IPC: unexpected frame type ", type, " of ", payload.size(), " bytes")));
}

absl::Status CudaIpcTransport::WaitEventDone(cudaEvent_t event, absl::Time deadline,
                                             absl::string_view what) {
  Backoff backoff;
  while (true) {
    const cudaError_t q = cudaEventQuery(event);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) return Fail(CudaError(q, absl::StrCat(what, ": cudaEventQuery")));
    // NOTE: a query's "not ready" must not linger as the thread's last error: the runner's
    // next launch on this thread checks cudaGetLastError (as PyTorch clears it, #61554).
    (void)cudaGetLastError();
    if (closed_.load()) return Fail(absl::UnavailableError("CUDA IPC transport closed"));
    if (absl::Now() > deadline) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(what, ": deadline exceeded")));
    }
    backoff.Wait();
  }
}

absl::Status CudaIpcTransport::Send(const void* src, int64_t bytes, absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  if (bytes < 0 || (bytes > 0 && src == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Send of ", bytes, " bytes from ", src == nullptr ? "null" : "a buffer"));
  }
  if (ring_ == nullptr) {
    return absl::FailedPreconditionError("CudaIpcTransport: this end has no slots (num_slots 0)");
  }
  IPC_CUDA_OK(cudaSetDevice(options_.device));
  const int64_t seq = send_seq_++;
  const int64_t slot_bytes = options_.slot_bytes;
  cudaEvent_t last = nullptr;
  int64_t off = 0;
  do {
    while (free_slots_.empty()) RETURN_IF_ERROR(PumpOne(deadline));
    ReadyWire w;
    std::memset(&w, 0, sizeof(w));
    w.seq = seq;
    w.total = bytes;
    w.offset = off;
    w.bytes = std::min(slot_bytes, bytes - off);
    w.slot = -1;
    if (w.bytes > 0) {
      w.slot = free_slots_.front();
      free_slots_.pop_front();
      char* slot = static_cast<char*>(ring_) + w.slot * slot_bytes;
      IPC_CUDA_OK(cudaMemcpyAsync(slot, static_cast<const char*>(src) + off,
                                  static_cast<size_t>(w.bytes), cudaMemcpyDefault, stream_));
      last = slot_events_[w.slot];
      // Recorded before READY is sent: the peer's cudaStreamWaitEvent sees this record.
      IPC_CUDA_OK(cudaEventRecord(last, stream_));
    }
    const absl::Status sent = socket_->Send(kReady, AsBytes(w), deadline);
    if (!sent.ok()) return Fail(sent);
    off += w.bytes;
  } while (off < bytes);
  if (last != nullptr) RETURN_IF_ERROR(WaitEventDone(last, deadline, "CUDA IPC send copy"));
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::Recv(void* dst, int64_t bytes, absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  if (bytes < 0 || (bytes > 0 && dst == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Recv of ", bytes, " bytes into ", dst == nullptr ? "null" : "a buffer"));
  }
  IPC_CUDA_OK(cudaSetDevice(options_.device));
  const int64_t seq = recv_seq_;
  int64_t off = 0;
  do {
    while (ready_.empty()) RETURN_IF_ERROR(PumpOne(deadline));
    const Ready r = ready_.front();
    ready_.pop_front();
    if (r.seq != seq || r.total != bytes || r.offset != off || (bytes > 0 && r.bytes <= 0) ||
        r.bytes > bytes - off) {
      return Fail(absl::DataLossError(absl::StrCat("CUDA IPC: message ", r.seq, " of ", r.total,
                                                   " bytes (piece at ", r.offset, ", ", r.bytes,
                                                   " bytes) where message ", seq, " of ", bytes,
                                                   " bytes at ", off, " was expected")));
    }
    if (r.bytes > 0) {
      IPC_CUDA_OK(cudaStreamWaitEvent(stream_, peer_events_[r.slot], 0));
      IPC_CUDA_OK(cudaMemcpyAsync(static_cast<char*>(dst) + off,
                                  peer_ring_ + r.slot * peer_slot_bytes_,
                                  static_cast<size_t>(r.bytes), cudaMemcpyDefault, stream_));
      IPC_CUDA_OK(cudaEventRecord(copied_, stream_));
      RETURN_IF_ERROR(WaitEventDone(copied_, deadline, "CUDA IPC receive copy"));
      const int32_t slot = r.slot;
      const absl::Status sent = socket_->Send(kConsumed, AsBytes(slot), deadline);
      if (!sent.ok()) return Fail(sent);
    }
    off += r.bytes;
  } while (off < bytes);
  ++recv_seq_;
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::WaitEvent(cudaEvent_t event) {
  RETURN_IF_ERROR(CheckUsable());
  IPC_CUDA_OK(cudaSetDevice(options_.device));
  IPC_CUDA_OK(cudaStreamWaitEvent(stream_, event, 0));
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::Flush(absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  while (static_cast<int>(free_slots_.size()) < options_.num_slots) {
    RETURN_IF_ERROR(PumpOne(deadline));
  }
  return absl::OkStatus();
}

absl::Status CudaIpcTransport::SendControl(std::string_view bytes, absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  if (bytes.size() > FramedSocket::kMaxPayload) {
    return absl::InvalidArgumentError(absl::StrCat("control message of ", bytes.size(), " bytes"));
  }
  const absl::Status sent = socket_->Send(kControl, bytes, deadline);
  if (!sent.ok()) return Fail(sent);
  return absl::OkStatus();
}

absl::StatusOr<std::string> CudaIpcTransport::RecvControl(absl::Time deadline) {
  RETURN_IF_ERROR(CheckUsable());
  while (control_.empty()) RETURN_IF_ERROR(PumpOne(deadline));
  std::string msg = std::move(control_.front());
  control_.pop_front();
  return msg;
}

}  // namespace tandem
