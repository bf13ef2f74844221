#include "router/request_coordinator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/strings.h"
#include "service/grpc_status.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem::router {
namespace {

constexpr absl::Duration kReserveTimeout = absl::Seconds(10);
constexpr absl::Duration kCancelTimeout = absl::Seconds(1);
constexpr absl::Duration kBackoffMin = absl::Milliseconds(10);
constexpr absl::Duration kBackoffMax = absl::Milliseconds(200);
constexpr absl::Duration kCancelPoll = absl::Milliseconds(20);
constexpr absl::Duration kPrefillRetryPause = absl::Milliseconds(20);
// How long a prefill that failed for good waits for D's first token before the router
// gives up on the leg (see RunPrefill).
constexpr absl::Duration kTokenGrace = absl::Milliseconds(200);
// How many times a request is placed again after its decode reservation expired before
// its KV arrived (no prefill worker renewed it: stopped, unreachable, or the call to it slow)
// before it fails UNAVAILABLE.
constexpr int kMaxExpiredReservations = 3;

// A client context that inherits the client's deadline and cancellation: when the client
// leaves, gRPC cancels every call the router made on its behalf.
std::unique_ptr<grpc::ClientContext> ChildContext(const grpc::ServerContext& parent,
                                                  absl::Duration timeout) {
  std::unique_ptr<grpc::ClientContext> context = grpc::ClientContext::FromServerContext(parent);
  if (timeout != absl::InfiniteDuration()) SetDeadline(*context, timeout);
  return context;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string NewIdPrefix() {
  std::random_device rd;
  return absl::StrFormat("rt-%08x", static_cast<uint32_t>(rd()));
}

grpc::Status CancelledStatus() {
  return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
}

}  // namespace

// One Generate call, from placement to the final message. Handler thread only, except
// RunPrefill, which runs on the call's prefill thread.
class GenerateCall {
 public:
  GenerateCall(RequestCoordinator& rc, grpc::ServerContext& context,
               const v1::GenerateRequest& request, ValidatedRequest validated, absl::Time received,
               grpc::ServerWriterInterface<v1::GenerateResponse>& writer)
      : rc_(rc),
        context_(context),
        writer_(writer),
        received_(received),
        mode_(ResolveMode(rc.options_.mode, request.mode())),
        request_id_(rc.NewRequestId()),
        client_request_id_(request.request_id()),
        prompt_(std::move(validated.prompt_tokens)),
        sampling_(std::move(validated.sampling)) {}

  ~GenerateCall() { SetPhase(Phase::kDone); }

  grpc::Status Run();

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
    int64_t gate_tokens = 0;  // held in the PrefillGate until the prefill call ends
  };

  // What the prefill thread reports. The handler reads the unguarded fields after join().
  struct PrefillState {
    absl::Mutex mu;
    grpc::ClientContext* active ABSL_GUARDED_BY(mu) = nullptr;
    bool abandoned ABSL_GUARDED_BY(mu) = false;
    // Set by the handler at the leg's first token: the KV evidently reached D, whatever
    // the Prefill call says (P may fail after D acknowledged the KV).
    std::atomic<bool> tokens_flowing{false};
    absl::Status status = absl::UnknownError("the prefill did not run");
    v1::PrefillResponse response;
    std::optional<WorkerView> worker;  // the worker of the latest attempt
    int retries = 0;
    bool failed_for_good = false;
  };

  enum class LegEnd { kFinished, kClientGone, kDecodeFailed, kReservationExpired, kError };
  struct LegResult {
    LegEnd end;
    absl::Status status;
  };

  absl::Status Reserve(Leg& leg);
  LegResult RunLeg(Leg& leg);
  void RunPrefill(const Leg& leg, PrefillState& state, grpc::ClientContext& stream_context);
  static void Abandon(PrefillState& state);
  void CancelLeg(const Leg& leg, const PrefillState& prefill);
  // Completes `final` (the decode worker's, or one the router made) and writes it.
  bool WriteFinal(v1::GenerateFinal final);
  // False when the client left before `duration` passed.
  bool SleepUnlessCancelled(absl::Duration duration);
  bool HavePrefillWorker() const;
  int ServingPrefillWorkers() const;
  // The client cancelled or its deadline passed. NOTE: a child call inherits the client's
  // deadline and may fail with DEADLINE_EXCEEDED a moment before gRPC marks the client's
  // call cancelled, so the deadline is checked too.
  bool ClientGone() const {
    return context_.IsCancelled() || std::chrono::system_clock::now() >= context_.deadline();
  }

