#include "router/request_coordinator.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/serializer.h"
#include "common/strings.h"
#include "service/grpc_status.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {
namespace {

constexpr absl::Duration kReserveTimeout = absl::Seconds(10);
constexpr absl::Duration kCancelTimeout = absl::Seconds(1);
constexpr absl::Duration kBackoffMin = absl::Milliseconds(10);
constexpr absl::Duration kBackoffMax = absl::Milliseconds(200);
constexpr absl::Duration kPrefillRetryPause = absl::Milliseconds(20);
// How long a prefill that failed for good waits for D's first token before the router
// gives up on the leg (see PrefillFailed).
constexpr absl::Duration kTokenGrace = absl::Milliseconds(200);
// How many times a request is placed again after its decode reservation expired before
// its KV arrived (no prefill worker renewed it: stopped, unreachable, or the call to it slow)
// before it fails UNAVAILABLE.
constexpr int kMaxExpiredReservations = 3;

// A context for a call the router makes on the client's behalf: the client's deadline, or
// `timeout` from now if sooner. NOTE: not FromCallbackServerContext: gRPC would cancel it
// when the client leaves, possibly before the reactor's OnCancel, and a worker call failing
// CANCELLED would then look like the worker's doing. GenerateCall::ClientCancelled cancels
// the calls in flight itself.
std::unique_ptr<grpc::ClientContext> ChildContext(const grpc::CallbackServerContext& parent,
                                                  absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  std::chrono::system_clock::time_point deadline = parent.deadline();
  if (timeout != absl::InfiniteDuration()) {
    deadline =
        std::min(deadline, std::chrono::system_clock::now() + absl::ToChronoMicroseconds(timeout));
  }
  context->set_deadline(deadline);
  return context;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string NewIdPrefix() {
  std::random_device rd;
  return absl::StrFormat("rt-%08x", static_cast<uint32_t>(rd()));
}

int ServingPrefillWorkers(absl::Span<const WorkerView> workers) {
  int n = 0;
  for (const WorkerView& w : workers) {
    if (w.role == v1::WORKER_ROLE_PREFILL && !w.draining) ++n;
  }
  return n;
}

grpc::Status CancelledStatus() {
  return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
}

// Cancels `ticket_id` on a worker (Decode or Prefill service) without waiting for the
// answer; `done`, when given, runs once it came (or failed).
template <typename Service>
void SendCancel(const std::shared_ptr<grpc::Channel>& channel, const v1::CancelRequest& request,
                std::function<void()> done = nullptr) {
  struct Op {
    grpc::ClientContext context;
    v1::CancelRequest request;
    v1::CancelResponse response;
    std::unique_ptr<typename Service::Stub> stub;
  };
  auto op = std::make_shared<Op>();
  SetDeadline(op->context, kCancelTimeout);
  op->request = request;
  op->stub = Service::NewStub(channel);
  op->stub->async()->Cancel(&op->context, &op->request, &op->response,
                            [op, done = std::move(done)](grpc::Status) {
                              if (done) done();
                            });
}

}  // namespace

class GenerateCall;

// The server side of one Generate call. gRPC deletes it (OnDone) after Finish.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit GenerateReactor(std::function<void()> on_done) : on_done_(std::move(on_done)) {}
  void Attach(std::shared_ptr<GenerateCall> call) { call_ = std::move(call); }

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override {
    call_.reset();
    if (on_done_) on_done_();
    delete this;
  }

 private:
  std::shared_ptr<GenerateCall> call_;
  std::function<void()> on_done_;
};

// The client side of D's token stream for one leg. Holds the call open (AddHold) until the
// GenerateCall says it reads no more, so OnDone never races a StartRead; deletes itself in
// OnDone.
class DecodeStreamReader final : public grpc::ClientReadReactor<v1::DecodeEvent> {
 public:
  explicit DecodeStreamReader(std::shared_ptr<GenerateCall> call) : call_(std::move(call)) {}

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

  v1::DecodeEvent event;  // the latest read; read it only after OnReadDone(true)

 private:
  std::shared_ptr<GenerateCall> call_;
};

// One Generate call, from placement to the final message, as a chain of continuations: each
// step starts an asynchronous operation (a worker call, a timer, the prefill gate) whose
// completion posts the next step. Every step runs through the call's Serializer, one at a
// time, so the call's state needs no lock; steps run on gRPC's and the timer queue's threads
// and never block.
//
// A leg runs two chains at once: D's token stream (read, write to the client, read...) and,
// unless D prefills locally, the prefill (Prefill on a P, retried elsewhere, then a grace
// period); the leg ends when both have.
class GenerateCall : public std::enable_shared_from_this<GenerateCall> {
 public:
  GenerateCall(RequestCoordinator& rc, grpc::CallbackServerContext* context,
               GenerateReactor* reactor, const v1::GenerateRequest& request,
               ValidatedRequest validated, absl::Time received)
      : rc_(rc),
        context_(context),
        reactor_(reactor),
        received_(received),
        mode_(ResolveMode(rc.options_.mode, request.mode())),
        request_id_(rc.NewRequestId()),
        client_request_id_(request.request_id()),
        prompt_(std::move(validated.prompt_tokens)),
        sampling_(std::move(validated.sampling)) {}

  // Runs `step` in turn with the call's other steps.
  void Post(std::function<void()> step) {
    std::shared_ptr<GenerateCall> self = shared_from_this();  // alive until the queue drains
    serializer_.Run(std::move(step));
  }

