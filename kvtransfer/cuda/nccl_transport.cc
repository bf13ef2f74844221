#include "kvtransfer/cuda/nccl_transport.h"

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

#define NCCL_TRANSPORT_CUDA_OK(expr)                                                      \
  do {                                                                                    \
    const cudaError_t nccl_transport_err_ = (expr);                                       \
    if (nccl_transport_err_ != cudaSuccess) return CudaError(nccl_transport_err_, #expr); \
  } while (0)

std::string NcclMessage(ncclResult_t result, ncclComm_t comm) {
  std::string s = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') absl::StrAppend(&s, ": ", last);
  return s;
}

}  // namespace

absl::StatusOr<std::string> NcclTransport::NewUniqueId() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) {
    return absl::InternalError(absl::StrCat("ncclGetUniqueId: ", NcclMessage(r, nullptr)));
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(
    std::string_view unique_id, int nranks, int rank, int device,
    const NcclTransportOptions& options) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id has ", sizeof(id.internal),
                                                   " bytes, got ", unique_id.size()));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  return Create(id, nranks, rank, device, options);
}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(
    const ncclUniqueId& unique_id, int nranks, int rank, int device,
    const NcclTransportOptions& options) {
  if (nranks < 1 || nranks > 2 || rank < 0 || rank >= nranks || device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("NcclTransport: nranks ", nranks,
                                                   " (1 or 2), rank ", rank, ", device ", device));
  }
  std::unique_ptr<NcclTransport> t(new NcclTransport(nranks, rank, device, options));
  absl::MutexLock lock(&t->op_mu_);
  RETURN_IF_ERROR(t->Init(unique_id));
  return t;
}

absl::Status NcclTransport::Init(const ncclUniqueId& id) {
  NCCL_TRANSPORT_CUDA_OK(cudaSetDevice(device_));
  NCCL_TRANSPORT_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  NCCL_TRANSPORT_CUDA_OK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  NCCL_TRANSPORT_CUDA_OK(cudaMalloc(&header_dev_, 2 * sizeof(int64_t)));
  NCCL_TRANSPORT_CUDA_OK(cudaHostAlloc(reinterpret_cast<void**>(&header_host_), 2 * sizeof(int64_t),
                                       cudaHostAllocDefault));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t r = ncclCommInitRankConfig(&comm_, nranks_, id, rank_, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    const absl::Status why =
        absl::InternalError(absl::StrCat("ncclCommInitRankConfig: ", NcclMessage(r, comm_)));
    return comm_ != nullptr ? Fail(why) : why;
  }
  return WaitNccl(
      absl::Now() + options_.init_timeout,
      absl::StrCat("joining the NCCL communicator (rank ", rank_, " of ", nranks_, ")"));
}

NcclTransport::~NcclTransport() {
  // The stream, event and buffers below are device_'s, whatever happened to the communicator.
  const bool on_device = cudaSetDevice(device_) == cudaSuccess;
  {
    absl::MutexLock lock(&op_mu_);
    if (comm_ != nullptr && on_device) {
      const ncclResult_t r = ncclCommFinalize(comm_);
      if (r != ncclSuccess && r != ncclInProgress) {
        Fail(absl::InternalError(absl::StrCat("ncclCommFinalize: ", NcclMessage(r, comm_))))
            .IgnoreError();
      } else {
        // Fails (and aborts) when finalizing takes long, e.g. a vanished peer.
        WaitNccl(absl::Now() + absl::Seconds(5), "ncclCommFinalize").IgnoreError();
      }
      if (comm_ != nullptr) {
        const ncclResult_t d = ncclCommDestroy(comm_);
        if (d != ncclSuccess && d != ncclInProgress) {
          LOG(WARNING) << "ncclCommDestroy: " << ncclGetErrorString(d);
        }
        comm_ = nullptr;
      }
    } else if (comm_ != nullptr) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  if (done_ != nullptr) cudaEventDestroy(done_);
  if (header_dev_ != nullptr) cudaFree(header_dev_);
  if (header_host_ != nullptr) cudaFreeHost(header_host_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status NcclTransport::Fail(absl::Status why) {
  if (comm_ != nullptr) {
    const ncclResult_t r = ncclCommAbort(comm_);
    if (r != ncclSuccess) LOG(WARNING) << "ncclCommAbort: " << ncclGetErrorString(r);
    comm_ = nullptr;
  }
  if (broken_.ok()) broken_ = why;
  return why;
}

absl::Status NcclTransport::CheckUsable() const {
  if (!broken_.ok()) {
    return absl::UnavailableError(absl::StrCat("NCCL transport is broken: ", broken_.message()));
  }
  if (closed_.load() || comm_ == nullptr) return absl::UnavailableError("NCCL transport closed");
  return absl::OkStatus();
}

absl::Status NcclTransport::NcclCheck(ncclResult_t result, absl::string_view what) {
  if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
  return Fail(absl::InternalError(absl::StrCat(what, ": ", NcclMessage(result, comm_))));
}

absl::Status NcclTransport::WaitNccl(absl::Time deadline, absl::string_view what) {
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess) {
      return Fail(absl::InternalError(
          absl::StrCat(what, ": ncclCommGetAsyncError: ", NcclMessage(r, comm_))));
    }
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) {
      return Fail(absl::InternalError(absl::StrCat(what, ": ", NcclMessage(state, comm_))));
    }
    if (closed_.load()) return Fail(absl::UnavailableError(absl::StrCat(what, ": closed")));
    if (absl::Now() > deadline) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(what, ": deadline exceeded")));
    }
    backoff.Wait();
  }
}

