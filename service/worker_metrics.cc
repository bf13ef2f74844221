#include "service/worker_metrics.h"

#include <utility>
#include <vector>

#include "absl/strings/ascii.h"

namespace tandem {

using metrics::MetricType;
using metrics::Sample;

std::string StatusCodeLabel(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

WorkerMetrics::WorkerMetrics(const WorkerMetricsOptions& options, EngineLoop& loop,
                             std::function<v1::WorkerLoad()> load)
    : registry_(metrics::ConstLabels{{"model_name", options.model_name}, {"role", options.role}}),
      kv_direction_(options.kv_direction),
      transfers_(registry_.AddCounter("tandem:kv_transfers_total",
                                      "KV transfers ended, by outcome.", {"direction", "outcome"})),
      reservations_(registry_.AddCounter("tandem:reservations_total",
                                         "Decode reservations (Reserve calls), by outcome.",
                                         {"outcome"})),
      renewals_(registry_.AddCounter(
          "tandem:reservation_renewals_total",
          "Decode reservation leases renewed by prefill workers, or asked for when gone.",
          {"outcome"})),
      prompt_tokens(registry_
                        .AddCounter("tandem:prompt_tokens_total",
                                    "Prompt tokens of requests prefilled here (prefix-cache "
                                    "hits included).")
                        .Get()),
      generation_tokens(
          registry_.AddCounter("tandem:generation_tokens_total", "Generated tokens streamed.")
              .Get()),
      kv_transfer_bytes(registry_
                            .AddCounter("tandem:kv_transfer_bytes_total",
                                        "KV bytes moved over KV channels.", {"direction"})
                            .WithLabels({options.kv_direction})),
      kv_transfer_seconds(registry_
                              .AddHistogram("tandem:kv_transfer_seconds",
                                            "KV transfer time per request, Begin to the "
                                            "decode worker's acknowledgement.",
                                            metrics::KvTransferBuckets(), {"direction"})
                              .WithLabels({options.kv_direction})) {
  for (const char* outcome : {"ok", "refused", "failed"}) {
    transfers_.WithLabels({kv_direction_, outcome});
  }
  if (options.role == "decode") {
    for (absl::StatusCode code : {absl::StatusCode::kOk, absl::StatusCode::kResourceExhausted}) {
      reservations_.WithLabels({StatusCodeLabel(code)});
    }
  }
  const EngineLoop* engine = &loop;
  registry_.AddCallback(MetricType::kGauge, "tandem:num_requests_running",
                        "Sequences in the engine's running batch.",
                        [load] { return static_cast<double>(load().running_sequences()); });
  registry_.AddCallback(MetricType::kGauge, "tandem:num_requests_waiting",
                        "Requests waiting: queued in the engine, or (decode) reserved and "
                        "waiting for their KV.",
                        [load] { return static_cast<double>(load().waiting_sequences()); });
  registry_.AddCallback(MetricType::kGauge, "tandem:kv_cache_usage_perc",
                        "Fraction of KV blocks in use, 0 to 1 (cached prefix blocks count "
                        "as free).",
                        [engine] {
                          const EngineStats s = engine->stats();
                          if (s.total_kv_blocks <= 0) return 0.0;
                          return 1.0 - static_cast<double>(s.free_kv_blocks) /
                                           static_cast<double>(s.total_kv_blocks);
                        });
  registry_.AddCallback(
      MetricType::kGauge, "tandem:kv_cache_blocks", "KV blocks by state.", {"state"}, [engine] {
        const EngineStats s = engine->stats();
        return std::vector<Sample>{
            {{"free"}, static_cast<double>(s.free_kv_blocks)},
            {{"used"}, static_cast<double>(s.total_kv_blocks - s.free_kv_blocks)}};
      });
  registry_.AddCallback(MetricType::kCounter, "tandem:prefix_cache_queries_total",
                        "Prompt tokens looked up in the prefix cache.", [engine] {
                          return static_cast<double>(engine->prefix_cache_stats().query_tokens);
                        });
  registry_.AddCallback(MetricType::kCounter, "tandem:prefix_cache_hits_total",
                        "Prompt tokens served from the prefix cache.", [engine] {
                          return static_cast<double>(engine->prefix_cache_stats().hit_tokens);
                        });
  registry_.AddCallback(
      MetricType::kCounter, "tandem:prompt_tokens_computed_total",
      "Prompt tokens the engine computed (prefix-cache hits excluded).",
      [engine] { return static_cast<double>(engine->stats().prompt_tokens_computed); });
  registry_.AddCallback(MetricType::kCounter, "tandem:preemptions_total",
                        "Sequences preempted for lack of KV blocks.",
                        [engine] { return static_cast<double>(engine->stats().preemptions); });
  registry_.AddCallback(MetricType::kCounter, "tandem:engine_steps_total", "Engine steps run.",
                        [engine] { return static_cast<double>(engine->stats().steps); });
  loop.SetStepHistogram(&registry_
                             .AddHistogram("tandem:engine_step_seconds",
                                           "Wall time of one engine step (forward pass).",
                                           metrics::EngineStepBuckets())
                             .Get());
}

void WorkerMetrics::CountTransfer(std::string_view outcome) {
  transfers_.WithLabels({kv_direction_, std::string(outcome)}).Increment();
}

void WorkerMetrics::CountReservation(const absl::Status& status) {
  reservations_.WithLabels({StatusCodeLabel(status.code())}).Increment();
}

void WorkerMetrics::CountRenewals(int renewed, int lost) {
  if (renewed > 0) renewals_.WithLabels({"renewed"}).Increment(renewed);
  if (lost > 0) renewals_.WithLabels({"lost"}).Increment(lost);
}

}  // namespace tandem