  RequestCoordinator& rc_;
  grpc::ServerContext& context_;
  grpc::ServerWriterInterface<v1::GenerateResponse>& writer_;
  const absl::Time received_;
  const RouterMode mode_;
  const std::string request_id_;
  const std::string client_request_id_;
  const std::vector<int32_t> prompt_;
  const v1::SamplingParams sampling_;

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

void GenerateCall::SetPhase(Phase phase) {
  if (metrics_ == nullptr || phase == phase_) return;
  if (phase_ == Phase::kWaiting) metrics_->waiting.Decrement();
  if (phase_ == Phase::kRunning) metrics_->running.Decrement();
  if (phase == Phase::kWaiting) metrics_->waiting.Increment();
  if (phase == Phase::kRunning) metrics_->running.Increment();
  phase_ = phase;
}

grpc::Status GenerateCall::Run() {
  const int32_t max_tokens = sampling_.max_tokens();
  std::string failure;  // the latest decode worker failure
  for (int index = 0;; ++index) {
    Leg leg;
    leg.index = index;
    leg.request_id = index == 0 ? request_id_ : Cat(request_id_, "-r", index);
    leg.prompt = prompt_;
    leg.prompt.insert(leg.prompt.end(), generated_.begin(), generated_.end());
    leg.sampling = sampling_;
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
        return WriteFinal(std::move(final)) ? grpc::Status::OK : CancelledStatus();
      }
    }
    leg.sampling.set_max_tokens(remaining);

    const bool have_prefill = HavePrefillWorker();
    switch (mode_) {
      case RouterMode::kDisaggregated:
        if (!have_prefill) {
          const std::string message = "no prefill worker registered (mode disaggregated)";
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              failure.empty() ? message : Cat(failure, "; ", message));
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
    if (!leg.local) {
      // Queue here, holding nothing, until the prefill workers have room: a reservation
      // made now will not expire behind a long prefill queue.
      const int64_t tokens = static_cast<int64_t>(leg.prompt.size());
      const bool admitted = rc_.prefill_gate_.Acquire(
          tokens, [this] { return ServingPrefillWorkers(); },
          absl::Now() + rc_.options_.queue_timeout, [this] { return ClientGone(); });
      if (!admitted) {
        if (ClientGone()) return CancelledStatus();
        return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            Cat("the prefill workers stayed full for ",
                                absl::FormatDuration(rc_.options_.queue_timeout), " (",
                                rc_.prefill_gate_.in_flight(), " prompt tokens in flight)"));
      }
      leg.gate_tokens = tokens;
    }
    absl::Status reserved = Reserve(leg);
    if (!reserved.ok()) {
      rc_.prefill_gate_.Release(leg.gate_tokens);
      if (ClientGone()) return CancelledStatus();
      if (index > 0) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            Cat(failure, "; no other decode worker could resume the request: ",
                                reserved.message()));
      }
      return ToGrpcStatus(reserved);
    }
    SetPhase(Phase::kRunning);
    if (!placed_at_.has_value()) {
      placed_at_ = absl::Now();
      if (metrics_ != nullptr) {
        metrics_->queue_time.Observe(absl::ToDoubleSeconds(*placed_at_ - received_));
      }
    }

    const LegResult result = RunLeg(leg);
    rc_.registry_.Release(leg.decode.id, leg.decode_charge);
    switch (result.end) {
      case LegEnd::kFinished:
        return grpc::Status::OK;
      case LegEnd::kClientGone:
        return CancelledStatus();
      case LegEnd::kError:
        return ToGrpcStatus(result.status);
      case LegEnd::kReservationExpired:
        // D is healthy: it freed the blocks because nobody renewed the lease. The request
        // goes back through the gate and is placed again (any D, this one included).
        if (++expired_reservations_ > kMaxExpiredReservations) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              Cat(result.status.message(), " (", kMaxExpiredReservations + 1,
                                  " times: no prefill worker kept the reservation alive)"));
        }
        LOG(WARNING) << request_id_ << ": " << result.status.message()
                     << "; placing the request again";
        break;
      case LegEnd::kDecodeFailed:
        failure = Cat("decode worker ", leg.decode.id, " (", leg.decode.address,
                      ") failed: ", result.status.message());
        LOG(WARNING) << request_id_ << ": " << failure << "; resuming after " << generated_.size()
                     << " generated tokens";
        failed_decode_.insert(leg.decode.id);
        if (metrics_ != nullptr) metrics_->decode_failovers.Increment();
        break;
    }
  }
}

