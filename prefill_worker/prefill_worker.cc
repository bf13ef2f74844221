#include "prefill_worker/prefill_worker.h"

#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "service/convert.h"
#include "service/grpc_status.h"

namespace tandem {
namespace {

constexpr absl::Duration kPollInterval = absl::Milliseconds(20);

}  // namespace

PrefillWorker::PrefillWorker(std::unique_ptr<Engine> engine, const PrefillWorkerOptions& options)
    : options_(options) {
  runner_ = &engine->runner();
  layout_ = KvLayout::For(engine->config(), runner_->block_size(), runner_->kv_dtype());
  engine->SetKvLayerHook([this](int layer, absl::Span<const Engine::KvLayerReady> ready) {
    OnKvLayer(layer, ready);
  });
  loop_ = std::make_unique<EngineLoop>(
      std::move(engine),
      [this](Engine& e, std::vector<RequestOutput>& outputs) { OnOutputs(e, outputs); },
      nullptr);
  metrics_ = std::make_unique<WorkerMetrics>(
      WorkerMetricsOptions{options.model_name, "prefill", "sent"}, *loop_,
      [this] { return CurrentLoad(); });
}

PrefillWorker::~PrefillWorker() { Stop(); }

void PrefillWorker::Start() {
  loop_->Start();
  renewer_ = std::thread([this] { RenewLeases(); });
}

void PrefillWorker::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    renew_changed_.SignalAll();
  }
  if (renewer_.joinable()) renewer_.join();
  loop_->Stop();
}

v1::WorkerLoad PrefillWorker::CurrentLoad() const {
  v1::WorkerLoad load = WorkerLoadFromStats(loop_->stats());
  absl::MutexLock lock(&mu_);
  load.set_queued_prompt_tokens(queued_prompt_tokens_);
  return load;
}

int PrefillWorker::num_requests() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(by_request_id_.size());
}

grpc::Status PrefillWorker::Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                                 v1::WorkerLoad* response) {
  *response = CurrentLoad();
  return grpc::Status::OK;
}

grpc::Status PrefillWorker::Cancel(grpc::ServerContext* context,
                                   const v1::CancelRequest* request,
                                   v1::CancelResponse* response) {
  absl::MutexLock lock(&mu_);
  auto it = by_request_id_.find(request->request_id());
  if (it != by_request_id_.end()) it->second->cancelled = true;
  return grpc::Status::OK;
}

void PrefillWorker::OnKvLayer(int layer, absl::Span<const Engine::KvLayerReady> ready) {
  absl::MutexLock lock(&mu_);
  for (const Engine::KvLayerReady& r : ready) {
    auto it = by_engine_id_.find(r.id);
    if (it == by_engine_id_.end()) continue;
    Job& job = *it->second;
    if (layer == 0) job.blocks.assign(r.blocks.begin(), r.blocks.end());
    job.layers_ready = layer + 1;
  }
}

void PrefillWorker::OnOutputs(Engine& engine, std::vector<RequestOutput>& outputs) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (const RequestOutput& out : outputs) {
    if (!out.finished()) continue;
    auto it = by_engine_id_.find(out.id);
    if (it == by_engine_id_.end()) continue;
    Job& job = *it->second;
    job.finished = true;
    job.finish_reason = out.finish_reason;
    if (!out.new_tokens.empty()) job.first_token = out.new_tokens.front();
    job.cached_tokens = out.num_cached_prompt_tokens;
    job.prefill_done = now;
    queued_prompt_tokens_ -= job.num_prompt_tokens;
  }
}

absl::Status PrefillWorker::WaitFor(Job& job, grpc::ServerContext* context, absl::Time call_deadline,
                                    const std::function<bool()>& ready) {
  while (true) {
    absl::Time deadline;
    {
      absl::MutexLock lock(&mu_);
      deadline = std::min(call_deadline, job.deadline);  // renewals move job.deadline
      auto done = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return ready() || job.cancelled || job.finish_reason == FinishReason::kAborted;
      };
      mu_.AwaitWithDeadline(absl::Condition(&done),
                            std::min(deadline, absl::Now() + kPollInterval));
      if (ready()) return absl::OkStatus();
      if (job.cancelled) {
        return absl::CancelledError(job.cancel_reason.empty() ? "prefill cancelled"
                                                              : job.cancel_reason);
      }
      if (job.finish_reason == FinishReason::kAborted) {
        return absl::AbortedError("the engine aborted the prefill");
      }
    }
    if (context->IsCancelled()) {
      absl::MutexLock lock(&mu_);
      job.cancelled = true;
      return absl::CancelledError("prefill call cancelled");
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("prefill did not finish before its deadline");
    }
  }
}