  void Start() { NextLeg(); }

  // Events from the reactors (posted).
  void ClientCancelled();
  void WriteDone(bool ok);
  void StreamRead(bool ok);
  void StreamDone(const grpc::Status& status);

 private:
  // Where the request stands, for tandem:num_requests_waiting / _running.
  enum class Phase { kNew, kWaiting, kRunning, kDone };
  void SetPhase(Phase phase);

  // One decode worker's part of the request: the whole request, or what is left of it
  // after a decode worker failed.
  struct Leg {
    int index = 0;
    std::string request_id;       // what the workers see
    std::vector<int32_t> prompt;  // the original prompt + the tokens generated before
    v1::SamplingParams sampling;  // max_tokens: what is left
    bool local = false;           // D prefills the prompt itself
    WorkerView decode;
    WorkerRegistry::ChargeId decode_charge = 0;
    v1::Ticket ticket;
    int64_t gate_tokens = 0;  // held in the PrefillGate until the prefill ends
    size_t generated_before = 0;
    // D's stream.
    std::unique_ptr<grpc::ClientContext> stream_context;
    v1::DecodeStreamRequest stream_request;
    std::unique_ptr<v1::Decode::Stub> decode_stub;
    DecodeStreamReader* reader = nullptr;  // until the call stops reading
    bool stream_done = false;
    bool ended = false;  // both chains are done and EndLeg ran
    grpc::Status stream_status;
    std::optional<v1::GenerateFinal> final;
    // The prefill, unless local.
    struct Prefill {
      bool running = false;
      bool abandoned = false;  // the leg no longer needs it: stop at the next step
      // Set at the leg's first token: the KV evidently reached D, whatever the Prefill call
      // says (P may fail after D acknowledged the KV).
      bool tokens_flowing = false;
      int attempt = 0;
      absl::flat_hash_set<std::string> tried;
      v1::PrefillRequest request;
      absl::Status status = absl::UnknownError("the prefill did not run");
      v1::PrefillResponse response;
      std::optional<WorkerView> worker;  // the worker of the latest attempt
      bool failed_for_good = false;
    } prefill;
  };

  enum class LegEnd { kFinished, kClientGone, kDecodeFailed, kReservationExpired, kError };

  // A timer a chain waits on; Wake runs its continuation next instead (after the current
  // step).
  struct Sleep {
    TimerQueue::Id timer = 0;
    uint64_t generation = 0;
    std::function<void()> then;
  };
  void SleepThen(Sleep& sleep, absl::Duration duration, std::function<void()> then);
  void Wake(Sleep& sleep);
  // Cancels the timer; its continuation never runs.
  void Disarm(Sleep& sleep);

  // The main chain: leg -> gate -> Reserve -> stream (+ prefill) -> end of leg.
  void NextLeg();
  void WaitForGate();
  void GateAdmitted();
  void GateTimedOut();
  void StartReserve();
  void ReserveRound();
  void ReserveNext();
  void ReserveDone(absl::Status status);
  void StartLeg();
  void ReadNext();
  void StopReading();
  void MaybeEndLeg();
  void EndLeg();
  void LegOver(LegEnd end, absl::Status status);

  // The prefill chain.
  void PrefillAttempt();
  void PrefillFailed();
  void GraceOver();
  void PrefillEnd();
  void Abandon();
  void CancelLeg();

  // Completes `final` (the decode worker's, or one the router made) and writes it; the call
  // ends OK once it is written (CANCELLED when the client left).
  void WriteFinal(v1::GenerateFinal final);
  void Finish(grpc::Status status);
  bool HavePrefillWorker() const { return ServingPrefillWorkers(rc_.registry_.Snapshot()) > 0; }
  // The client cancelled or its deadline passed. NOTE: a child call inherits the client's
  // deadline and may fail with DEADLINE_EXCEEDED a moment before gRPC marks the client's
  // call cancelled, so the deadline is checked too.
  bool ClientGone() const {
    return client_gone_ || context_->IsCancelled() ||
           std::chrono::system_clock::now() >= context_->deadline();
  }
  std::shared_ptr<grpc::Channel> ChannelTo(const WorkerView& w) { return rc_.channels_.Get(w); }

  RequestCoordinator& rc_;
  grpc::CallbackServerContext* const context_;  // until Finish
  GenerateReactor* reactor_;                    // null after Finish
  Serializer serializer_;
  const absl::Time received_;
  const RouterMode mode_;
  const std::string request_id_;
  const std::string client_request_id_;
  const std::vector<int32_t> prompt_;
  const v1::SamplingParams sampling_;

  // Everything below: in the call's steps only.
  bool client_gone_ = false;
  bool finished_ = false;
  int index_ = 0;  // the leg's
  std::unique_ptr<Leg> leg_;
  Sleep main_sleep_;     // the gate's queue deadline, Reserve's backoff
  Sleep prefill_sleep_;  // the prefill's retry pause and grace period
  PrefillGate::Waiter gate_waiter_ = 0;
  // Reserve's state across its rounds.
  struct ReserveState {
    absl::Time deadline;
    absl::Duration backoff = kBackoffMin;
    absl::flat_hash_set<std::string> refused;  // decode workers that refused the request
    absl::Status last_refusal;
    absl::Status last_error;
    std::vector<WorkerView> ranked;
    size_t next = 0;
    bool busy = false;
    v1::ReserveRequest request;
    // The call in flight.
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<v1::Decode::Stub> stub;
    v1::ReserveResponse response;
    WorkerRegistry::ChargeId charge = 0;
  } reserve_;
  // The Prefill call in flight (null when none).
  std::unique_ptr<grpc::ClientContext> prefill_context_;
  std::unique_ptr<v1::Prefill::Stub> prefill_stub_;
  WorkerRegistry::ChargeId prefill_charge_ = 0;
  v1::GenerateResponse out_;  // the message being written
  bool writing_final_ = false;

