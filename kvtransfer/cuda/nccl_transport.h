// The KV channel's data path between GPUs through NCCL point-to-point: a communicator of two
// ranks (prefill and decode worker; peer = the other rank), or of one rank for single-GPU
// tests (SendRecvSelf). Memory is device memory on this transport's device.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0) so that every call can honour
// its deadline: operations are enqueued on the transport's own stream, then the host polls
// the stream (cudaEventQuery) and ncclCommGetAsyncError; on the deadline, Close() or an
// NCCL error the communicator is aborted (ncclCommAbort) and the transport is broken.
//
// Each Send is preceded by a 16-byte header {bytes, sequence number} in its own NCCL group;
// Recv receives the header first and answers DATA_LOSS without posting the payload when the
// length or the sequence differs (NCCL needs matched sizes; a mismatch would hang). The
// interconnect is checked by the hardware: no checksum.
//
// NOTE: two ranks cannot share one GPU ("Duplicate GPU detected"); on one GPU use
// CudaIpcTransport between processes, or one rank with SendRecvSelf.
#ifndef TANDEM_KVTRANSFER_CUDA_NCCL_TRANSPORT_H_
#define TANDEM_KVTRANSFER_CUDA_NCCL_TRANSPORT_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtransfer/transport.h"

namespace tandem {

struct NcclTransportOptions {
  // Every rank must call Create within this time.
  absl::Duration init_timeout = absl::Seconds(60);
};

// Send, Recv, SendRecvSelf and WaitEvent: one thread at a time (the channel's transfer
// thread); Close() from any thread.
class NcclTransport : public Transport {
 public:
  // NCCL_UNIQUE_ID_BYTES bytes for Create on every rank; rank 0 makes it and sends it over the
  // KV channel's control stream. The id names a bootstrap socket of this process.
  static absl::StatusOr<std::string> NewUniqueId();

  // Joins the communicator (`nranks` 1 or 2) on `device`. INVALID_ARGUMENT for a bad id or
  // rank, DEADLINE_EXCEEDED when the other rank does not join in time, INTERNAL for NCCL/CUDA
  // failures (with NCCL's message).
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(
      std::string_view unique_id, int nranks, int rank, int device,
      const NcclTransportOptions& options = {});
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(
      const ncclUniqueId& unique_id, int nranks, int rank, int device,
      const NcclTransportOptions& options = {});
  // Finalizes the communicator (aborts it when that takes more than a few seconds).
  ~NcclTransport() override;
  NcclTransport(const NcclTransport&) = delete;
  NcclTransport& operator=(const NcclTransport&) = delete;

  TransportKind kind() const override { return TransportKind::kNccl; }
  MemoryKind memory() const override { return MemoryKind::kDevice; }
  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // To / from the other rank; each returns when its bytes have left `src` / are in `dst`.
  // FAILED_PRECONDITION on a one-rank communicator (a lone Send to self never completes: use
  // SendRecvSelf).
  absl::Status Send(const void* src, int64_t bytes, absl::Time deadline) override;
  absl::Status Recv(void* dst, int64_t bytes, absl::Time deadline) override;

  // `bytes` from `src` to `dst` through NCCL to this rank itself; all copies of one call run
  // in one ncclGroupStart/End. Returns when every dst is written.
  struct SelfCopy {
    const void* src = nullptr;
    void* dst = nullptr;
    int64_t bytes = 0;
  };
  absl::Status SendRecvSelf(absl::Span<const SelfCopy> copies, absl::Time deadline);
  absl::Status SendRecvSelf(const void* src, void* dst, int64_t bytes, absl::Time deadline) {
    const SelfCopy copy{src, dst, bytes};
    return SendRecvSelf(absl::MakeConstSpan(&copy, 1), deadline);
  }

  // Later transfers start (on the device) only after the work `event` captured: e.g. the
  // prefill's per-layer event, so a layer is sent while the next one is computed. The event
  // must have been recorded before this call.
  absl::Status WaitEvent(cudaEvent_t event);

  // Aborts the communicator; pending and later calls fail with UNAVAILABLE. Thread-safe.
  void Close() override;

 private:
  NcclTransport(int nranks, int rank, int device, const NcclTransportOptions& options)
      : nranks_(nranks), rank_(rank), device_(device), options_(options) {}
  absl::Status Init(const ncclUniqueId& id);
  // OK while the communicator is usable; the reason it is not otherwise.
  absl::Status CheckUsable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // Waits for an in-progress NCCL call of a non-blocking communicator to finish enqueueing.
  absl::Status WaitNccl(absl::Time deadline, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // Waits until everything enqueued on stream_ so far has run.
  absl::Status WaitStream(absl::Time deadline, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // Aborts the communicator and records why every later call fails; returns `why`.
  absl::Status Fail(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status NcclCheck(ncclResult_t result, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  // One header {bytes, seq} then (Send) the payload, each in its own group.
  absl::Status SendLocked(const void* src, int64_t bytes, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);
  absl::Status RecvLocked(void* dst, int64_t bytes, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(op_mu_);

  const int nranks_;
  const int rank_;
  const int device_;
  const NcclTransportOptions options_;

  // Held for each operation; Close() takes it when no operation runs and otherwise leaves the
  // abort to the running one (which polls closed_).
  absl::Mutex op_mu_;
  std::atomic<bool> closed_{false};
  ncclComm_t comm_ ABSL_GUARDED_BY(op_mu_) = nullptr;
  absl::Status broken_ ABSL_GUARDED_BY(op_mu_);  // why the transport is broken; OK while not
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;      // recorded after each operation, polled
  int64_t* header_dev_ = nullptr;   // device int64 [2]: {bytes, seq} of one message
  int64_t* header_host_ = nullptr;  // pinned int64 [2]
  int64_t send_seq_ ABSL_GUARDED_BY(op_mu_) = 0;
  int64_t recv_seq_ ABSL_GUARDED_BY(op_mu_) = 0;
};

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_CUDA_NCCL_TRANSPORT_H_