absl::Status NcclTransport::WaitStream(absl::Time deadline, absl::string_view what) {
  const cudaError_t recorded = cudaEventRecord(done_, stream_);
  if (recorded != cudaSuccess) return Fail(CudaError(recorded, "cudaEventRecord"));
  Backoff backoff;
  while (true) {
    const cudaError_t q = cudaEventQuery(done_);
    if (q == cudaSuccess) return absl::OkStatus();
    if (q != cudaErrorNotReady) return Fail(CudaError(q, absl::StrCat(what, ": cudaEventQuery")));
    // NOTE: "not ready" must not linger as the thread's last error: the runner's next launch
    // on this thread checks cudaGetLastError.
    (void)cudaGetLastError();
    // A peer failure shows here while the kernels wait for it.
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      return Fail(absl::InternalError(
          absl::StrCat(what, ": ", NcclMessage(r != ncclSuccess ? r : state, comm_))));
    }
    if (closed_.load()) return Fail(absl::UnavailableError(absl::StrCat(what, ": closed")));
    if (absl::Now() > deadline) {
      return Fail(absl::DeadlineExceededError(absl::StrCat(what, ": deadline exceeded")));
    }
    backoff.Wait();
  }
}

absl::Status NcclTransport::Send(const void* src, int64_t bytes, absl::Time deadline) {
  if (nranks_ == 1) {
    return absl::FailedPreconditionError(
        "NcclTransport::Send on a one-rank communicator: use SendRecvSelf");
  }
  if (bytes < 0 || (bytes > 0 && src == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Send of ", bytes, " bytes from ", src == nullptr ? "null" : "a buffer"));
  }
  absl::MutexLock lock(&op_mu_);
  RETURN_IF_ERROR(CheckUsable());
  NCCL_TRANSPORT_CUDA_OK(cudaSetDevice(device_));
  return SendLocked(src, bytes, deadline);
}

absl::Status NcclTransport::SendLocked(const void* src, int64_t bytes, absl::Time deadline) {
  const int peer = 1 - rank_;
  header_host_[0] = bytes;
  header_host_[1] = send_seq_++;
  // header_host_ is rewritten only by the next call, after WaitStream below.
  const cudaError_t copied = cudaMemcpyAsync(header_dev_, header_host_, 2 * sizeof(int64_t),
                                             cudaMemcpyHostToDevice, stream_);
  if (copied != cudaSuccess) return Fail(CudaError(copied, "header cudaMemcpyAsync"));
  // Header and payload in separate groups, as Recv posts them.
  RETURN_IF_ERROR(NcclCheck(ncclGroupStart(), "ncclGroupStart"));
  const ncclResult_t h =
      ncclSend(header_dev_, 2 * sizeof(int64_t), ncclUint8, peer, comm_, stream_);
  const ncclResult_t he = ncclGroupEnd();
  RETURN_IF_ERROR(NcclCheck(h, "ncclSend(header)"));
  RETURN_IF_ERROR(NcclCheck(he, "ncclGroupEnd(header)"));
  RETURN_IF_ERROR(WaitNccl(deadline, "ncclSend(header)"));
  if (bytes > 0) {
    RETURN_IF_ERROR(NcclCheck(ncclGroupStart(), "ncclGroupStart"));
    const ncclResult_t s =
        ncclSend(src, static_cast<size_t>(bytes), ncclUint8, peer, comm_, stream_);
    const ncclResult_t se = ncclGroupEnd();
    RETURN_IF_ERROR(NcclCheck(s, "ncclSend"));
    RETURN_IF_ERROR(NcclCheck(se, "ncclGroupEnd"));
    RETURN_IF_ERROR(WaitNccl(deadline, "ncclSend"));
  }
  return WaitStream(deadline, absl::StrCat("NCCL send of ", bytes, " bytes"));
}

absl::Status NcclTransport::Recv(void* dst, int64_t bytes, absl::Time deadline) {
  if (nranks_ == 1) {
    return absl::FailedPreconditionError(
        "NcclTransport::Recv on a one-rank communicator: use SendRecvSelf");
  }
  if (bytes < 0 || (bytes > 0 && dst == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Recv of ", bytes, " bytes into ", dst == nullptr ? "null" : "a buffer"));
  }
  absl::MutexLock lock(&op_mu_);
  RETURN_IF_ERROR(CheckUsable());
  NCCL_TRANSPORT_CUDA_OK(cudaSetDevice(device_));
  return RecvLocked(dst, bytes, deadline);
}

absl::Status NcclTransport::RecvLocked(void* dst, int64_t bytes, absl::Time deadline) {
  const int peer = 1 - rank_;
  RETURN_IF_ERROR(NcclCheck(ncclGroupStart(), "ncclGroupStart"));
  const ncclResult_t h =
      ncclRecv(header_dev_, 2 * sizeof(int64_t), ncclUint8, peer, comm_, stream_);
  const ncclResult_t he = ncclGroupEnd();
  RETURN_IF_ERROR(NcclCheck(h, "ncclRecv(header)"));
  RETURN_IF_ERROR(NcclCheck(he, "ncclGroupEnd(header)"));
  RETURN_IF_ERROR(WaitNccl(deadline, "ncclRecv(header)"));
  const cudaError_t copied = cudaMemcpyAsync(header_host_, header_dev_, 2 * sizeof(int64_t),
                                             cudaMemcpyDeviceToHost, stream_);
  if (copied != cudaSuccess) return Fail(CudaError(copied, "header cudaMemcpyAsync"));
  RETURN_IF_ERROR(WaitStream(deadline, "NCCL receive of a message header"));
  const int64_t sent_bytes = header_host_[0];
  const int64_t sent_seq = header_host_[1];
  if (sent_bytes != bytes || sent_seq != recv_seq_) {
    // The payload is not received: the peer's send stays pending, the communicator is aborted.
    return Fail(absl::DataLossError(absl::StrCat("NCCL message ", sent_seq, " carries ", sent_bytes,
                                                 " bytes; expected message ", recv_seq_, " of ",
                                                 bytes, " bytes")));
  }
  ++recv_seq_;
  if (bytes > 0) {
    RETURN_IF_ERROR(NcclCheck(ncclGroupStart(), "ncclGroupStart"));
    const ncclResult_t r =
        ncclRecv(dst, static_cast<size_t>(bytes), ncclUint8, peer, comm_, stream_);
    const ncclResult_t re = ncclGroupEnd();
    RETURN_IF_ERROR(NcclCheck(r, "ncclRecv"));
    RETURN_IF_ERROR(NcclCheck(re, "ncclGroupEnd"));
    RETURN_IF_ERROR(WaitNccl(deadline, "ncclRecv"));
  }
  return WaitStream(deadline, absl::StrCat("NCCL receive of ", bytes, " bytes"));
}

absl::Status NcclTransport::SendRecvSelf(absl::Span<const SelfCopy> copies, absl::Time deadline) {
  for (const SelfCopy& c : copies) {
    if (c.bytes < 0 || (c.bytes > 0 && (c.src == nullptr || c.dst == nullptr))) {
      return absl::InvalidArgumentError(
          absl::StrCat("self copy of ", c.bytes, " bytes (src or dst null?)"));
    }
  }
  absl::MutexLock lock(&op_mu_);
  RETURN_IF_ERROR(CheckUsable());
  NCCL_TRANSPORT_CUDA_OK(cudaSetDevice(device_));
  RETURN_IF_ERROR(NcclCheck(ncclGroupStart(), "ncclGroupStart"));
  ncclResult_t first = ncclSuccess;
  for (const SelfCopy& c : copies) {
    if (c.bytes == 0) continue;
    const size_t n = static_cast<size_t>(c.bytes);
    ncclResult_t r = ncclSend(c.src, n, ncclUint8, rank_, comm_, stream_);
    if (r == ncclSuccess || r == ncclInProgress)
      r = ncclRecv(c.dst, n, ncclUint8, rank_, comm_, stream_);
    if (r != ncclSuccess && r != ncclInProgress && first == ncclSuccess) first = r;
  }
  const ncclResult_t end = ncclGroupEnd();  // always: the group must be closed on this thread
  RETURN_IF_ERROR(NcclCheck(first, "ncclSend/ncclRecv to self"));
  RETURN_IF_ERROR(NcclCheck(end, "ncclGroupEnd"));
  RETURN_IF_ERROR(WaitNccl(deadline, "ncclSend/ncclRecv to self"));
  return WaitStream(deadline, absl::StrCat("NCCL self copy (", copies.size(), " buffers)"));
}

absl::Status NcclTransport::WaitEvent(cudaEvent_t event) {
  absl::MutexLock lock(&op_mu_);
  RETURN_IF_ERROR(CheckUsable());
  NCCL_TRANSPORT_CUDA_OK(cudaSetDevice(device_));
  NCCL_TRANSPORT_CUDA_OK(cudaStreamWaitEvent(stream_, event, 0));
  return absl::OkStatus();
}

void NcclTransport::Close() {
  closed_.store(true);
  // A running operation sees closed_ and aborts; otherwise abort here.
  if (op_mu_.TryLock()) {
    if (comm_ != nullptr) Fail(absl::UnavailableError("NCCL transport closed")).IgnoreError();
    op_mu_.Unlock();
  }
}

}  // namespace tandem