void PrefillWorker::RenewLeases() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time now = absl::Now();
    absl::Time wake = now + absl::Seconds(1);
    absl::flat_hash_map<std::string, std::vector<std::shared_ptr<Job>>> due;
    for (const auto& [request_id, job] : by_request_id_) {
      if (!job->renewing || job->cancelled) continue;
      if (job->renew_at <= now) {
        due[job->decode_address].push_back(job);
      } else {
        wake = std::min(wake, job->renew_at);
      }
    }
    if (due.empty()) {
      renew_changed_.WaitWithDeadline(&mu_, wake);
      continue;
    }
    // Each call may take until the first of its leases would lapse: a renewal that lands
    // by then is still worth having (the decode worker may be busy).
    absl::flat_hash_map<std::string, absl::Time> call_deadline;
    for (const auto& [address, jobs] : due) {
      absl::Time earliest = absl::InfiniteFuture();
      for (const std::shared_ptr<Job>& job : jobs) earliest = std::min(earliest, job->deadline);
      call_deadline[address] = std::max(earliest, now + absl::Milliseconds(5));
    }
    mu_.Unlock();
    for (const auto& [address, jobs] : due) RenewAt(address, jobs, call_deadline[address]);
    mu_.Lock();
  }
}

void PrefillWorker::RenewAt(const std::string& decode_address,
                            const std::vector<std::shared_ptr<Job>>& jobs, absl::Time deadline) {
  std::unique_ptr<v1::Decode::Stub>& stub = decode_stubs_[decode_address];
  if (stub == nullptr) {
    stub = v1::Decode::NewStub(grpc::CreateChannel(
        decode_address, options_.kv_channel_credentials != nullptr
                            ? options_.kv_channel_credentials
                            : grpc::InsecureChannelCredentials()));
  }
  v1::RenewRequest request;
  for (const std::shared_ptr<Job>& job : jobs) request.add_ticket_ids(job->ticket_id);
  const absl::Time sent = absl::Now();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(deadline));
  v1::RenewResponse response;
  const grpc::Status status = stub->Renew(&context, request, &response);

  absl::MutexLock lock(&mu_);
  auto find = [&](uint64_t ticket_id) -> Job* {
    for (const std::shared_ptr<Job>& job : jobs) {
      if (job->ticket_id == ticket_id) return job.get();
    }
    return nullptr;
  };
  if (!status.ok()) {
    // The decode worker may be busy or gone: try again soon; the lease runs out otherwise.
    for (const std::shared_ptr<Job>& job : jobs) {
      job->renew_at = absl::Now() + std::max(job->lease / 10, absl::Milliseconds(5));
    }
    LOG(WARNING) << "renewing " << jobs.size() << " reservations on " << decode_address
                 << " failed: " << status.error_message();
    return;
  }
  for (const v1::Ticket& renewed : response.renewed()) {
    Job* job = find(renewed.ticket_id());
    if (job == nullptr || !job->renewing) continue;
    // The decode worker's lease started after `sent`: counting from `sent` is on the safe side.
    job->deadline = sent + job->lease;
    job->renew_at = sent + job->lease / 3;
  }
  for (uint64_t ticket_id : response.lost_ticket_ids()) {
    Job* job = find(ticket_id);
    if (job == nullptr || !job->renewing) continue;
    job->cancel_reason = Cat("decode worker ", decode_address, " no longer holds ticket ",
                             ticket_id, ": prefill stopped");
    LOG(WARNING) << "prefill of " << job->request_id << ": " << job->cancel_reason;
    job->cancelled = true;
  }
}

std::shared_ptr<PrefillWorker::ChannelSlot> PrefillWorker::Slot(const std::string& address) {
  absl::MutexLock lock(&channels_mu_);
  std::shared_ptr<ChannelSlot>& slot = channels_[address];
  if (slot == nullptr) slot = std::make_shared<ChannelSlot>();
  return slot;
}

absl::Status PrefillWorker::Transfer(Job& job, const v1::Ticket& ticket,
                                     grpc::ServerContext* context, absl::Time deadline) {
  const int n_layers = layout_.n_layers;
  // The first layer of the last chunk: from here on the KV streams out layer by layer.
  RETURN_IF_ERROR(WaitFor(job, context, deadline, [&] { return job.layers_ready > 0; }));

  std::shared_ptr<ChannelSlot> slot = Slot(ticket.decode_address());
  absl::MutexLock transfer(&slot->transfer_mu);
  const absl::Time open_deadline =
      std::min(deadline, absl::Now() + options_.channel_open_timeout);
  if (slot->channel == nullptr || slot->channel->broken()) {
    slot->channel.reset();
    ASSIGN_OR_RETURN(slot->channel,
                     KvChannelClient::Open(ticket.decode_address(), runner_, layout_,
                                           open_deadline, options_.kv_channel_credentials,
                                           options_.kv_transport));
  }
  KvChannelClient& channel = *slot->channel;
  auto reply_deadline = [&] { return std::min(deadline, absl::Now() + options_.transfer_timeout); };
  std::vector<int32_t> blocks;
  {
    absl::MutexLock lock(&mu_);
    blocks = job.blocks;
    job.renewing = false;  // from Begin on, the transfer's own deadlines govern
  }
  if (absl::Status begun = channel.Begin(ticket.ticket_id(), job.request_id, blocks,
                                         job.num_prompt_tokens, reply_deadline());
      !begun.ok()) {
    metrics_->CountTransfer(channel.broken() ? "failed" : "refused");
    return begun;
  }
  {
    absl::MutexLock lock(&mu_);
    job.deadline = absl::InfiniteFuture();
  }
  const absl::Time begun_at = absl::Now();
  const double layer_bytes =
      static_cast<double>(runner_->KvLayerBytes(static_cast<int64_t>(blocks.size())));
  // From here the decode side expects every layer: a failure must break the channel.
  absl::Status status;
  for (int layer = 0; layer < n_layers && status.ok(); ++layer) {
    status = WaitFor(job, context, deadline, [&] { return job.layers_ready > layer; });
    if (status.ok()) status = channel.SendLayer(layer, reply_deadline());
    if (status.ok()) metrics_->kv_transfer_bytes.Increment(layer_bytes);
  }
  if (status.ok()) status = WaitFor(job, context, deadline, [&] { return job.finished; });
  int32_t first_token = -1;
  if (status.ok()) {
    absl::MutexLock lock(&mu_);
    first_token = job.first_token;
    if (first_token < 0) status = absl::InternalError("the prefill sampled no first token");
  }
  if (!status.ok()) {
    channel.Close();
    metrics_->CountTransfer("failed");
    return status;
  }
  absl::Status ended = channel.End(ticket.ticket_id(), first_token, reply_deadline());
  if (ended.ok()) {
    metrics_->kv_transfer_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - begun_at));
    metrics_->CountTransfer("ok");
  } else {
    metrics_->CountTransfer(channel.broken() ? "failed" : "refused");
  }
  return ended;
}

