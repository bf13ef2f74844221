#include "decode_worker/decode_worker.h"

#include <algorithm>
#include <random>
#include <utility>

#include "common/deadline_alarm.h"
#include "common/logging.h"
#include "common/strings.h"
#include "kvtransfer/data_path.h"
#include "kvtransfer/layer_receiver.h"
#include "service/convert.h"
#include "service/grpc_status.h"

namespace tandem {
namespace {

// The engine frees a reservation itself this long after the worker's deadline, a safety
// net only: the worker enforces its deadlines first, knowing which blocks a transfer writes.
constexpr absl::Duration kEngineDeadlineSlack = absl::Minutes(1);

}  // namespace

DecodeWorker::DecodeWorker(std::unique_ptr<Engine> engine, const DecodeWorkerOptions& options)
    : options_(options) {
  // Ticket ids start at random (never 0): a worker restarted at the same address does not
  // hand out the ids its earlier life gave to requests that prefill workers may still hold.
  std::random_device rd;
  const uint64_t first = ((uint64_t{rd()} << 32 | rd()) >> 2) | 1;
  {
    absl::MutexLock lock(&mu_);
    next_ticket_ = first;
  }
  runner_ = &engine->runner();
  device_uuid_ = DeviceUuid(runner_->device());
  layout_ = KvLayout::For(engine->config(), runner_->block_size(), runner_->kv_dtype());
  loop_ = std::make_unique<EngineLoop>(
      std::move(engine),
      [this](Engine& e, std::vector<RequestOutput>& outputs) { OnOutputs(e, outputs); },
      [this](Engine& e) { OnTick(e); });
  metrics_ = std::make_unique<WorkerMetrics>(
      WorkerMetricsOptions{options.model_name, "decode", "received"}, *loop_,
      [this] { return CurrentLoad(); });
}

DecodeWorker::~DecodeWorker() { Stop(); }

void DecodeWorker::SetAddress(const std::string& address) {
  absl::MutexLock lock(&mu_);
  address_ = address;
}

void DecodeWorker::Start() {
  loop_->Start();
  pumper_ = std::thread([this] { PumpStreams(); });
}

void DecodeWorker::Stop() {
  loop_->Stop();
  {
    absl::MutexLock lock(&mu_);
    pumper_stopping_ = true;
  }
  if (pumper_.joinable()) pumper_.join();
}

v1::WorkerLoad DecodeWorker::CurrentLoad() const {
  v1::WorkerLoad load = WorkerLoadFromStats(loop_->stats());
  absl::MutexLock lock(&mu_);
  int waiting = 0;
  for (const auto& [id, ticket] : tickets_) {
    if (ticket->state == Ticket::State::kReserved || ticket->state == Ticket::State::kReceiving) {
      ++waiting;
    }
  }
  load.set_waiting_sequences(load.waiting_sequences() + waiting);
  return load;
}

int DecodeWorker::num_requests() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(tickets_.size());
}

std::shared_ptr<DecodeWorker::Ticket> DecodeWorker::FindTicket(uint64_t ticket_id) const {
  absl::MutexLock lock(&mu_);
  auto it = tickets_.find(ticket_id);
  return it == tickets_.end() ? nullptr : it->second;
}

void DecodeWorker::TicketToProto(const Ticket& ticket, const std::string& address,
                                 v1::Ticket* out) {
  out->set_request_id(ticket.request_id);
  out->set_ticket_id(ticket.id);
  out->set_decode_address(address);
  out->set_deadline_unix_s(absl::ToDoubleSeconds(ticket.deadline - absl::UnixEpoch()));
  out->set_lease_s(absl::ToDoubleSeconds(ticket.lease));
}