bool GenerateCall::HavePrefillWorker() const { return ServingPrefillWorkers() > 0; }

int GenerateCall::ServingPrefillWorkers() const {
  int n = 0;
  for (const WorkerView& w : rc_.registry_.Snapshot()) {
    if (w.role == v1::WORKER_ROLE_PREFILL && !w.draining) ++n;
  }
  return n;
}

absl::Status GenerateCall::Reserve(Leg& leg) {
  const RouterOptions& options = rc_.options_;
  const absl::Time deadline = absl::Now() + options.queue_timeout;
  absl::Duration backoff = kBackoffMin;
  absl::flat_hash_set<std::string> refused;  // decode workers that refused the request itself
  absl::Status last_refusal;
  absl::Status last_error;

  v1::ReserveRequest request;
  request.set_request_id(leg.request_id);
  request.mutable_prompt_token_ids()->Assign(leg.prompt.begin(), leg.prompt.end());
  *request.mutable_sampling() = leg.sampling;
  request.set_deadline_s(absl::ToDoubleSeconds(options.reservation_deadline));
  request.set_prefill_locally(leg.local);

  while (true) {
    if (ClientGone()) return absl::CancelledError("the client cancelled the request");
    const std::vector<WorkerView> snapshot = rc_.registry_.Snapshot();
    absl::flat_hash_set<std::string> exclude = failed_decode_;
    exclude.insert(refused.begin(), refused.end());
    const std::vector<WorkerView> ranked = rc_.placement_.RankDecode(snapshot, exclude);
    if (ranked.empty()) {
      if (!last_refusal.ok()) return last_refusal;
      int draining = 0;
      for (const WorkerView& w : snapshot) {
        if (w.role == v1::WORKER_ROLE_DECODE && w.draining) ++draining;
      }
      if (draining > 0) {
        return absl::UnavailableError(Cat("no decode worker available (", draining, " draining)"));
      }
      return absl::UnavailableError("no decode worker registered");
    }

    bool busy = false;
    for (const WorkerView& d : ranked) {
      const int64_t blocks =
          CeilDiv(static_cast<int64_t>(leg.prompt.size()), std::max(1, d.block_size));
      const WorkerRegistry::ChargeId charge = rc_.registry_.Charge(d.id, 0, blocks);
      std::unique_ptr<grpc::ClientContext> call = ChildContext(context_, kReserveTimeout);
      v1::ReserveResponse response;
      const grpc::Status s =
          v1::Decode::NewStub(rc_.channels_.Get(d))->Reserve(call.get(), request, &response);
      if (s.ok()) {
        leg.decode = d;
        leg.decode_charge = charge;
        leg.ticket = response.ticket();
        if (leg.ticket.decode_address().empty()) leg.ticket.set_decode_address(d.address);
        if (leg.ticket.request_id().empty()) leg.ticket.set_request_id(leg.request_id);
        return absl::OkStatus();
      }
      rc_.registry_.Release(d.id, charge);
      if (ClientGone()) return absl::CancelledError("the client cancelled the request");
      switch (s.error_code()) {
        case grpc::StatusCode::RESOURCE_EXHAUSTED:
          busy = true;
          break;
        case grpc::StatusCode::INVALID_ARGUMENT:
        case grpc::StatusCode::FAILED_PRECONDITION:
        case grpc::StatusCode::OUT_OF_RANGE:
          refused.insert(d.id);
          last_refusal = FromGrpcStatus(s, Cat("decode worker ", d.id));
          break;
        default:
          last_error = FromGrpcStatus(s, Cat("decode worker ", d.id, " Reserve"));
          LOG(WARNING) << leg.request_id << ": " << last_error;
          break;
      }
    }

    const absl::Time now = absl::Now();
    if (now >= deadline) {
      if (!busy && !last_error.ok()) return absl::UnavailableError(last_error.message());
      return absl::ResourceExhaustedError(Cat("no decode worker had room for ", leg.prompt.size(),
                                              " prompt tokens within ",
                                              absl::FormatDuration(options.queue_timeout)));
    }
    if (!SleepUnlessCancelled(std::min(backoff, deadline - now))) {
      return absl::CancelledError("the client cancelled the request");
    }
    backoff = std::min(backoff * 2, kBackoffMax);
  }
}