  std::string failure_;                             // the latest decode worker failure
  std::vector<int32_t> generated_;                  // every token streamed to the client
  absl::flat_hash_set<std::string> failed_decode_;  // decode workers that failed this request
  std::optional<absl::Time> placed_at_;
  std::optional<absl::Time> first_delta_at_;
  absl::Time last_delta_at_;
  double prefill_s_ = 0;
  double kv_transfer_s_ = 0;
  int prefill_retries_ = 0;
  int expired_reservations_ = 0;
  int32_t cached_prompt_tokens_ = 0;
  // The latest leg's workers, for a final the router makes itself.
  std::string decode_worker_;
  std::string prefill_worker_;
  v1::PrefillLocation location_ = v1::PREFILL_LOCATION_UNSPECIFIED;
  RouterMetrics* const metrics_ = rc_.metrics_;  // optional
  Phase phase_ = Phase::kNew;
};

void GenerateReactor::OnWriteDone(bool ok) {
  GenerateCall* call = call_.get();
  call->Post([call, ok] { call->WriteDone(ok); });
}

void GenerateReactor::OnCancel() {
  GenerateCall* call = call_.get();
  call->Post([call] { call->ClientCancelled(); });
}

void DecodeStreamReader::OnReadDone(bool ok) {
  GenerateCall* call = call_.get();
  call->Post([call, ok] { call->StreamRead(ok); });
}

void DecodeStreamReader::OnDone(const grpc::Status& status) {
  std::shared_ptr<GenerateCall> call = std::move(call_);
  delete this;
  call->Post([call = call.get(), status] { call->StreamDone(status); });
}

void GenerateCall::SetPhase(Phase phase) {
  if (metrics_ == nullptr || phase == phase_) return;
  if (phase_ == Phase::kWaiting) metrics_->waiting.Decrement();
  if (phase_ == Phase::kRunning) metrics_->running.Decrement();
  if (phase == Phase::kWaiting) metrics_->waiting.Increment();
  if (phase == Phase::kRunning) metrics_->running.Increment();
  phase_ = phase;
}

void GenerateCall::SleepThen(Sleep& sleep, absl::Duration duration, std::function<void()> then) {
  const uint64_t generation = ++sleep.generation;
  sleep.then = std::move(then);
  std::weak_ptr<GenerateCall> weak = weak_from_this();
  sleep.timer = rc_.timers_.After(duration, [weak, &sleep, generation] {
    std::shared_ptr<GenerateCall> self = weak.lock();
    if (self == nullptr) return;
    self->Post([&sleep, generation] {
      if (sleep.generation != generation || sleep.timer == 0) return;  // woken already
      sleep.timer = 0;
      std::function<void()> then = std::move(sleep.then);
      then();
    });
  });
}

void GenerateCall::Disarm(Sleep& sleep) {
  if (sleep.timer == 0) return;
  rc_.timers_.Cancel(sleep.timer);  // if it fired already, its step finds timer == 0
  sleep.timer = 0;
  sleep.then = nullptr;
}

void GenerateCall::Wake(Sleep& sleep) {
  if (sleep.timer == 0) return;
  rc_.timers_.Cancel(sleep.timer);  // if it fired already, its step finds timer == 0
  sleep.timer = 0;
  Post(std::move(sleep.then));  // after the current step, like any other event
}

void GenerateCall::ClientCancelled() {
  if (finished_) return;
  client_gone_ = true;
  // The worker calls in flight end CANCELLED (ChildContext), and the timers of the gate's
  // queue deadline and Reserve's backoff run now; every step then finds the client gone.
  if (reserve_.context != nullptr) reserve_.context->TryCancel();
  if (leg_ != nullptr && leg_->stream_context != nullptr) leg_->stream_context->TryCancel();
  if (prefill_context_ != nullptr) prefill_context_->TryCancel();
  Wake(main_sleep_);
}