grpc::Status DecodeWorker::Reserve(grpc::ServerContext* context, const v1::ReserveRequest* request,
                                   v1::ReserveResponse* response) {
  GenerationRequest generation;
  generation.prompt_tokens.assign(request->prompt_token_ids().begin(),
                                  request->prompt_token_ids().end());
  generation.params = GenerationParamsFromProto(request->sampling());
  const double deadline_s = request->deadline_s() > 0 ? request->deadline_s() : 30.0;
  auto ticket = std::make_shared<Ticket>();
  ticket->request_id = request->request_id();
  ticket->local = request->prefill_locally();
  ticket->num_prompt_tokens = static_cast<int32_t>(generation.prompt_tokens.size());
  ticket->reserved_at = absl::Now();
  ticket->lease = absl::Seconds(std::min(deadline_s, 3600.0));
  ticket->deadline = ticket->reserved_at + ticket->lease;
  std::string address;
  {
    absl::MutexLock lock(&mu_);
    ticket->id = next_ticket_++;
    address = address_;
  }

  // The engine validates and reserves (or, local, queues the request) on its thread; the
  // ticket is registered there too, so no output can come before the ticket exists.
  absl::Status status = loop_->Call([&](Engine& engine) -> absl::Status {
    RequestId id = 0;
    if (ticket->local) {
      absl::StatusOr<RequestId> added = engine.AddRequest(std::move(generation));
      if (!added.ok()) return added.status();
      id = *added;
      ticket->state = Ticket::State::kRunning;
    } else {
      absl::StatusOr<Engine::Reservation> reservation =
          engine.Reserve(std::move(generation), ticket->deadline + kEngineDeadlineSlack);
      if (!reservation.ok()) return reservation.status();
      id = reservation->id;
      ticket->blocks = std::move(reservation->blocks);
    }
    ticket->engine_id = id;
    absl::MutexLock lock(&mu_);
    tickets_[ticket->id] = ticket;
    by_engine_id_[id] = ticket;
    return absl::OkStatus();
  });
  metrics_->CountReservation(status);
  if (!status.ok()) return ToGrpcStatus(status);

  TicketToProto(*ticket, address, response->mutable_ticket());
  return grpc::Status::OK;
}

grpc::Status DecodeWorker::Renew(grpc::ServerContext* context, const v1::RenewRequest* request,
                                 v1::RenewResponse* response) {
  // Answered at once, not between engine steps (a long step must not make renewals late);
  // OnTick moves the engine's own deadline, its safety net, after the ticket's.
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (uint64_t id : request->ticket_ids()) {
    auto it = tickets_.find(id);
    Ticket* ticket = it == tickets_.end() ? nullptr : it->second.get();
    // Receiving: the transfer's own deadlines govern it now, and nothing is lost yet.
    const bool waiting =
        ticket != nullptr && !ticket->cancelled && !ticket->local &&
        (ticket->state == Ticket::State::kReserved || ticket->state == Ticket::State::kReceiving);
    if (!waiting) {
      response->add_lost_ticket_ids(id);
      continue;
    }
    if (ticket->state == Ticket::State::kReserved && ticket->deadline < now + ticket->lease) {
      ticket->deadline = now + ticket->lease;
      ticket->engine_deadline_stale = true;
    }
    TicketToProto(*ticket, address_, response->add_renewed());
  }
  metrics_->CountRenewals(response->renewed_size(), response->lost_ticket_ids_size());
  return grpc::Status::OK;
}

// One open token stream. Its flags are guarded by the worker's mu_; `current` belongs to
// the write in flight. Deletes itself once gRPC is done with the call.
class DecodeWorker::StreamReactor final : public grpc::ServerWriteReactor<v1::DecodeEvent> {
 public:
  StreamReactor(DecodeWorker& worker, std::shared_ptr<Ticket> ticket)
      : worker_(worker), ticket_(std::move(ticket)) {}

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&worker_.mu_);
      writing = false;
      if (!ok) cancelled = true;  // the router left
    }
    worker_.PumpStream(ticket_);
  }
  void OnCancel() override {
    {
      absl::MutexLock lock(&worker_.mu_);
      cancelled = true;
    }
    worker_.PumpStream(ticket_);
  }
  void OnDone() override { delete this; }

  bool writing = false;    // a StartWrite is in flight
  bool cancelled = false;  // the call was cancelled or a write failed
  bool finished = false;   // Finish was called (or is about to be)
  v1::DecodeEvent current;

 private:
  DecodeWorker& worker_;
  const std::shared_ptr<Ticket> ticket_;
};

grpc::ServerWriteReactor<v1::DecodeEvent>* DecodeWorker::Stream(
    grpc::CallbackServerContext* context, const v1::DecodeStreamRequest* request) {
  std::shared_ptr<Ticket> ticket = FindTicket(request->ticket_id());
  if (ticket == nullptr) {
    return RefuseStream<v1::DecodeEvent>(grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        Cat("no ticket ", request->ticket_id(), " (never reserved, cancelled or expired)")));
  }
  auto* reactor = new StreamReactor(*this, ticket);
  {
    absl::MutexLock lock(&mu_);
    if (ticket->stream_open) {
      delete reactor;
      return RefuseStream<v1::DecodeEvent>(
          grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                       Cat("ticket ", ticket->id, " already has a stream")));
    }
    ticket->stream_open = true;
    ticket->stream = reactor;
  }
  PumpStream(ticket);  // events may be waiting already
  return reactor;
}