GenerateCall::LegResult GenerateCall::RunLeg(Leg& leg) {
  std::unique_ptr<v1::Decode::Stub> decode = v1::Decode::NewStub(rc_.channels_.Get(leg.decode));
  std::unique_ptr<grpc::ClientContext> stream_context =
      ChildContext(context_, absl::InfiniteDuration());
  v1::DecodeStreamRequest stream_request;
  stream_request.set_ticket_id(leg.ticket.ticket_id());
  // Opened before the prefill starts, so no token is missed.
  std::unique_ptr<grpc::ClientReader<v1::DecodeEvent>> reader =
      decode->Stream(stream_context.get(), stream_request);

  PrefillState prefill;
  std::thread prefill_thread;
  if (metrics_ != nullptr) {
    (leg.local ? metrics_->prefill_local : metrics_->prefill_remote).Increment();
  }
  if (!leg.local) {
    prefill_thread = std::thread([&] {
      RunPrefill(leg, prefill, *stream_context);
      rc_.prefill_gate_.Release(leg.gate_tokens);
    });
  }

  const size_t generated_before = generated_.size();
  bool client_gone = false;
  std::optional<v1::GenerateFinal> final;
  v1::DecodeEvent event;
  while (reader->Read(&event)) {
    if (final.has_value()) continue;  // nothing follows the final message
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
      prefill.tokens_flowing.store(true);
      generated_.insert(generated_.end(), delta.token_ids().begin(), delta.token_ids().end());
      v1::GenerateResponse out;
      *out.mutable_delta() = delta;
      if (!writer_.Write(out)) {
        client_gone = true;
        break;
      }
    }
    if (event.has_final()) final = event.final();
  }
  if (client_gone) stream_context->TryCancel();
  const grpc::Status stream_status = reader->Finish();
  if (prefill_thread.joinable()) {
    if (!final.has_value() || client_gone) Abandon(prefill);
    prefill_thread.join();
  }
  prefill_retries_ += prefill.retries;
  if (metrics_ != nullptr && prefill.retries > 0) {
    metrics_->prefill_retries.Increment(prefill.retries);
  }

  if (client_gone || ClientGone()) {
    CancelLeg(leg, prefill);
    return {LegEnd::kClientGone, absl::CancelledError("the client cancelled the request")};
  }
  // D's reservation expired before the KV arrived: no prefill worker renewed the lease (one
  // that stopped or cannot reach D, or a lease shorter than the router-to-P hand-off), not
  // a failed D.
  if (!final.has_value() && !leg.local && generated_.size() == generated_before &&
      stream_status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return {LegEnd::kReservationExpired, FromGrpcStatus(stream_status)};
  }
  if (!leg.local && prefill.failed_for_good) {
    // The router cancelled D's ticket itself; unless D had failed on its own first, the
    // prefill's error is the request's.
    if (!final.has_value() && !stream_status.ok() &&
        stream_status.error_code() != grpc::StatusCode::CANCELLED) {
      return {LegEnd::kDecodeFailed, FromGrpcStatus(stream_status)};
    }
    return {LegEnd::kError, prefill.status};
  }
  if (final.has_value()) {
    decode_worker_ = leg.decode.id;
    if (leg.local) {
      prefill_worker_.clear();
      prefill_s_ += final->timings().prefill();
      if (leg.index == 0) cached_prompt_tokens_ = final->cached_prompt_tokens();
    } else {
      prefill_worker_ = prefill.worker.has_value() ? prefill.worker->id : "";
      if (prefill.status.ok()) {
        prefill_s_ += prefill.response.prefill_s();
        kv_transfer_s_ += prefill.response.kv_transfer_s();
        if (metrics_ != nullptr) metrics_->kv_transfer.Observe(prefill.response.kv_transfer_s());
        if (leg.index == 0) cached_prompt_tokens_ = prefill.response.cached_prompt_tokens();
      }
    }
    location_ = final->prefill_location();
    if (location_ == v1::PREFILL_LOCATION_UNSPECIFIED) {
      location_ = leg.local ? v1::PREFILL_LOCATION_LOCAL : v1::PREFILL_LOCATION_REMOTE;
    }
    final->set_completion_tokens(static_cast<int32_t>(generated_before) +
                                 final->completion_tokens());
    if (!WriteFinal(std::move(*final))) {
      return {LegEnd::kClientGone, absl::CancelledError("the client left")};
    }
    return {LegEnd::kFinished, absl::OkStatus()};
  }
  // A decode worker that failed by itself (not cancelled by the router) is replaced.
  if (!stream_status.ok() && stream_status.error_code() != grpc::StatusCode::CANCELLED) {
    return {LegEnd::kDecodeFailed, FromGrpcStatus(stream_status)};
  }
  if (stream_status.ok()) {
    return {LegEnd::kDecodeFailed,
            absl::InternalError("the token stream ended without a final message")};
  }
  return {LegEnd::kError,
          FromGrpcStatus(stream_status, Cat("decode worker ", leg.decode.id, " stream"))};
}