void GenerateCall::NextLeg() {
  const int32_t max_tokens = sampling_.max_tokens();
  const int index = index_;
  leg_ = std::make_unique<Leg>();
  Leg& leg = *leg_;
  leg.index = index;
  leg.request_id = index == 0 ? request_id_ : Cat(request_id_, "-r", index);
  leg.prompt = prompt_;
  leg.prompt.insert(leg.prompt.end(), generated_.begin(), generated_.end());
  leg.sampling = sampling_;
  leg.generated_before = generated_.size();
  const int32_t remaining = max_tokens - static_cast<int32_t>(generated_.size());
  if (index > 0) {
    // The failed worker had streamed everything but its final message.
    v1::GenerateFinal final;
    if (remaining <= 0) {
      final.set_finish_reason(v1::FINISH_REASON_LENGTH);
    } else if (!sampling_.ignore_eos() && !generated_.empty() &&
               rc_.model_.tokenizer().IsEog(generated_.back())) {
      final.set_finish_reason(v1::FINISH_REASON_STOP);
    }
    if (final.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      final.set_completion_tokens(static_cast<int32_t>(generated_.size()));
      return WriteFinal(std::move(final));
    }
  }
  leg.sampling.set_max_tokens(remaining);

  const bool have_prefill = HavePrefillWorker();
  switch (mode_) {
    case RouterMode::kDisaggregated:
      if (!have_prefill) {
        const std::string message = "no prefill worker registered (mode disaggregated)";
        return Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   failure_.empty() ? message : Cat(failure_, "; ", message)));
      }
      leg.local = false;
      break;
    case RouterMode::kCollocated:
      leg.local = true;
      break;
    case RouterMode::kAuto:
      leg.local = !have_prefill ||
                  static_cast<int64_t>(leg.prompt.size()) <= rc_.options_.auto_local_max_tokens;
      break;
  }

  SetPhase(Phase::kWaiting);
  if (leg.local) return StartReserve();
  WaitForGate();
}

// Queue here, holding nothing, until the prefill workers have room: a reservation made now
// will not expire behind a long prefill queue.
void GenerateCall::WaitForGate() {
  const int64_t tokens = static_cast<int64_t>(leg_->prompt.size());
  std::weak_ptr<GenerateCall> weak = weak_from_this();
  const PrefillGate::Waiter waiter = rc_.prefill_gate_.Enqueue(tokens, [weak, tokens, &rc = rc_] {
    std::shared_ptr<GenerateCall> self = weak.lock();
    if (self == nullptr) {  // cannot happen while it waits; give the tokens back regardless
      rc.prefill_gate_.Release(tokens);
      return;
    }
    self->Post([call = self.get()] { call->GateAdmitted(); });
  });
  if (waiter == 0) {
    leg_->gate_tokens = tokens;
    return StartReserve();
  }
  gate_waiter_ = waiter;
  SleepThen(main_sleep_, rc_.options_.queue_timeout, [this] { GateTimedOut(); });
}

void GenerateCall::GateAdmitted() {
  gate_waiter_ = 0;
  leg_->gate_tokens = static_cast<int64_t>(leg_->prompt.size());
  Disarm(main_sleep_);  // the queue deadline
  if (ClientGone()) {
    rc_.prefill_gate_.Release(leg_->gate_tokens);
    return Finish(CancelledStatus());
  }
  StartReserve();
}

void GenerateCall::GateTimedOut() {
  if (gate_waiter_ == 0) return;  // admitted
  // False: admitted a moment ago, and GateAdmitted is on its way.
  if (!rc_.prefill_gate_.Withdraw(gate_waiter_)) return;
  gate_waiter_ = 0;
  if (ClientGone()) return Finish(CancelledStatus());
  Finish(grpc::Status(
      grpc::StatusCode::RESOURCE_EXHAUSTED,
      Cat("the prefill workers stayed full for ", absl::FormatDuration(rc_.options_.queue_timeout),
          " (", rc_.prefill_gate_.in_flight(), " prompt tokens in flight)")));
}

void GenerateCall::StartReserve() {
  const Leg& leg = *leg_;
  reserve_ = ReserveState();
  reserve_.deadline = absl::Now() + rc_.options_.queue_timeout;
  v1::ReserveRequest& request = reserve_.request;
  request.set_request_id(leg.request_id);
  request.mutable_prompt_token_ids()->Assign(leg.prompt.begin(), leg.prompt.end());
  *request.mutable_sampling() = leg.sampling;
  request.set_deadline_s(absl::ToDoubleSeconds(rc_.options_.reservation_deadline));
  request.set_prefill_locally(leg.local);
  ReserveRound();
}

// One pass over the decode workers, best first; then a backoff and another pass, until
// the queue timeout.
void GenerateCall::ReserveRound() {
  if (ClientGone()) return ReserveDone(absl::CancelledError("the client cancelled the request"));
  const std::vector<WorkerView> snapshot = rc_.registry_.Snapshot();
  absl::flat_hash_set<std::string> exclude = failed_decode_;
  exclude.insert(reserve_.refused.begin(), reserve_.refused.end());
  reserve_.ranked = rc_.placement_.RankDecode(snapshot, exclude);
  reserve_.next = 0;
  reserve_.busy = false;
  if (reserve_.ranked.empty()) {
    if (!reserve_.last_refusal.ok()) return ReserveDone(reserve_.last_refusal);
    int draining = 0;
    for (const WorkerView& w : snapshot) {
      if (w.role == v1::WORKER_ROLE_DECODE && w.draining) ++draining;
    }
    if (draining > 0) {
      return ReserveDone(
          absl::UnavailableError(Cat("no decode worker available (", draining, " draining)")));
    }
    return ReserveDone(absl::UnavailableError("no decode worker registered"));
  }
  ReserveNext();
}