void DecodeWorker::MarkForStream(const Ticket& ticket) {
  if (ticket.stream != nullptr) to_pump_.push_back(ticket.id);
}

void DecodeWorker::PumpStreams() {
  while (true) {
    std::vector<std::shared_ptr<Ticket>> tickets;
    {
      absl::MutexLock lock(&mu_);
      auto news = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !to_pump_.empty() || pumper_stopping_;
      };
      mu_.Await(absl::Condition(&news));
      if (to_pump_.empty()) return;  // stopping
      for (uint64_t id : to_pump_) {
        auto it = tickets_.find(id);
        if (it != tickets_.end()) tickets.push_back(it->second);
      }
      to_pump_.clear();
    }
    for (const std::shared_ptr<Ticket>& ticket : tickets) PumpStream(ticket);
  }
}

void DecodeWorker::PumpStream(const std::shared_ptr<Ticket>& ticket) {
  enum class Next { kNothing, kWrite, kFinish };
  Next next = Next::kNothing;
  StreamReactor* reactor = nullptr;
  grpc::Status status;
  bool release = false;
  {
    absl::MutexLock lock(&mu_);
    reactor = ticket->stream;
    // A write in flight pumps again when it is done (OnWriteDone).
    if (reactor == nullptr || reactor->writing || reactor->finished) return;
    if (reactor->cancelled) {
      // The router left: the request ends here, and its blocks are freed.
      ticket->cancelled = true;
      if (ticket->error.ok()) ticket->error = absl::CancelledError("cancelled");
      release = true;
      status = grpc::Status::CANCELLED;
      next = Next::kFinish;
    } else if (!ticket->events.empty()) {
      reactor->current = std::move(ticket->events.front());
      ticket->events.pop_front();
      reactor->writing = true;
      next = Next::kWrite;
    } else if (ticket->state == Ticket::State::kDone) {
      status = ToGrpcStatus(ticket->error);
      next = Next::kFinish;
    }
    if (next == Next::kFinish) {
      reactor->finished = true;
      ticket->stream = nullptr;
      MaybeErase(*ticket);
    }
  }
  if (release) {
    // Blocks are freed on the engine thread (a receiving ticket's by its transfer); not a
    // Call: this may run on the engine thread itself.
    loop_->Post([this, ticket](Engine& engine) {
      absl::MutexLock lock(&mu_);
      ReleaseTicket(engine, *ticket);
      MaybeErase(*ticket);
    });
  }
  switch (next) {
    case Next::kWrite:
      reactor->StartWrite(&reactor->current);
      break;
    case Next::kFinish:
      reactor->Finish(std::move(status));
      break;
    case Next::kNothing:
      break;
  }
}

grpc::Status DecodeWorker::Cancel(grpc::ServerContext* context, const v1::CancelRequest* request,
                                  v1::CancelResponse* response) {
  CancelTicket(request->ticket_id());
  return grpc::Status::OK;
}

grpc::Status DecodeWorker::Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                                v1::WorkerLoad* response) {
  *response = CurrentLoad();
  return grpc::Status::OK;
}

void DecodeWorker::ReleaseTicket(Engine& engine, Ticket& ticket) {
  switch (ticket.state) {
    case Ticket::State::kReserved:
      engine.CancelReservation(ticket.engine_id);
      break;
    case Ticket::State::kRunning:
      engine.Abort(ticket.engine_id);
      break;
    case Ticket::State::kReceiving:  // the transfer releases it when it ends
    case Ticket::State::kDone:
      return;
  }
  by_engine_id_.erase(ticket.engine_id);
  ticket.state = Ticket::State::kDone;
  MarkForStream(ticket);
}

void DecodeWorker::CancelTicket(uint64_t ticket_id) {
  std::shared_ptr<Ticket> ticket = FindTicket(ticket_id);
  if (ticket == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    ticket->cancelled = true;
    if (ticket->error.ok()) ticket->error = absl::CancelledError("cancelled");
  }
  // Blocks are freed on the engine thread; a receiving ticket is freed by its transfer.
  loop_->Call([&](Engine& engine) {
    absl::MutexLock lock(&mu_);
    ReleaseTicket(engine, *ticket);
    MaybeErase(*ticket);
  });
}

