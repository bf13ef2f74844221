// The prefill worker's service (docs/SERVING.md): prompts are batched by the engine under
// its token budget (chunked, with prefix-cache reuse), each finished layer of a request's
// KV is streamed to its decode worker while the next layer computes, and the request's
// blocks are freed once the decode worker acknowledges them (or the transfer fails).
#ifndef TANDEM_PREFILL_WORKER_PREFILL_WORKER_H_
#define TANDEM_PREFILL_WORKER_PREFILL_WORKER_H_

#include <cstdint>
#include <functional>
#include <memory>
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
#include "prefill_worker/kv_channel_client.h"
#include "service/engine_loop.h"
#include "service/worker_metrics.h"
#include "service/worker_process.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem {

struct PrefillWorkerOptions {
  absl::Duration transfer_timeout = absl::Seconds(30);  // per layer and per reply
  absl::Duration channel_open_timeout = absl::Seconds(10);
  std::string model_name;  // metrics' model_name label (WorkerFlags::model_name)
  // How KV channels reach decode workers (mutual TLS with --tls-*); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> kv_channel_credentials = nullptr;
  // The data path of the KV channels it opens (the decode worker must offer it).
  TransportKind kv_transport = TransportKind::kTcp;
};

class PrefillWorker final : public v1::Prefill::Service,
                            public WorkerService {
 public:
  PrefillWorker(std::unique_ptr<Engine> engine, const PrefillWorkerOptions& options);
  ~PrefillWorker() override;

  void RegisterServices(grpc::ServerBuilder& builder) override {
    builder.RegisterService(this);
  }
  void Start() override;
  void Stop() override;

  const KvLayout& layout() const override { return layout_; }
  const Engine& engine() const override { return loop_->engine_for_constants(); }
  v1::WorkerLoad CurrentLoad() const override;
  int num_requests() const override;
  const metrics::Registry* metrics() const override { return &metrics_->registry(); }

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       v1::PrefillResponse* response) override;
  grpc::Status Cancel(grpc::ServerContext* context, const v1::CancelRequest* request,
                      v1::CancelResponse* response) override;
  grpc::Status Load(grpc::ServerContext* context, const v1::LoadRequest* request,
                    v1::WorkerLoad* response) override;

 private:
  // One prompt being prefilled; the engine thread fills in its progress.
  struct Job {
    std::string request_id;
    RequestId engine_id = 0;
    int32_t num_prompt_tokens = 0;
    std::vector<int32_t> blocks;  // set with layer 0
    int layers_ready = 0;         // layers [0, layers_ready) are in the cache
    bool finished = false;        // the first token is sampled (or the request ended)
    int32_t first_token = -1;
    int32_t cached_tokens = 0;
    FinishReason finish_reason = FinishReason::kNone;
    absl::Time prefill_done;
    bool cancelled = false;
    std::string cancel_reason;  // why, when not the caller's own cancel
    // The decode reservation this prompt's KV goes to, kept alive by Renew calls until the
    // transfer begins (RenewLeases).
    uint64_t ticket_id = 0;
    std::string decode_address;
    absl::Duration lease;
    absl::Time deadline;   // of the reservation, by this worker's clock; then the transfer's
    bool renewing = true;  // until Begin is sent
    absl::Time renew_at;
  };

  void OnKvLayer(int layer, absl::Span<const Engine::KvLayerReady> ready);
  // The renewer thread: renews the reservation of each prompt it holds once a third of the
  // lease has run (two thirds before it would lapse), one Decode.Renew per decode worker; a
  // ticket the decode worker reports lost cancels its prefill.
  void RenewLeases();
  void RenewAt(const std::string& decode_address, const std::vector<std::shared_ptr<Job>>& jobs,
               absl::Time deadline);
  void OnOutputs(Engine& engine, std::vector<RequestOutput>& outputs);
  // Waits until `ready` holds, the job is cancelled, the call is cancelled, `deadline` or
  // the job's own deadline (its reservation's, renewed).
  absl::Status WaitFor(Job& job, grpc::ServerContext* context, absl::Time deadline,
                       const std::function<bool()>& ready) ABSL_LOCKS_EXCLUDED(mu_);
  // Streams the job's KV over the channel to its decode worker (layers as they become
  // ready) and ends with the first token.
  absl::Status Transfer(Job& job, const v1::Ticket& ticket, grpc::ServerContext* context,
                        absl::Time deadline);
  struct ChannelSlot {
    absl::Mutex transfer_mu;  // held for a whole transfer: one at a time per channel
    std::unique_ptr<KvChannelClient> channel ABSL_GUARDED_BY(transfer_mu);
  };
  // The slot of the channel to `address` (created empty on first use).
  std::shared_ptr<ChannelSlot> Slot(const std::string& address);

  const PrefillWorkerOptions options_;
  ModelRunner* runner_ = nullptr;  // ReadKvLayer from handler threads (held blocks only)
  KvLayout layout_;
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<WorkerMetrics> metrics_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<RequestId, std::shared_ptr<Job>> by_engine_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Job>> by_request_id_ ABSL_GUARDED_BY(mu_);
  int64_t queued_prompt_tokens_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex channels_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<ChannelSlot>> channels_
      ABSL_GUARDED_BY(channels_mu_);

  // The renewer (RenewLeases) and the Decode stubs it calls.
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::CondVar renew_changed_;  // with mu_: a new job, or stopping
  absl::flat_hash_map<std::string, std::unique_ptr<v1::Decode::Stub>> decode_stubs_;
  std::thread renewer_;
};

}  // namespace tandem

#endif  // TANDEM_PREFILL_WORKER_PREFILL_WORKER_H_