void GenerateCall::ReserveNext() {
  if (reserve_.next == reserve_.ranked.size()) {
    // Every decode worker said no this round.
    const absl::Time now = absl::Now();
    if (now >= reserve_.deadline) {
      if (!reserve_.busy && !reserve_.last_error.ok()) {
        return ReserveDone(absl::UnavailableError(reserve_.last_error.message()));
      }
      return ReserveDone(absl::ResourceExhaustedError(
          Cat("no decode worker had room for ", leg_->prompt.size(), " prompt tokens within ",
              absl::FormatDuration(rc_.options_.queue_timeout))));
    }
    return SleepThen(main_sleep_, std::min(reserve_.backoff, reserve_.deadline - now), [this] {
      reserve_.backoff = std::min(reserve_.backoff * 2, kBackoffMax);
      ReserveRound();
    });
  }
  const WorkerView& d = reserve_.ranked[reserve_.next++];
  const int64_t blocks =
      CeilDiv(static_cast<int64_t>(leg_->prompt.size()), std::max(1, d.block_size));
  reserve_.charge = rc_.registry_.Charge(d.id, 0, blocks);
  reserve_.context = ChildContext(*context_, kReserveTimeout);
  reserve_.stub = v1::Decode::NewStub(ChannelTo(d));
  reserve_.response.Clear();
  std::shared_ptr<GenerateCall> self = shared_from_this();
  reserve_.stub->async()->Reserve(
      reserve_.context.get(), &reserve_.request, &reserve_.response, [self](grpc::Status s) {
        self->Post([call = self.get(), s = std::move(s)] {
          ReserveState& r = call->reserve_;
          const WorkerView& d = r.ranked[r.next - 1];
          if (s.ok()) {
            Leg& leg = *call->leg_;
            leg.decode = d;
            leg.decode_charge = r.charge;
            leg.ticket = r.response.ticket();
            if (leg.ticket.decode_address().empty()) leg.ticket.set_decode_address(d.address);
            if (leg.ticket.request_id().empty()) leg.ticket.set_request_id(leg.request_id);
            return call->ReserveDone(absl::OkStatus());
          }
          call->rc_.registry_.Release(d.id, r.charge);
          if (call->ClientGone()) {
            return call->ReserveDone(absl::CancelledError("the client cancelled the request"));
          }
          switch (s.error_code()) {
            case grpc::StatusCode::RESOURCE_EXHAUSTED:
              r.busy = true;
              break;
            case grpc::StatusCode::INVALID_ARGUMENT:
            case grpc::StatusCode::FAILED_PRECONDITION:
            case grpc::StatusCode::OUT_OF_RANGE:
              r.refused.insert(d.id);
              r.last_refusal = FromGrpcStatus(s, Cat("decode worker ", d.id));
              break;
            default:
              r.last_error = FromGrpcStatus(s, Cat("decode worker ", d.id, " Reserve"));
              LOG(WARNING) << call->leg_->request_id << ": " << r.last_error;
              break;
          }
          call->ReserveNext();
        });
      });
}

void GenerateCall::ReserveDone(absl::Status status) {
  reserve_.context.reset();
  reserve_.stub.reset();
  if (!status.ok()) {
    rc_.prefill_gate_.Release(leg_->gate_tokens);
    leg_->gate_tokens = 0;
    if (ClientGone()) return Finish(CancelledStatus());
    if (index_ > 0) {
      return Finish(grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          Cat(failure_, "; no other decode worker could resume the request: ", status.message())));
    }
    return Finish(ToGrpcStatus(status));
  }
  SetPhase(Phase::kRunning);
  if (!placed_at_.has_value()) {
    placed_at_ = absl::Now();
    if (metrics_ != nullptr) {
      metrics_->queue_time.Observe(absl::ToDoubleSeconds(*placed_at_ - received_));
    }
  }
  StartLeg();
}

void GenerateCall::StartLeg() {
  Leg& leg = *leg_;
  std::shared_ptr<GenerateCall> self = shared_from_this();
  leg.decode_stub = v1::Decode::NewStub(ChannelTo(leg.decode));
  leg.stream_context = ChildContext(*context_, absl::InfiniteDuration());
  leg.stream_request.set_ticket_id(leg.ticket.ticket_id());
  // Opened before the prefill starts, so no token is missed.
  leg.reader = new DecodeStreamReader(self);
  leg.decode_stub->async()->Stream(leg.stream_context.get(), &leg.stream_request, leg.reader);
  leg.reader->AddHold();
  leg.reader->StartRead(&leg.reader->event);
  leg.reader->StartCall();

  if (metrics_ != nullptr) {
    (leg.local ? metrics_->prefill_local : metrics_->prefill_remote).Increment();
  }
  if (leg.local) return;
  Leg::Prefill& prefill = leg.prefill;
  prefill.running = true;
  v1::PrefillRequest& request = prefill.request;
  request.set_request_id(leg.request_id);
  request.mutable_prompt_token_ids()->Assign(leg.prompt.begin(), leg.prompt.end());
  *request.mutable_sampling() = leg.sampling;
  *request.mutable_ticket() = leg.ticket;
  PrefillAttempt();
}

