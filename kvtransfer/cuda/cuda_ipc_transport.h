// The KV channel's data path between two processes on one node (prefill and decode worker on
// the same GPU, or on two GPUs with peer access) through CUDA IPC: no NCCL, which cannot
// put two ranks on one GPU.
//
// Each end owns a staging ring on the device (num_slots x slot_bytes, one cudaMalloc) and one
// interprocess event per slot, and exports their handles (cudaIpcGetMemHandle,
// cudaIpcGetEventHandle) to the peer at connection. A host side channel (FramedSocket, a Unix
// domain socket) carries the handles and small messages:
//
//   Send:  wait for a free slot; copy src -> own slot on the transport's stream; record the
//          slot's event; send READY{message, total bytes, offset, slot, n}. Returns once
//          every piece of src is in a slot (src reusable); the peer drains the slots later.
//   Recv:  take READY; stream waits on the peer's slot event; copy peer slot -> dst; wait;
//          send CONSUMED{slot}. The message's length and sequence number are checked.
//
// Messages larger than a slot travel in pieces through the ring (pieces overlap: the sender
// fills slot k+1 while the receiver drains slot k). Same machine, same memory: no checksum.
// A vanished peer reads as end-of-stream on the side channel: UNAVAILABLE.
#ifndef TANDEM_KVTRANSFER_CUDA_CUDA_IPC_TRANSPORT_H_
#define TANDEM_KVTRANSFER_CUDA_CUDA_IPC_TRANSPORT_H_

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "kvtransfer/cuda/framed_socket.h"
#include "kvtransfer/transport.h"

namespace tandem {

struct CudaIpcTransportOptions {
  int device = 0;
  // This end's staging ring, for its Sends: num_slots in [0, 64] (0: this end only
  // receives), slot_bytes a positive multiple of 256.
  int num_slots = 4;
  int64_t slot_bytes = int64_t{16} << 20;
};

// Send, Recv, Flush and the control calls: one thread at a time; Close() from any thread.
class CudaIpcTransport : public Transport {
 public:
  // The two ways to open a channel: one process listens (the decode worker), the other
  // connects; after that both ends are alike. The deadline covers the handle exchange.
  class Listener {
   public:
    // An empty address picks a unique abstract one (see FramedListener).
    static absl::StatusOr<std::unique_ptr<Listener>> Listen(std::string address = "");
    const std::string& address() const { return listener_->address(); }
    absl::StatusOr<std::unique_ptr<CudaIpcTransport>> Accept(const CudaIpcTransportOptions& options,
                                                             absl::Time deadline);

   private:
    explicit Listener(std::unique_ptr<FramedListener> l) : listener_(std::move(l)) {}
    std::unique_ptr<FramedListener> listener_;
  };
  static absl::StatusOr<std::unique_ptr<CudaIpcTransport>> Connect(
      const std::string& address, const CudaIpcTransportOptions& options, absl::Time deadline);

  // Waits briefly (1 s) for the peer to drain this end's slots, then frees everything.
  ~CudaIpcTransport() override;
  CudaIpcTransport(const CudaIpcTransport&) = delete;
  CudaIpcTransport& operator=(const CudaIpcTransport&) = delete;

  TransportKind kind() const override { return TransportKind::kCudaIpc; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }

  // Device buffers (or pinned host buffers) of any size. Errors break the transport:
  // DEADLINE_EXCEEDED, UNAVAILABLE (peer gone, Close), DATA_LOSS (Recv: the next message has
  // another length or sequence number), INTERNAL (CUDA), FAILED_PRECONDITION (Send on a
  // receive-only end).
  absl::Status Send(const void* src, int64_t bytes, absl::Time deadline) override;
  absl::Status Recv(void* dst, int64_t bytes, absl::Time deadline) override;

  // Later Sends copy into the slots only after the work `event` captured (recorded before
  // this call): e.g. the prefill's per-layer event.
  absl::Status WaitEvent(cudaEvent_t event);

  // Waits until the peer has drained every slot this end filled (before freeing src-side
  // state or exiting).
  absl::Status Flush(absl::Time deadline);

  // Small host messages on the side channel, ordered with the data: e.g. the first token
  // after the last layer. At most FramedSocket::kMaxPayload bytes.
  absl::Status SendControl(std::string_view bytes, absl::Time deadline);
  absl::StatusOr<std::string> RecvControl(absl::Time deadline);

  // Unblocks and fails pending and later calls (UNAVAILABLE); the peer sees end-of-stream.
  // Thread-safe.
  void Close() override;

  int device() const { return options_.device; }
  cudaStream_t stream() const { return stream_; }

 private:
  struct Ready {
    int64_t seq = 0;
    int64_t total = 0;
    int64_t offset = 0;
    int64_t bytes = 0;
    int32_t slot = -1;
  };

  CudaIpcTransport(std::unique_ptr<FramedSocket> socket, const CudaIpcTransportOptions& options);
  // Creates the ring and events, exchanges handles with the peer, opens the peer's.
  absl::Status Handshake(absl::Time deadline);
  // Reads one frame from the side channel and files it (READY, CONSUMED, CONTROL).
  absl::Status PumpOne(absl::Time deadline);
  absl::Status CheckUsable() const;
  // Records the first error; every later call fails with it.
  absl::Status Fail(absl::Status why);
  // Waits for `event` (on this process's stream) with the deadline.
  absl::Status WaitEventDone(cudaEvent_t event, absl::Time deadline, absl::string_view what);

  std::unique_ptr<FramedSocket> socket_;
  const CudaIpcTransportOptions options_;
  std::atomic<bool> closed_{false};
  absl::Status broken_;  // OK while usable

  cudaStream_t stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;          // local: a receive copy finished
  void* ring_ = nullptr;                  // own slots [num_slots, slot_bytes]
  std::vector<cudaEvent_t> slot_events_;  // own, interprocess: slot i filled
  char* peer_ring_ = nullptr;             // the peer's slots, opened by handle
  int peer_num_slots_ = 0;
  int64_t peer_slot_bytes_ = 0;
  std::vector<cudaEvent_t> peer_events_;  // the peer's slot events, opened by handle

  std::deque<int> free_slots_;  // own slots the peer has drained
  std::deque<Ready> ready_;     // peer slots holding a piece for our Recv
  std::deque<std::string> control_;
  int64_t send_seq_ = 0;
  int64_t recv_seq_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_CUDA_CUDA_IPC_TRANSPORT_H_