grpc::Status PrefillWorker::Prefill(grpc::ServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) {
  const absl::Time start = absl::Now();
  if (request->ticket().decode_address().empty() || request->ticket().ticket_id() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "ticket: a decode address and ticket id are required");
  }
  GenerationRequest generation;
  generation.prompt_tokens.assign(request->prompt_token_ids().begin(),
                                  request->prompt_token_ids().end());
  generation.params = GenerationParamsFromProto(request->sampling());
  // The prefill stops after the first token and keeps its KV for the decode worker; stop
  // strings and EOS are the decode worker's business (it applies them to this token too).
  generation.params.max_tokens = 1;
  generation.params.hold_kv = true;
  generation.params.stop.clear();
  generation.params.ignore_eos = true;

  auto job = std::make_shared<Job>();
  job->request_id = request->request_id();
  job->num_prompt_tokens = static_cast<int32_t>(generation.prompt_tokens.size());
  const v1::Ticket& ticket = request->ticket();
  job->ticket_id = ticket.ticket_id();
  job->decode_address = ticket.decode_address();
  job->deadline = absl::UnixEpoch() + absl::Seconds(ticket.deadline_unix_s());
  job->lease = absl::Seconds(ticket.lease_s());
  if (job->lease > absl::ZeroDuration()) {
    // By this worker's clock: at most a lease from now (the clocks may differ).
    job->deadline = std::min(job->deadline, start + job->lease);
    job->renew_at = job->deadline - job->lease * 2 / 3;
  } else {
    job->renewing = false;  // a ticket without a lease is not renewed
  }
  {
    absl::MutexLock lock(&mu_);
    if (by_request_id_.contains(job->request_id)) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          Cat("request ", job->request_id, " is already being prefilled here"));
    }
    by_request_id_[job->request_id] = job;
    renew_changed_.SignalAll();
  }
  absl::Status added = loop_->Call([&](Engine& engine) -> absl::Status {
    absl::StatusOr<RequestId> id = engine.AddRequest(std::move(generation));
    if (!id.ok()) return id.status();
    absl::MutexLock lock(&mu_);
    job->engine_id = *id;
    by_engine_id_[*id] = job;
    queued_prompt_tokens_ += job->num_prompt_tokens;
    return absl::OkStatus();
  });

  absl::Status status = added;
  absl::Time acked;
  if (status.ok()) {
    status = Transfer(*job, ticket, context, absl::FromChrono(context->deadline()));
    acked = absl::Now();
  }

  // Free the request's blocks whatever happened: after the ack they are the decode
  // worker's copy; after a failure nobody needs them. Full blocks stay in the prefix cache.
  loop_->Call([&](Engine& engine) {
    absl::MutexLock lock(&mu_);
    if (job->engine_id != 0) {
      if (job->finished) {
        engine.ReleaseKv(job->engine_id);
      } else {
        engine.Abort(job->engine_id);
        queued_prompt_tokens_ -= job->num_prompt_tokens;
      }
      by_engine_id_.erase(job->engine_id);
    }
    by_request_id_.erase(job->request_id);
  });
  if (!status.ok()) {
    LOG(WARNING) << "prefill of " << job->request_id << " failed: " << status;
    return ToGrpcStatus(status);
  }
  metrics_->prompt_tokens.Increment(job->num_prompt_tokens);
  absl::MutexLock lock(&mu_);
  response->set_first_token(job->first_token);
  response->set_cached_prompt_tokens(job->cached_tokens);
  response->set_prefill_s(absl::ToDoubleSeconds(job->prefill_done - start));
  response->set_kv_transfer_s(absl::ToDoubleSeconds(acked - job->prefill_done));
  return grpc::Status::OK;
}

}  // namespace tandem