void GenerateCall::StreamRead(bool ok) {
  Leg& leg = *leg_;
  if (!ok || leg.reader == nullptr) return StopReading();  // the stream ended
  const v1::DecodeEvent& event = leg.reader->event;
  if (leg.final.has_value()) return ReadNext();  // nothing follows the final message
  const v1::TextDelta& delta = event.delta();
  if (event.has_delta() && (delta.token_ids_size() > 0 || !delta.text().empty())) {
    const absl::Time now = absl::Now();
    if (metrics_ != nullptr) {
      if (!first_delta_at_.has_value()) {
        metrics_->time_to_first_token.Observe(absl::ToDoubleSeconds(now - received_));
        metrics_->prompt_tokens.Increment(static_cast<double>(prompt_.size()));
      } else {
        metrics_->inter_token_latency.Observe(absl::ToDoubleSeconds(now - last_delta_at_));
      }
      metrics_->generation_tokens.Increment(delta.token_ids_size());
    }
    if (!first_delta_at_.has_value()) first_delta_at_ = now;
    last_delta_at_ = now;
    if (!leg.prefill.tokens_flowing) {
      leg.prefill.tokens_flowing = true;
      Wake(prefill_sleep_);  // a prefill in its grace period: the KV did arrive
    }
    generated_.insert(generated_.end(), delta.token_ids().begin(), delta.token_ids().end());
    out_.Clear();
    *out_.mutable_delta() = delta;
    writing_final_ = false;
    reactor_->StartWrite(&out_);  // WriteDone reads on, or stops
    return;
  }
  if (event.has_final()) leg.final = event.final();
  ReadNext();
}

void GenerateCall::WriteDone(bool ok) {
  if (finished_) return;
  if (writing_final_) {
    // The call ends either way; a client that left gets CANCELLED.
    return Finish(ok ? grpc::Status::OK : CancelledStatus());
  }
  Leg& leg = *leg_;
  if (!ok) {
    client_gone_ = true;
    leg.stream_context->TryCancel();
    return StopReading();
  }
  const v1::DecodeEvent& event = leg.reader->event;
  if (event.has_final()) leg.final = event.final();
  ReadNext();
}

void GenerateCall::ReadNext() {
  Leg& leg = *leg_;
  leg.reader->StartRead(&leg.reader->event);
}

// No more reads on this leg: let the stream end (DecodeStreamReader::OnDone).
void GenerateCall::StopReading() {
  Leg& leg = *leg_;
  if (leg.reader == nullptr) return;
  DecodeStreamReader* reader = leg.reader;
  leg.reader = nullptr;
  reader->RemoveHold();
}

void GenerateCall::StreamDone(const grpc::Status& status) {
  Leg& leg = *leg_;
  leg.reader = nullptr;
  leg.stream_done = true;
  leg.stream_status = status;
  if (leg.prefill.running && (!leg.final.has_value() || client_gone_)) Abandon();
  MaybeEndLeg();
}

void GenerateCall::MaybeEndLeg() {
  Leg& leg = *leg_;
  if (leg.ended || !leg.stream_done || leg.prefill.running) return;
  leg.ended = true;
  EndLeg();
}

void GenerateCall::EndLeg() {
  Leg& leg = *leg_;
  Leg::Prefill& prefill = leg.prefill;
  prefill_retries_ += prefill.attempt;
  if (metrics_ != nullptr && prefill.attempt > 0)
    metrics_->prefill_retries.Increment(prefill.attempt);
  const grpc::Status& stream_status = leg.stream_status;

  if (client_gone_ || ClientGone()) {
    CancelLeg();
    return LegOver(LegEnd::kClientGone, absl::CancelledError("the client cancelled the request"));
  }
  // D's reservation expired before the KV arrived: no prefill worker renewed the lease (one
  // that stopped or cannot reach D, or a lease shorter than the router-to-P hand-off), not
  // a failed D.
  if (!leg.final.has_value() && !leg.local && generated_.size() == leg.generated_before &&
      stream_status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return LegOver(LegEnd::kReservationExpired, FromGrpcStatus(stream_status));
  }
  if (!leg.local && prefill.failed_for_good) {
    // The router cancelled D's ticket itself; unless D had failed on its own first, the
    // prefill's error is the request's.
    if (!leg.final.has_value() && !stream_status.ok() &&
        stream_status.error_code() != grpc::StatusCode::CANCELLED) {
      return LegOver(LegEnd::kDecodeFailed, FromGrpcStatus(stream_status));
    }
    return LegOver(LegEnd::kError, prefill.status);
  }
  if (leg.final.has_value()) {
    v1::GenerateFinal& final = *leg.final;
    decode_worker_ = leg.decode.id;
    if (leg.local) {
      prefill_worker_.clear();
      prefill_s_ += final.timings().prefill();
      if (leg.index == 0) cached_prompt_tokens_ = final.cached_prompt_tokens();
    } else {
      prefill_worker_ = prefill.worker.has_value() ? prefill.worker->id : "";
      if (prefill.status.ok()) {
        prefill_s_ += prefill.response.prefill_s();
        kv_transfer_s_ += prefill.response.kv_transfer_s();
        if (metrics_ != nullptr) metrics_->kv_transfer.Observe(prefill.response.kv_transfer_s());
        if (leg.index == 0) cached_prompt_tokens_ = prefill.response.cached_prompt_tokens();
      }
    }
    location_ = final.prefill_location();
    if (location_ == v1::PREFILL_LOCATION_UNSPECIFIED) {
      location_ = leg.local ? v1::PREFILL_LOCATION_LOCAL : v1::PREFILL_LOCATION_REMOTE;
    }
    final.set_completion_tokens(static_cast<int32_t>(leg.generated_before) +
                                final.completion_tokens());
    return LegOver(LegEnd::kFinished, absl::OkStatus());
  }
  // A decode worker that failed by itself (not cancelled by the router) is replaced.
  if (!stream_status.ok() && stream_status.error_code() != grpc::StatusCode::CANCELLED) {
    return LegOver(LegEnd::kDecodeFailed, FromGrpcStatus(stream_status));
  }
  if (stream_status.ok()) {
    return LegOver(LegEnd::kDecodeFailed,
                   absl::InternalError("the token stream ended without a final message"));
  }
  LegOver(LegEnd::kError,
          FromGrpcStatus(stream_status, Cat("decode worker ", leg.decode.id, " stream")));
}

