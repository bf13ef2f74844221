#include "router/router_metrics.h"

#include <vector>

#include "absl/strings/ascii.h"

namespace tandem::router {
namespace {

using metrics::MetricType;

const char* const kOutcomes[] = {"ok",
                                 "cancelled",
                                 "invalid_argument",
                                 "resource_exhausted",
                                 "unavailable",
                                 "deadline_exceeded",
                                 "error"};

}  // namespace

std::string OutcomeLabel(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "ok";
    case grpc::StatusCode::CANCELLED:
      return "cancelled";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "invalid_argument";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "resource_exhausted";
    case grpc::StatusCode::UNAVAILABLE:
      return "unavailable";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "deadline_exceeded";
    default:
      return "error";
  }
}

std::string FinishReasonLabel(v1::FinishReason reason) {
  std::string name = v1::FinishReason_Name(reason);
  constexpr std::string_view kPrefix = "FINISH_REASON_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(kPrefix.size());
  return name.empty() ? "unspecified" : absl::AsciiStrToLower(name);
}

RouterMetrics::RouterMetrics(metrics::Registry& r, const WorkerRegistry& workers)
    : prompt_tokens(r.AddCounter("tandem:prompt_tokens_total",
                                 "Prompt tokens of requests whose first token was sent.")
                        .Get()),
      generation_tokens(
          r.AddCounter("tandem:generation_tokens_total", "Generated tokens sent to clients.")
              .Get()),
      prefill_remote(r.AddCounter("tandem:prefills_total",
                                  "Prefills started, by where they ran (a resumed request "
                                  "prefills again).",
                                  {"location"})
                         .WithLabels({"remote"})),
      prefill_local(r.AddCounter("tandem:prefills_total", "", {"location"}).WithLabels({"local"})),
      prefill_retries(r.AddCounter("tandem:prefill_retries_total",
                                   "Prefill calls retried on another prefill worker.")
                          .Get()),
      decode_failovers(r.AddCounter("tandem:decode_failovers_total",
                                    "Requests resumed on another decode worker after one failed.")
                           .Get()),
      running(r.AddGauge("tandem:num_requests_running",
                         "Requests placed on a decode worker and not finished.")
                  .Get()),
      waiting(r.AddGauge("tandem:num_requests_waiting",
                         "Requests admitted and not yet placed on a decode worker.")
                  .Get()),
      time_to_first_token(r.AddHistogram("tandem:time_to_first_token_seconds",
                                         "Time from receipt to the first token sent.",
                                         metrics::TimeToFirstTokenBuckets())
                              .Get()),
      inter_token_latency(r.AddHistogram("tandem:inter_token_latency_seconds",
                                         "Time between two consecutive deltas of a request.",
                                         metrics::InterTokenLatencyBuckets())
                              .Get()),
      e2e_latency(r.AddHistogram("tandem:e2e_request_latency_seconds",
                                 "Time from receipt to the final message, finished requests.",
                                 metrics::RequestLatencyBuckets())
                      .Get()),
      queue_time(r.AddHistogram("tandem:request_queue_time_seconds",
                                "Time from receipt to the decode worker's reservation.",
                                metrics::RequestLatencyBuckets())
                     .Get()),
      prefill_time(r.AddHistogram("tandem:request_prefill_time_seconds",
                                  "Prefill time reported by the workers, finished requests.",
                                  metrics::RequestLatencyBuckets())
                       .Get()),
      decode_time(r.AddHistogram("tandem:request_decode_time_seconds",
                                 "Time from the first to the last token, finished requests.",
                                 metrics::RequestLatencyBuckets())
                      .Get()),
      prompt_tokens_per_request(r.AddHistogram("tandem:request_prompt_tokens",
                                               "Prompt tokens per finished request.",
                                               metrics::TokenCountBuckets())
                                    .Get()),
      generation_tokens_per_request(r.AddHistogram("tandem:request_generation_tokens",
                                                   "Generated tokens per finished request.",
                                                   metrics::TokenCountBuckets())
                                        .Get()),
      kv_transfer(r.AddHistogram("tandem:kv_transfer_seconds",
                                 "KV transfer time per remote prefill, as the prefill "
                                 "worker reports it (its KV sent to the acknowledgement).",
                                 metrics::KvTransferBuckets())
                      .Get()),
      requests_(
          r.AddCounter("tandem:requests_total", "Requests ended, by final status.", {"outcome"})),
      success_(r.AddCounter("tandem:request_success_total",
                            "Requests finished with a final message, by finish reason.",
                            {"finished_reason"})) {
  for (const char* outcome : kOutcomes) requests_.WithLabels({outcome});
  for (v1::FinishReason reason : {v1::FINISH_REASON_STOP, v1::FINISH_REASON_LENGTH}) {
    success_.WithLabels({FinishReasonLabel(reason)});
  }
  r.AddCallback(MetricType::kGauge, "tandem:workers",
                "Registered workers by role and state (from the registry).", {"role", "state"},
                [&workers] {
                  double counts[2][2] = {{0, 0}, {0, 0}};  // [prefill, decode][serving, draining]
                  for (const WorkerView& w : workers.Snapshot()) {
                    counts[w.role == v1::WORKER_ROLE_PREFILL ? 0 : 1][w.draining ? 1 : 0] += 1;
                  }
                  std::vector<metrics::Sample> samples;
                  const char* roles[] = {"prefill", "decode"};
                  const char* states[] = {"serving", "draining"};
                  for (int role = 0; role < 2; ++role) {
                    for (int state = 0; state < 2; ++state) {
                      samples.push_back({{roles[role], states[state]}, counts[role][state]});
                    }
                  }
                  return samples;
                });
}

void RouterMetrics::CountRequest(const grpc::Status& status) {
  requests_.WithLabels({OutcomeLabel(status.error_code())}).Increment();
}

void RouterMetrics::CountSuccess(const v1::GenerateFinal& final) {
  success_.WithLabels({FinishReasonLabel(final.finish_reason())}).Increment();
  const v1::Timings& t = final.timings();
  e2e_latency.Observe(t.total());
  prefill_time.Observe(t.prefill());
  decode_time.Observe(t.decode());
  prompt_tokens_per_request.Observe(final.prompt_tokens());
  generation_tokens_per_request.Observe(final.completion_tokens());
}

}  // namespace tandem::router
