// The prefill end of a KV channel (docs/SERVING.md, The KV channel): the control stream to
// one decode worker's KvChannel service and the data connection beside it (tcp, cuda_ipc
// or nccl: kvtransfer/data_path.h). One transfer
// at a time per channel; any failure breaks the channel and the next transfer opens a new
// one.
#ifndef TANDEM_PREFILL_WORKER_KV_CHANNEL_CLIENT_H_
#define TANDEM_PREFILL_WORKER_KV_CHANNEL_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/deadline_alarm.h"
#include "engine/model_runner.h"
#include "grpcpp/grpcpp.h"
#include "kvtransfer/kv_layout.h"
#include "kvtransfer/layer_sender.h"
#include "kvtransfer/data_path.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem {

class KvChannelClient {
 public:
  // Opens the channel: Open on the control stream naming `transport` (FAILED_PRECONDITION
  // naming the field when the layouts differ; UNIMPLEMENTED or FAILED_PRECONDITION when the
  // decode worker cannot open that transport), then the data connection to what the reply
  // published, presenting the channel's token. Every step by `deadline`. `credentials`: the
  // control stream's (null: plaintext).
  static absl::StatusOr<std::unique_ptr<KvChannelClient>> Open(
      const std::string& decode_address, ModelRunner* runner, const KvLayout& layout,
      absl::Time deadline, std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
      TransportKind transport = TransportKind::kTcp);
  ~KvChannelClient();
  KvChannelClient(const KvChannelClient&) = delete;
  KvChannelClient& operator=(const KvChannelClient&) = delete;

  // The transfer protocol, in order: Begin, SendLayer for every layer, End. Each waits for
  // the decode side's reply where there is one. A refusal (unknown or cancelled ticket)
  // leaves the channel usable; any other failure breaks it.
  absl::Status Begin(uint64_t ticket_id, std::string_view request_id,
                     absl::Span<const int32_t> blocks, int32_t num_tokens, absl::Time deadline);
  absl::Status SendLayer(int layer, absl::Time deadline);
  absl::Status End(uint64_t ticket_id, int32_t first_token, absl::Time deadline);

  // Breaks the channel: pending and later calls fail.
  void Close();
  bool broken() const;
  const std::string& decode_address() const { return decode_address_; }

 private:
  KvChannelClient(std::string decode_address, ModelRunner* runner, const KvLayout& layout);
  absl::Status Write(const v1::KvFromPrefill& message);
  // Reads the next reply; the alarm cancels the stream when `deadline` passes first.
  absl::StatusOr<v1::KvToPrefill> ReadReply(absl::Time deadline);
  absl::Status Break(absl::Status status);
  void OnReplyLate();

  const std::string decode_address_;
  ModelRunner* const runner_;
  const KvLayout layout_;
  std::shared_ptr<grpc::Channel> grpc_channel_;
  std::unique_ptr<v1::KvChannel::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::KvFromPrefill, v1::KvToPrefill>> stream_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<StagingAllocator> staging_allocator_;  // may be null; outlives sender_
  std::unique_ptr<LayerSender> sender_;

  mutable absl::Mutex mu_;
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  // Last: destroyed (its thread stopped) before anything OnReplyLate touches.
  DeadlineAlarm reply_alarm_{[this] { OnReplyLate(); }};
};

}  // namespace tandem

#endif  // TANDEM_PREFILL_WORKER_KV_CHANNEL_CLIENT_H_
