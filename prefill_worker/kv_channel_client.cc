#include "prefill_worker/kv_channel_client.h"

#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "service/convert.h"
#include "service/grpc_status.h"

namespace tandem {

KvChannelClient::KvChannelClient(std::string decode_address, ModelRunner* runner,
                                 const KvLayout& layout)
    : decode_address_(std::move(decode_address)), runner_(runner), layout_(layout) {}

KvChannelClient::~KvChannelClient() {
  Close();
  if (stream_ != nullptr) {
    stream_->WritesDone();
    stream_->Finish();
  }
}

absl::StatusOr<std::unique_ptr<KvChannelClient>> KvChannelClient::Open(
    const std::string& decode_address, ModelRunner* runner, const KvLayout& layout,
    absl::Time deadline, std::shared_ptr<grpc::ChannelCredentials> credentials,
    TransportKind transport) {
  std::unique_ptr<KvChannelClient> channel(new KvChannelClient(decode_address, runner, layout));
  channel->grpc_channel_ = grpc::CreateChannel(
      decode_address,
      credentials != nullptr ? std::move(credentials) : grpc::InsecureChannelCredentials());
  channel->stub_ = v1::KvChannel::NewStub(channel->grpc_channel_);
  channel->stream_ = channel->stub_->Transfer(&channel->context_);

  v1::KvFromPrefill open;
  *open.mutable_open()->mutable_layout() = KvLayoutToProto(layout);
  open.mutable_open()->set_transport(std::string(TransportKindName(transport)));
  open.mutable_open()->set_device_uuid(DeviceUuid(runner->device()));
  RETURN_IF_ERROR(channel->Write(open));
  ASSIGN_OR_RETURN(v1::KvToPrefill reply, channel->ReadReply(deadline));
  ASSIGN_OR_RETURN(KvLayout peer, KvLayoutFromProto(reply.accepted_layout()));
  RETURN_IF_ERROR(layout.CheckCompatible(peer));
  DataPathOptions data_options;
  data_options.device = runner->device();
  absl::StatusOr<std::unique_ptr<Transport>> data = ConnectDataPath(
      transport, reply.data_address(), reply.data_token(), data_options, deadline);
  if (!data.ok()) return channel->Break(data.status());
  channel->transport_ = std::move(*data);
  channel->staging_allocator_ = MakeStagingAllocator(transport, runner->device());
  LayerTransferOptions transfer_options;
  transfer_options.staging_allocator = channel->staging_allocator_.get();
  absl::StatusOr<std::unique_ptr<LayerSender>> sender = LayerSender::Create(
      runner, layout, peer, channel->transport_.get(), transfer_options);
  if (!sender.ok()) return channel->Break(sender.status());
  channel->sender_ = std::move(*sender);
  return channel;
}

absl::Status KvChannelClient::Break(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) broken_ = status.ok() ? absl::UnavailableError("channel closed") : status;
  }
  context_.TryCancel();
  if (transport_ != nullptr) transport_->Close();
  return status;
}

void KvChannelClient::Close() {
  (void)Break(absl::UnavailableError(Cat("KV channel to ", decode_address_, " closed")));
}

bool KvChannelClient::broken() const {
  absl::MutexLock lock(&mu_);
  return !broken_.ok();
}

void KvChannelClient::OnReplyLate() {
  {
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) {
      broken_ = absl::DeadlineExceededError(
          Cat("no reply from the decode worker ", decode_address_, " in time"));
    }
  }
  context_.TryCancel();
}

absl::Status KvChannelClient::Write(const v1::KvFromPrefill& message) {
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) return broken_;
  }
  if (!stream_->Write(message)) {
    return Break(absl::UnavailableError(
        Cat("KV channel to ", decode_address_, " broke (decode worker gone?)")));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::KvToPrefill> KvChannelClient::ReadReply(absl::Time deadline) {
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) return broken_;
  }
  v1::KvToPrefill reply;
  reply_alarm_.Arm(deadline);
  const bool ok = stream_->Read(&reply);
  reply_alarm_.Disarm();
  {
    absl::MutexLock lock(&mu_);
    if (!broken_.ok()) return broken_;
  }
  if (!ok) {
    // The stream ended: the decode worker refused the channel (its status says why) or left.
    grpc::Status status = stream_->Finish();
    stream_.reset();
    if (status.ok()) {
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "the decode worker closed the channel");
    }
    return Break(FromGrpcStatus(status, Cat("KV channel to ", decode_address_)));
  }
  return reply;
}

absl::Status KvChannelClient::Begin(uint64_t ticket_id, std::string_view request_id,
                                    absl::Span<const int32_t> blocks, int32_t num_tokens,
                                    absl::Time deadline) {
  v1::KvFromPrefill message;
  message.mutable_begin()->set_ticket_id(ticket_id);
  message.mutable_begin()->set_num_tokens(num_tokens);
  message.mutable_begin()->set_request_id(std::string(request_id));
  RETURN_IF_ERROR(Write(message));
  ASSIGN_OR_RETURN(v1::KvToPrefill reply, ReadReply(deadline));
  if (!reply.error().empty()) {
    return absl::FailedPreconditionError(
        Cat("decode worker ", decode_address_, " refused ticket ", ticket_id, ": ",
            reply.error()));
  }
  if (reply.begun_ticket_id() != ticket_id) {
    return Break(absl::InternalError(Cat("KV channel out of step: begin of ", ticket_id,
                                         " answered for ", reply.begun_ticket_id())));
  }
  absl::Status status = sender_->Begin(blocks, num_tokens);
  if (!status.ok()) return Break(status);  // the decode side now waits for layers
  return absl::OkStatus();
}

absl::Status KvChannelClient::SendLayer(int layer, absl::Time deadline) {
  v1::KvFromPrefill message;
  message.mutable_layer()->set_layer(layer);
  RETURN_IF_ERROR(Write(message));
  absl::Status status = sender_->SendLayer(layer, deadline);
  if (!status.ok()) return Break(status);
  return absl::OkStatus();
}

absl::Status KvChannelClient::End(uint64_t ticket_id, int32_t first_token, absl::Time deadline) {
  v1::KvFromPrefill message;
  message.mutable_end()->set_ticket_id(ticket_id);
  message.mutable_end()->set_first_token(first_token);
  RETURN_IF_ERROR(Write(message));
  ASSIGN_OR_RETURN(v1::KvToPrefill reply, ReadReply(deadline));
  if (!reply.error().empty()) {
    return absl::FailedPreconditionError(Cat("decode worker ", decode_address_,
                                             " did not admit ticket ", ticket_id, ": ",
                                             reply.error()));
  }
  if (reply.acked_ticket_id() != ticket_id) {
    return Break(absl::InternalError(Cat("KV channel out of step: end of ", ticket_id,
                                         " answered for ", reply.acked_ticket_id())));
  }
  return absl::OkStatus();
}

}  // namespace tandem