void DecodeWorker::MaybeErase(Ticket& ticket) {
  if (ticket.state == Ticket::State::kDone && ticket.stream == nullptr) {
    tickets_.erase(ticket.id);
  }
}

void DecodeWorker::AbandonTransfer(uint64_t ticket_id) {
  std::shared_ptr<Ticket> ticket = FindTicket(ticket_id);
  if (ticket == nullptr) return;
  loop_->Call([&](Engine& engine) {
    absl::MutexLock lock(&mu_);
    if (ticket->state != Ticket::State::kReceiving) return;
    ticket->state = Ticket::State::kReserved;
    if (ticket->cancelled) {
      ReleaseTicket(engine, *ticket);
      MaybeErase(*ticket);
    }
  });
}

absl::Status DecodeWorker::Admit(Engine& engine, Ticket* ticket, int32_t first_token) {
  absl::MutexLock lock(&mu_);
  if (ticket == nullptr) return absl::NotFoundError("ticket vanished");
  if (ticket->cancelled) {
    ticket->state = Ticket::State::kReserved;
    ReleaseTicket(engine, *ticket);
    MaybeErase(*ticket);
    return absl::CancelledError(Cat("ticket ", ticket->id, " was cancelled"));
  }
  absl::Status status = engine.AdmitPrefilled(ticket->engine_id, first_token);
  if (!status.ok()) {
    by_engine_id_.erase(ticket->engine_id);
    ticket->state = Ticket::State::kDone;
    ticket->error = status;
    MarkForStream(*ticket);
    return status;
  }
  ticket->state = Ticket::State::kRunning;
  return absl::OkStatus();
}

void DecodeWorker::OnTick(Engine& engine) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> expired;
  for (auto& [id, ticket] : tickets_) {
    // A renewed lease: the engine's safety net follows, a minute behind the ticket's (also
    // once a transfer began: it runs until the ticket's deadline plus half a minute).
    if (ticket->engine_deadline_stale &&
        (ticket->state == Ticket::State::kReserved || ticket->state == Ticket::State::kReceiving)) {
      engine.ExtendReservation(ticket->engine_id, ticket->deadline + kEngineDeadlineSlack)
          .IgnoreError();  // NOT_FOUND cannot happen: the ticket still holds it
    }
    ticket->engine_deadline_stale = false;
    // A reservation whose KV never came, or a request whose Stream never opened: free it.
    const bool waiting_kv = ticket->state == Ticket::State::kReserved;
    const bool unstreamed = ticket->state == Ticket::State::kRunning && !ticket->stream_open;
    if ((waiting_kv || unstreamed) && ticket->deadline <= now) {
      LOG(WARNING) << "ticket " << id << " (" << ticket->request_id << ") expired "
                   << (waiting_kv ? "waiting for its KV" : "without a stream");
      ticket->error = absl::DeadlineExceededError(
          Cat("ticket ", id, " expired ", waiting_kv ? "before its KV arrived" : "unstreamed"));
      ReleaseTicket(engine, *ticket);
      if (!ticket->stream_open) expired.push_back(id);  // an open Stream ends with the error
    }
  }
  for (uint64_t id : expired) tickets_.erase(id);
}

void DecodeWorker::OnOutputs(Engine& engine, std::vector<RequestOutput>& outputs) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (RequestOutput& out : outputs) {
    auto it = by_engine_id_.find(out.id);
    if (it == by_engine_id_.end()) continue;
    Ticket& ticket = *it->second;
    MarkForStream(ticket);
    if (!out.new_tokens.empty() || !out.new_text.empty()) {
      if (ticket.num_generated == 0 && !out.new_tokens.empty()) {
        ticket.first_token_at = now;
        // A remote request's prompt was counted by its prefill worker.
        if (ticket.local) metrics_->prompt_tokens.Increment(ticket.num_prompt_tokens);
      }
      ticket.num_generated += static_cast<int32_t>(out.new_tokens.size());
      metrics_->generation_tokens.Increment(static_cast<double>(out.new_tokens.size()));
      v1::DecodeEvent& event = ticket.events.emplace_back();
      event.mutable_delta()->set_text(std::move(out.new_text));
      event.mutable_delta()->mutable_token_ids()->Add(out.new_tokens.begin(), out.new_tokens.end());
    }
    if (!out.finished()) continue;
    v1::DecodeEvent& event = ticket.events.emplace_back();
    v1::GenerateFinal* final = event.mutable_final();
    final->set_finish_reason(FinishReasonToProto(out.finish_reason));
    final->set_prompt_tokens(ticket.num_prompt_tokens);
    final->set_completion_tokens(ticket.num_generated);
    final->set_cached_prompt_tokens(ticket.local ? out.num_cached_prompt_tokens : 0);
    final->set_decode_worker(address_);
    final->set_request_id(ticket.request_id);
    final->set_prefill_location(ticket.local ? v1::PREFILL_LOCATION_LOCAL
                                             : v1::PREFILL_LOCATION_REMOTE);
    if (ticket.local && ticket.first_token_at != absl::Time()) {
      final->mutable_timings()->set_prefill(
          absl::ToDoubleSeconds(ticket.first_token_at - ticket.reserved_at));
    }
    if (ticket.first_token_at != absl::Time()) {
      final->mutable_timings()->set_decode(absl::ToDoubleSeconds(now - ticket.first_token_at));
    }
    if (out.finish_reason == FinishReason::kAborted && ticket.error.ok()) {
      ticket.error = absl::CancelledError("aborted");
    }
    ticket.state = Ticket::State::kDone;
    by_engine_id_.erase(it);
  }
}