void GenerateCall::LegOver(LegEnd end, absl::Status status) {
  Leg& leg = *leg_;
  rc_.registry_.Release(leg.decode.id, leg.decode_charge);
  switch (end) {
    case LegEnd::kFinished:
      return WriteFinal(std::move(*leg.final));
    case LegEnd::kClientGone:
      return Finish(CancelledStatus());
    case LegEnd::kError:
      return Finish(ToGrpcStatus(status));
    case LegEnd::kReservationExpired:
      // D is healthy: it freed the blocks because nobody renewed the lease. The request
      // goes back through the gate and is placed again (any D, this one included).
      if (++expired_reservations_ > kMaxExpiredReservations) {
        return Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   Cat(status.message(), " (", kMaxExpiredReservations + 1,
                                       " times: no prefill worker kept the reservation alive)")));
      }
      LOG(WARNING) << request_id_ << ": " << status.message() << "; placing the request again";
      break;
    case LegEnd::kDecodeFailed:
      failure_ = Cat("decode worker ", leg.decode.id, " (", leg.decode.address,
                     ") failed: ", status.message());
      LOG(WARNING) << request_id_ << ": " << failure_ << "; resuming after " << generated_.size()
                   << " generated tokens";
      failed_decode_.insert(leg.decode.id);
      if (metrics_ != nullptr) metrics_->decode_failovers.Increment();
      break;
  }
  ++index_;
  NextLeg();
}

void GenerateCall::PrefillAttempt() {
  Leg& leg = *leg_;
  Leg::Prefill& prefill = leg.prefill;
  if (prefill.abandoned) return PrefillEnd();
  if (prefill.tokens_flowing) {  // D got the KV from an attempt that looked failed
    prefill.status = absl::OkStatus();
    return PrefillEnd();
  }
  const std::vector<WorkerView> snapshot = rc_.registry_.Snapshot();
  std::optional<WorkerView> p = rc_.placement_.ChoosePrefill(
      snapshot, leg.prompt, prefill.tried, leg.decode.transports, leg.decode.device_uuid);
  // Every worker failed once: with no other, the same one gets the next try.
  if (!p.has_value() && !prefill.tried.empty()) {
    p = rc_.placement_.ChoosePrefill(snapshot, leg.prompt, {}, leg.decode.transports,
                                     leg.decode.device_uuid);
  }
  if (!p.has_value()) {
    prefill.status = absl::UnavailableError(
        ServingPrefillWorkers(snapshot) > 0
            ? Cat("no prefill worker opens a KV transport that ", leg.decode.id, " accepts (",
                  absl::StrJoin(leg.decode.transports, ", "), "; nccl only from another GPU; mode ",
                  RouterModeName(mode_), ")")
            : Cat("no prefill worker registered (mode ", RouterModeName(mode_), ")"));
    return PrefillFailed();
  }
  // The prefill worker keeps D's reservation alive while it holds the prompt: the call is
  // bounded by its own timeout (and the client's deadline), not by the reservation's.
  prefill_context_ = ChildContext(*context_, rc_.options_.prefill_timeout);
  prefill.worker = p;
  prefill_charge_ = rc_.registry_.Charge(p->id, static_cast<int64_t>(leg.prompt.size()), 0);
  prefill_stub_ = v1::Prefill::NewStub(ChannelTo(*p));
  prefill.response.Clear();
  std::shared_ptr<GenerateCall> self = shared_from_this();
  prefill_stub_->async()->Prefill(
      prefill_context_.get(), &prefill.request, &prefill.response, [self](grpc::Status s) {
        self->Post([call = self.get(), s = std::move(s)] {
          Leg& leg = *call->leg_;
          Leg::Prefill& prefill = leg.prefill;
          call->rc_.registry_.Release(prefill.worker->id, call->prefill_charge_);
          call->prefill_context_.reset();
          call->prefill_stub_.reset();
          if (s.ok()) {
            prefill.status = absl::OkStatus();
            return call->PrefillEnd();
          }
          prefill.status = FromGrpcStatus(s, Cat("prefill worker ", prefill.worker->id));
          if (prefill.abandoned) return call->PrefillEnd();
          if (prefill.tokens_flowing) {
            prefill.status = absl::OkStatus();  // D has the KV: the call failed after the hand-off
            return call->PrefillEnd();
          }
          if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
              s.error_code() == grpc::StatusCode::CANCELLED) {
            return call->PrefillFailed();
          }
          prefill.tried.insert(prefill.worker->id);
          const int tries = std::max(1, call->rc_.options_.prefill_tries);
          if (prefill.attempt + 1 >= tries) return call->PrefillFailed();
          LOG(WARNING) << leg.request_id << ": " << prefill.status << "; retrying the prefill ("
                       << prefill.attempt + 2 << " of " << tries << ")";
          ++prefill.attempt;
          call->SleepThen(call->prefill_sleep_, kPrefillRetryPause,
                          [call] { call->PrefillAttempt(); });
        });
      });
}

