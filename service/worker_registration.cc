#include "service/worker_registration.h"

#include <algorithm>
#include <utility>

#include "common/logging.h"
#include "service/grpc_status.h"

namespace tandem {

WorkerRegistration::WorkerRegistration(std::string router_address, v1::RegisterRequest request,
                                       std::function<v1::WorkerLoad()> load,
                                       std::shared_ptr<grpc::ChannelCredentials> credentials,
                                       bool tls)
    : router_address_(std::move(router_address)), request_(std::move(request)),
      load_(std::move(load)), tls_(tls) {
  channel_ = grpc::CreateChannel(router_address_, credentials);
  stub_ = v1::Registry::NewStub(channel_);
}

WorkerRegistration::~WorkerRegistration() { Stop(); }

void WorkerRegistration::Start() { thread_ = std::thread([this] { Run(); }); }

std::string WorkerRegistration::worker_id() const {
  absl::MutexLock lock(&mu_);
  return worker_id_;
}

void WorkerRegistration::Drain() {
  draining_ = true;
  const std::string id = worker_id();
  if (id.empty()) return;
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(2));
  v1::DeregisterRequest request;
  request.set_worker_id(id);
  v1::DeregisterResponse response;
  grpc::Status status = stub_->Deregister(&context, request, &response);
  if (!status.ok()) {
    LOG(WARNING) << "deregistering from " << router_address_ << ": " << status.error_message();
  }
}

void WorkerRegistration::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    if (stream_context_ != nullptr) stream_context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
}

void WorkerRegistration::Run() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    const absl::Time start = absl::Now();
    RegisterAndBeat();
    registered_ = false;
    // A registration that lasted resets the backoff; a failing router is retried slower.
    backoff = absl::Now() - start > absl::Seconds(5) ? absl::Milliseconds(100)
                                                       : std::min(backoff * 2, absl::Seconds(2));
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopped), backoff);
  }
}

void WorkerRegistration::RegisterAndBeat() {
  v1::RegisterRequest request = request_;
  *request.mutable_load() = load_();
  request.mutable_load()->set_draining(draining_);
  v1::RegisterResponse response;
  {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(2));
    grpc::Status status = stub_->Register(&context, request, &response);
    if (!status.ok()) {
      if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
          status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
          status.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
        // The router will never take this worker: a configuration error, not a hiccup.
        LOG(ERROR) << "router " << router_address_
                   << " refused the registration: " << status.error_message();
        std::_Exit(3);
      }
      const absl::Time now = absl::Now();
      if (failing_since_ == absl::InfinitePast()) failing_since_ = now;
      if (!warned_unreachable_ && now - failing_since_ >= absl::Seconds(10)) {
        // Said once, loudly: a worker that never registers must not look merely slow.
        warned_unreachable_ = true;
        LOG(WARNING) << "router " << router_address_ << " still not reachable after "
                     << absl::FormatDuration(absl::Trunc(now - failing_since_, absl::Seconds(1)))
                     << " (" << status.error_message() << "); "
                     << (tls_ ? "with TLS on, a handshake either side refuses ends as a closed "
                                "socket: does the router's --tls-ca sign this worker's "
                                "certificate, and this worker's --tls-ca the router's?"
                              : "is the router running there, and without TLS? (a router with "
                                "--tls-cert needs --tls-cert/--tls-key/--tls-ca on its workers)")
                     << "; still retrying";
      } else {
        LOG(INFO) << "router " << router_address_ << " not reachable yet ("
                  << status.error_message() << "); retrying";
      }
      return;
    }
  }
  failing_since_ = absl::InfinitePast();
  warned_unreachable_ = false;
  const absl::Duration interval =
      absl::Seconds(std::clamp(response.heartbeat_interval_s(), 0.05, 10.0));
  grpc::ClientContext context;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    worker_id_ = response.worker_id();
    stream_context_ = &context;
  }
  registered_ = true;
  LOG(INFO) << "registered with router " << router_address_ << " as " << response.worker_id();
  std::unique_ptr<grpc::ClientReaderWriter<v1::Heartbeat, v1::HeartbeatAck>> stream =
      stub_->Heartbeats(&context);
  while (true) {
    v1::Heartbeat beat;
    beat.set_worker_id(response.worker_id());
    *beat.mutable_load() = load_();
    beat.mutable_load()->set_draining(draining_);
    v1::HeartbeatAck ack;
    if (!stream->Write(beat) || !stream->Read(&ack)) break;
    absl::MutexLock lock(&mu_);
    auto stopped = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopped), interval)) break;
  }
  {
    absl::MutexLock lock(&mu_);
    stream_context_ = nullptr;
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  absl::MutexLock lock(&mu_);
  if (!stop_) {
    LOG(WARNING) << "heartbeat stream to " << router_address_
                 << " ended: " << status.error_message() << "; registering again";
  }
}

}  // namespace tandem