grpc::Status DecodeWorker::Transfer(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::KvToPrefill, v1::KvFromPrefill>* stream) {
  v1::KvFromPrefill message;
  if (!stream->Read(&message)) return grpc::Status::CANCELLED;
  if (!message.has_open()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a KV channel starts with open");
  }
  absl::StatusOr<KvLayout> peer = KvLayoutFromProto(message.open().layout());
  if (!peer.ok()) return ToGrpcStatus(peer.status());
  if (absl::Status compatible = layout_.CheckCompatible(*peer); !compatible.ok()) {
    LOG(WARNING) << "refused a KV channel: " << compatible.message();
    return ToGrpcStatus(compatible);
  }
  absl::StatusOr<TransportKind> kind = ParseTransportKind(message.open().transport());
  if (!kind.ok()) return ToGrpcStatus(kind.status());
  if (absl::Status s = CheckTransportAvailable(*kind, runner_->kv_on_device()); !s.ok()) {
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, std::string(s.message()));
  }
  if (*kind == TransportKind::kNccl) {
    if (absl::Status s = CheckNcclPeers(device_uuid_, message.open().device_uuid()); !s.ok()) {
      LOG(WARNING) << "refused a KV channel: " << s.message();
      return ToGrpcStatus(s);
    }
  }

  // A data path for this channel alone: the one peer that arrives with the token (which
  // only the control stream's peer has) is the prefill worker's.
  DataPathOptions data_options;
  data_options.device = runner_->device();
  data_options.listen_host = options_.listen_host;
  data_options.advertise_host = options_.advertise_host;
  absl::StatusOr<std::unique_ptr<DataPathListener>> listener =
      DataPathListener::Listen(*kind, data_options);
  if (!listener.ok()) return ToGrpcStatus(listener.status());
  v1::KvToPrefill reply;
  *reply.mutable_accepted_layout() = KvLayoutToProto(layout_);
  reply.set_data_address((*listener)->address());
  reply.set_data_token((*listener)->token());
  if (!stream->Write(reply)) return grpc::Status::CANCELLED;
  absl::StatusOr<std::unique_ptr<Transport>> transport =
      (*listener)->Accept(absl::Now() + options_.transfer_timeout);
  if (!transport.ok()) return ToGrpcStatus(transport.status());
  const std::unique_ptr<StagingAllocator> staging = MakeStagingAllocator(*kind, runner_->device());
  LayerTransferOptions transfer_options;
  transfer_options.staging_allocator = staging.get();
  absl::StatusOr<std::unique_ptr<LayerReceiver>> receiver =
      LayerReceiver::Create(runner_, layout_, *peer, transport->get(), transfer_options);
  if (!receiver.ok()) return ToGrpcStatus(receiver.status());

  uint64_t receiving = 0;  // the ticket of the transfer in progress
  absl::Time begun;        // when its Begin arrived
  // The transfer in progress ends by then, before the engine's own safety net could free
  // the blocks it writes.
  absl::Time must_end = absl::InfiniteFuture();
  // Within a transfer each message (and each layer's bytes) comes within transfer_timeout
  // and by must_end: a prefill worker that stalls with its stream open must not leave the
  // ticket receiving. Between transfers a channel may idle.
  auto next_deadline = [&] { return std::min(absl::Now() + options_.transfer_timeout, must_end); };
  DeadlineAlarm stalled([context] { context->TryCancel(); });
  auto fail = [&](absl::Status status) {
    (*transport)->Close();
    if (receiving != 0) {
      metrics_->CountTransfer("failed");
      AbandonTransfer(receiving);
    }
    if (!status.ok()) LOG(WARNING) << "KV channel closed: " << status.message();
    return ToGrpcStatus(status);
  };
  while (true) {
    stalled.Arm(receiving != 0 ? next_deadline() : absl::InfiniteFuture());
    const bool read = stream->Read(&message);
    stalled.Disarm();
    if (!read) break;
    reply.Clear();
    if (message.has_begin()) {
      const v1::KvBegin& begin = message.begin();
      if (receiving != 0) return fail(absl::FailedPreconditionError("begin inside a transfer"));
      std::shared_ptr<Ticket> ticket = FindTicket(begin.ticket_id());
      absl::Status refused;
      {
        absl::MutexLock lock(&mu_);
        if (ticket == nullptr || ticket->local) {
          refused = absl::NotFoundError(Cat("no reservation for ticket ", begin.ticket_id()));
        } else if (!begin.request_id().empty() && begin.request_id() != ticket->request_id) {
          refused = absl::NotFoundError(Cat("ticket ", begin.ticket_id(), " is request ",
                                            ticket->request_id, "'s, not ", begin.request_id(),
                                            " (a ticket of this worker's earlier life?)"));
        } else if (ticket->cancelled || ticket->state != Ticket::State::kReserved) {
          refused = absl::FailedPreconditionError(
              Cat("ticket ", ticket->id,
                  ticket->cancelled ? " was cancelled" : " is not waiting for KV"));
        } else if (begin.num_tokens() != ticket->num_prompt_tokens) {
          refused = absl::InvalidArgumentError(Cat("ticket ", ticket->id, " reserved ",
                                                   ticket->num_prompt_tokens, " tokens, not ",
                                                   begin.num_tokens()));
        } else {
          ticket->state = Ticket::State::kReceiving;
          must_end = ticket->deadline + kEngineDeadlineSlack / 2;
        }
      }
      if (refused.ok()) {
        receiving = ticket->id;
        begun = absl::Now();
        refused = (*receiver)->Begin(ticket->blocks, begin.num_tokens());
        if (!refused.ok()) {
          AbandonTransfer(receiving);
          receiving = 0;
        }
      }
      if (refused.ok()) {
        reply.set_begun_ticket_id(begin.ticket_id());
      } else {
        metrics_->CountTransfer("refused");
        reply.set_error(std::string(refused.message()));
      }
    } else if (message.has_layer()) {
      if (receiving == 0) return fail(absl::FailedPreconditionError("layer outside a transfer"));
      absl::Status status = (*receiver)->RecvLayer(message.layer().layer(), next_deadline());
      if (!status.ok()) return fail(status);
      metrics_->kv_transfer_bytes.Increment(static_cast<double>((*receiver)->layer_bytes()));
      continue;  // layers are not acknowledged one by one
    } else if (message.has_end()) {
      const v1::KvEnd& end = message.end();
      if (receiving == 0 || end.ticket_id() != receiving || !(*receiver)->done()) {
        return fail(absl::FailedPreconditionError(
            Cat("end of ticket ", end.ticket_id(), " before all its layers arrived")));
      }
      std::shared_ptr<Ticket> ticket = FindTicket(receiving);
      absl::Status admitted = loop_->Call([&](Engine& engine) -> absl::Status {
        absl::Status status = Admit(engine, ticket.get(), end.first_token());
        // The first token goes out now, not with the next decode step.
        std::vector<RequestOutput> first = engine.TakePendingOutputs();
        if (!first.empty()) OnOutputs(engine, first);
        return status;
      });
      receiving = 0;
      metrics_->kv_transfer_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - begun));
      metrics_->CountTransfer(admitted.ok() ? "ok" : "refused");
      if (admitted.ok()) {
        reply.set_acked_ticket_id(end.ticket_id());
      } else {
        reply.set_error(std::string(admitted.message()));
      }
    } else {
      return fail(absl::InvalidArgumentError("unexpected message on the KV channel"));
    }
    if (!stream->Write(reply)) return fail(absl::CancelledError("the prefill side left"));
  }
  if (stalled.fired() > 0 && receiving != 0) {
    return fail(absl::DeadlineExceededError(
        Cat("ticket ", receiving, ": the prefill worker sent nothing more within ",
            absl::FormatDuration(options_.transfer_timeout), " (or past the reservation)")));
  }
  return fail(absl::OkStatus());
}

}  // namespace tandem