// NOTE: P returns only after D acknowledged the KV, so a P that failed right after the
// acknowledgement looks like a failed prefill while D is about to stream. Give D a moment to
// show its first token before killing a request that may be running fine.
void GenerateCall::PrefillFailed() {
  const Leg::Prefill& prefill = leg_->prefill;
  if (prefill.abandoned || prefill.tokens_flowing) return GraceOver();
  SleepThen(prefill_sleep_, kTokenGrace, [this] { GraceOver(); });
}

void GenerateCall::GraceOver() {
  Leg& leg = *leg_;
  Leg::Prefill& prefill = leg.prefill;
  if (prefill.abandoned) return PrefillEnd();
  if (prefill.tokens_flowing) {
    prefill.status = absl::OkStatus();
    return PrefillEnd();
  }
  prefill.failed_for_good = true;
  LOG(WARNING) << leg.request_id << ": prefill failed: " << prefill.status << "; cancelling ticket "
               << leg.ticket.ticket_id() << " on " << leg.decode.id;
  // Free the reservation now rather than at its deadline, and stop D's stream, which waits
  // for tokens that will not come.
  v1::CancelRequest cancel;
  cancel.set_ticket_id(leg.ticket.ticket_id());
  cancel.set_request_id(leg.request_id);
  std::shared_ptr<GenerateCall> self = shared_from_this();
  SendCancel<v1::Decode>(ChannelTo(leg.decode), cancel, [self] {
    self->Post([call = self.get()] {
      call->leg_->stream_context->TryCancel();
      call->PrefillEnd();
    });
  });
}

void GenerateCall::PrefillEnd() {
  Leg& leg = *leg_;
  leg.prefill.running = false;
  rc_.prefill_gate_.Release(leg.gate_tokens);
  leg.gate_tokens = 0;
  MaybeEndLeg();
}

void GenerateCall::Abandon() {
  Leg::Prefill& prefill = leg_->prefill;
  prefill.abandoned = true;
  if (prefill_context_ != nullptr) prefill_context_->TryCancel();
  Wake(prefill_sleep_);
}

void GenerateCall::CancelLeg() {
  const Leg& leg = *leg_;
  v1::CancelRequest cancel;
  cancel.set_ticket_id(leg.ticket.ticket_id());
  cancel.set_request_id(leg.request_id);
  SendCancel<v1::Decode>(ChannelTo(leg.decode), cancel);
  if (!leg.local && leg.prefill.worker.has_value() && !leg.prefill.status.ok()) {
    SendCancel<v1::Prefill>(ChannelTo(*leg.prefill.worker), cancel);
  }
}

void GenerateCall::WriteFinal(v1::GenerateFinal final) {
  const absl::Time now = absl::Now();
  final.set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
  final.set_cached_prompt_tokens(
      std::clamp<int32_t>(cached_prompt_tokens_, 0, static_cast<int32_t>(prompt_.size())));
  v1::Timings* t = final.mutable_timings();
  t->set_queued(absl::ToDoubleSeconds(placed_at_.value_or(now) - received_));
  t->set_prefill(prefill_s_);
  t->set_kv_transfer(kv_transfer_s_);
  if (first_delta_at_.has_value()) {
    t->set_first_token(absl::ToDoubleSeconds(*first_delta_at_ - received_));
    t->set_decode(absl::ToDoubleSeconds(last_delta_at_ - *first_delta_at_));
  }
  t->set_total(absl::ToDoubleSeconds(now - received_));
  final.set_prefill_worker(prefill_worker_);
  final.set_decode_worker(decode_worker_);
  final.set_prefill_location(location_);
  final.set_request_id(client_request_id_.empty() ? request_id_ : client_request_id_);
  final.set_prefill_retries(prefill_retries_);
  if (metrics_ != nullptr) metrics_->CountSuccess(final);
  out_.Clear();
  *out_.mutable_final() = std::move(final);
  writing_final_ = true;
  reactor_->StartWrite(&out_);
}

void GenerateCall::Finish(grpc::Status status) {
  finished_ = true;
  SetPhase(Phase::kDone);
  if (metrics_ != nullptr) metrics_->CountRequest(status);
  GenerateReactor* reactor = reactor_;
  reactor_ = nullptr;
  reactor->Finish(std::move(status));
}

RequestCoordinator::RequestCoordinator(const RouterOptions& options, const RouterModel& model,
                                       WorkerRegistry& registry, Placement& placement,
                                       WorkerChannels& channels, RouterMetrics* metrics)
    : options_(options),
      model_(model),
      registry_(registry),
      placement_(placement),
      channels_(channels),
      metrics_(metrics),
      id_prefix_(NewIdPrefix()),
      prefill_gate_(options.prefill_queue_tokens,
                    [&registry] { return ServingPrefillWorkers(registry.Snapshot()); }) {}

std::string RequestCoordinator::NewRequestId() {
  return Cat(id_prefix_, "-", next_request_.fetch_add(1, std::memory_order_relaxed));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* RequestCoordinator::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
    ValidatedRequest validated, absl::Time received, std::function<void()> on_done) {
  auto* reactor = new GenerateReactor(std::move(on_done));
  auto call = std::make_shared<GenerateCall>(*this, context, reactor, request, std::move(validated),
                                             received);
  reactor->Attach(call);
  call->Post([call = call.get()] { call->Start(); });
  return reactor;
}

}  // namespace tandem::router
