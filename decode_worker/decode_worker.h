// The decode worker's services (docs/SERVING.md): reservations with deadlines, the token
// stream, cancellation, and the decode end of the KV channel. The engine runs on its own
// thread (EngineLoop); these handlers only validate, enqueue and wait. The token stream is
// asynchronous (gRPC's callback API): an open stream holds no thread.
#ifndef TANDEM_DECODE_WORKER_DECODE_WORKER_H_
#define TANDEM_DECODE_WORKER_DECODE_WORKER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"
#include "kvtransfer/kv_layout.h"
#include "service/engine_loop.h"
#include "service/worker_metrics.h"
#include "service/worker_process.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem {

struct DecodeWorkerOptions {
  std::string listen_host;  // where KV data connections are accepted
  std::string advertise_host;
  absl::Duration transfer_timeout = absl::Seconds(30);  // per layer and per reply
  std::string model_name;  // metrics' model_name label (WorkerFlags::model_name)
};

class DecodeWorker final : public v1::Decode::WithCallbackMethod_Stream<v1::Decode::Service>,
                           public v1::KvChannel::Service,
                           public WorkerService {
 public:
  DecodeWorker(std::unique_ptr<Engine> engine, const DecodeWorkerOptions& options);
  ~DecodeWorker() override;

  // host:port the router and prefill workers dial (known once the server is bound).
  void SetAddress(const std::string& address) override;
  void RegisterServices(grpc::ServerBuilder& builder) override {
    builder.RegisterService(
        static_cast<v1::Decode::WithCallbackMethod_Stream<v1::Decode::Service>*>(this));
    builder.RegisterService(static_cast<v1::KvChannel::Service*>(this));
  }
  void Start() override;
  void Stop() override;

  const KvLayout& layout() const override { return layout_; }
  const Engine& engine() const override { return loop_->engine_for_constants(); }
  v1::WorkerLoad CurrentLoad() const override;
  // Requests held (reserved, receiving, running or not yet streamed).
  int num_requests() const override;
  const metrics::Registry* metrics() const override { return &metrics_->registry(); }

  grpc::Status Reserve(grpc::ServerContext* context, const v1::ReserveRequest* request,
                       v1::ReserveResponse* response) override;
  grpc::Status Renew(grpc::ServerContext* context, const v1::RenewRequest* request,
                     v1::RenewResponse* response) override;
  grpc::ServerWriteReactor<v1::DecodeEvent>* Stream(
      grpc::CallbackServerContext* context, const v1::DecodeStreamRequest* request) override;
  grpc::Status Cancel(grpc::ServerContext* context, const v1::CancelRequest* request,
                      v1::CancelResponse* response) override;
  grpc::Status Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                    v1::WorkerLoad* response) override;
  grpc::Status Transfer(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::KvToPrefill, v1::KvFromPrefill>* stream) override;

 private:
  class StreamReactor;

  // One request on this worker, from Reserve to the end of its Stream.
  struct Ticket {
    enum class State {
      kReserved,   // remote: blocks reserved, waiting for the KV
      kReceiving,  // remote: a KV transfer writes into the blocks
      kRunning,    // in the engine's batch (local from Reserve on; remote once admitted)
      kDone,       // final event queued (or failed)
    };
    uint64_t id = 0;
    std::string request_id;
    RequestId engine_id = 0;
    bool local = false;
    State state = State::kReserved;
    std::vector<int32_t> blocks;  // remote: where the prompt's KV goes
    int32_t num_prompt_tokens = 0;
    absl::Time reserved_at;
    absl::Duration lease;  // Reserve's deadline_s; Renew starts it again
    absl::Time deadline;   // the Stream must open (and the KV begin to arrive) by then
    bool engine_deadline_stale = false;  // renewed: OnTick moves the engine's deadline
    bool stream_open = false;         // a Stream was opened (one per ticket)
    StreamReactor* stream = nullptr;  // the open Stream, until it finishes
    bool cancelled = false;
    int32_t num_generated = 0;
    absl::Time first_token_at;
    std::deque<v1::DecodeEvent> events;  // waiting for the Stream
    absl::Status error;                  // ends the Stream when not OK
  };

  // The engine loop's handlers (engine thread): outputs become events, expired tickets are
  // freed; the streams that have news are pumped by the pumper thread.
  void OnOutputs(Engine& engine, std::vector<RequestOutput>& outputs) ABSL_LOCKS_EXCLUDED(mu_);
  void OnTick(Engine& engine) ABSL_LOCKS_EXCLUDED(mu_);
  // Admits a received ticket into the engine's batch (engine thread).
  absl::Status Admit(Engine& engine, Ticket* ticket, int32_t first_token) ABSL_LOCKS_EXCLUDED(mu_);
  // Frees what the ticket holds in the engine (engine thread) and marks it done.
  void ReleaseTicket(Engine& engine, Ticket& ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Cancels from a gRPC thread: at once, or (while a transfer writes its blocks) when the
  // transfer ends.
  void CancelTicket(uint64_t ticket_id);
  // A transfer into `ticket_id` ended without admitting it: back to kReserved for a retry
  // by another prefill worker, or released if it was cancelled meanwhile.
  void AbandonTransfer(uint64_t ticket_id);
  std::shared_ptr<Ticket> FindTicket(uint64_t ticket_id) const;
  // What the router and prefill workers see of a ticket (Reserve, Renew).
  static void TicketToProto(const Ticket& ticket, const std::string& address, v1::Ticket* out);
  // Forgets a finished ticket once no Stream is open on it.
  void MaybeErase(Ticket& ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The ticket's events or state changed: its Stream, if open, writes on (PumpStreams).
  void MarkForStream(const Ticket& ticket) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the ticket's Stream on when it is not writing: writes the next event, or
  // finishes (the ticket done, or the client gone). StartWrite and Finish run unlocked.
  void PumpStream(const std::shared_ptr<Ticket>& ticket) ABSL_LOCKS_EXCLUDED(mu_);
  // The pumper thread: pumps the streams MarkForStream names, so that gRPC's writes stay
  // off the engine thread (which only queues events, as it did for blocked handlers).
  void PumpStreams() ABSL_LOCKS_EXCLUDED(mu_);

  const DecodeWorkerOptions options_;
  ModelRunner* runner_ = nullptr;  // for WriteKvLayer from transfer threads (disjoint blocks)
  std::string device_uuid_;        // the runner's GPU (DeviceUuid); empty on the CPU
  KvLayout layout_;
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<WorkerMetrics> metrics_;

  mutable absl::Mutex mu_;
  std::string address_ ABSL_GUARDED_BY(mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Ticket>> tickets_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<RequestId, std::shared_ptr<Ticket>> by_engine_id_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> to_pump_ ABSL_GUARDED_BY(mu_);  // tickets whose Stream has news
  bool pumper_stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread pumper_;
};

}  // namespace tandem

#endif  // TANDEM_DECODE_WORKER_DECODE_WORKER_H_