void GenerateCall::Abandon(PrefillState& state) {
  absl::MutexLock lock(&state.mu);
  state.abandoned = true;
  if (state.active != nullptr) state.active->TryCancel();
}

void GenerateCall::RunPrefill(const Leg& leg, PrefillState& state,
                              grpc::ClientContext& stream_context) {
  const RouterOptions& options = rc_.options_;
  v1::PrefillRequest request;
  request.set_request_id(leg.request_id);
  request.mutable_prompt_token_ids()->Assign(leg.prompt.begin(), leg.prompt.end());
  *request.mutable_sampling() = leg.sampling;
  *request.mutable_ticket() = leg.ticket;

  absl::flat_hash_set<std::string> tried;
  const int tries = std::max(1, options.prefill_tries);
  for (int attempt = 0; attempt < tries; ++attempt) {
    const std::vector<WorkerView> snapshot = rc_.registry_.Snapshot();
    std::optional<WorkerView> p =
        rc_.placement_.ChoosePrefill(snapshot, leg.prompt, tried, leg.decode.transports,
                                     leg.decode.device_uuid);
    // Every worker failed once: with no other, the same one gets the next try.
    if (!p.has_value() && !tried.empty())
      p = rc_.placement_.ChoosePrefill(snapshot, leg.prompt, {}, leg.decode.transports,
                                       leg.decode.device_uuid);
    if (!p.has_value()) {
      const bool any = std::any_of(snapshot.begin(), snapshot.end(), [](const WorkerView& w) {
        return w.role == v1::WORKER_ROLE_PREFILL && !w.draining;
      });
      state.status = absl::UnavailableError(
          any ? Cat("no prefill worker opens a KV transport that ", leg.decode.id, " accepts (",
                    absl::StrJoin(leg.decode.transports, ", "),
                    "; nccl only from another GPU; mode ",
                    RouterModeName(mode_), ")")
              : Cat("no prefill worker registered (mode ", RouterModeName(mode_), ")"));
      break;
    }
    // The prefill worker keeps D's reservation alive while it holds the prompt: the call is
    // bounded by its own timeout (and the client's deadline), not by the reservation's.
    std::unique_ptr<grpc::ClientContext> call = ChildContext(context_, options.prefill_timeout);
    {
      absl::MutexLock lock(&state.mu);
      if (state.abandoned) return;
      state.active = call.get();
    }
    state.worker = p;
    state.retries = attempt;
    const WorkerRegistry::ChargeId charge =
        rc_.registry_.Charge(p->id, static_cast<int64_t>(leg.prompt.size()), 0);
    v1::PrefillResponse response;
    const grpc::Status s =
        v1::Prefill::NewStub(rc_.channels_.Get(*p))->Prefill(call.get(), request, &response);
    rc_.registry_.Release(p->id, charge);
    bool abandoned;
    {
      absl::MutexLock lock(&state.mu);
      state.active = nullptr;
      abandoned = state.abandoned;
    }
    if (s.ok()) {
      state.status = absl::OkStatus();
      state.response = std::move(response);
      return;
    }
    state.status = FromGrpcStatus(s, Cat("prefill worker ", p->id));
    if (abandoned) return;
    if (state.tokens_flowing.load()) {
      state.status = absl::OkStatus();  // D has the KV: the call failed after the hand-off
      return;
    }
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
        s.error_code() == grpc::StatusCode::CANCELLED) {
      break;
    }
    tried.insert(p->id);
    if (attempt + 1 < tries) {
      LOG(WARNING) << leg.request_id << ": " << state.status << "; retrying the prefill ("
                   << attempt + 2 << " of " << tries << ")";
      absl::SleepFor(kPrefillRetryPause);
    }
  }
  // NOTE: P returns only after D acknowledged the KV, so a P that failed right after the
  // acknowledgement looks like a failed prefill while D is about to stream. Give D a moment
  // to show its first token before killing a request that may be running fine.
  const absl::Time grace_end = absl::Now() + kTokenGrace;
  while (!state.tokens_flowing.load() && absl::Now() < grace_end) {
    {
      absl::MutexLock lock(&state.mu);
      if (state.abandoned) return;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  {
    absl::MutexLock lock(&state.mu);
    if (state.abandoned) return;
  }
  if (state.tokens_flowing.load()) {
    state.status = absl::OkStatus();
    return;
  }
  state.failed_for_good = true;
  LOG(WARNING) << leg.request_id << ": prefill failed: " << state.status << "; cancelling ticket "
               << leg.ticket.ticket_id() << " on " << leg.decode.id;
  // Free the reservation now rather than at its deadline, and stop the handler thread
  // waiting for tokens that will not come.
  grpc::ClientContext cancel_context;
  SetDeadline(cancel_context, kCancelTimeout);
  v1::CancelRequest cancel;
  cancel.set_ticket_id(leg.ticket.ticket_id());
  cancel.set_request_id(leg.request_id);
  v1::CancelResponse ignored;
  (void)v1::Decode::NewStub(rc_.channels_.Get(leg.decode))
      ->Cancel(&cancel_context, cancel, &ignored);
  stream_context.TryCancel();
}

void GenerateCall::CancelLeg(const Leg& leg, const PrefillState& prefill) {
  v1::CancelRequest cancel;
  cancel.set_ticket_id(leg.ticket.ticket_id());
  cancel.set_request_id(leg.request_id);
  v1::CancelResponse ignored;
  {
    grpc::ClientContext call;
    SetDeadline(call, kCancelTimeout);
    (void)v1::Decode::NewStub(rc_.channels_.Get(leg.decode))->Cancel(&call, cancel, &ignored);
  }
  if (!leg.local && prefill.worker.has_value() && !prefill.status.ok()) {
    grpc::ClientContext call;
    SetDeadline(call, kCancelTimeout);
    (void)v1::Prefill::NewStub(rc_.channels_.Get(*prefill.worker))->Cancel(&call, cancel, &ignored);
  }
}

bool GenerateCall::WriteFinal(v1::GenerateFinal final) {
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
  v1::GenerateResponse out;
  *out.mutable_final() = std::move(final);
  return writer_.Write(out);
}

bool GenerateCall::SleepUnlessCancelled(absl::Duration duration) {
  const absl::Time end = absl::Now() + duration;
  while (!ClientGone()) {
    const absl::Time now = absl::Now();
    if (now >= end) return true;
    absl::SleepFor(std::min(end - now, kCancelPoll));
  }
  return false;
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
      prefill_gate_(options.prefill_queue_tokens) {}

std::string RequestCoordinator::NewRequestId() {
  return Cat(id_prefix_, "-", next_request_.fetch_add(1, std::memory_order_relaxed));
}

grpc::Status RequestCoordinator::Generate(
    grpc::ServerContext& context, const v1::GenerateRequest& request, ValidatedRequest validated,
    absl::Time received, grpc::ServerWriterInterface<v1::GenerateResponse>& writer) {
  grpc::Status status;
  {
    GenerateCall call(*this, context, request, std::move(validated), received, writer);
    status = call.Run();
  }
  if (metrics_ != nullptr) metrics_->CountRequest(status);
  return status;
}

}  // namespace tandem::router
