// What `tandem bench serve` records per request, and the figures it derives: TTFT, ITL,
// TPOT, E2E percentiles, throughput, errors, SLO attainment and goodput. Plain data; no gRPC.
#ifndef TANDEM_BENCH_SERVING_METRICS_H_
#define TANDEM_BENCH_SERVING_METRICS_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace tandem::bench {

// The fields of the router's GenerateFinal that the bench keeps (times in seconds from the
// router receiving the request).
struct ServerFinal {
  std::string finish_reason;     // "length", "stop", ... (FinishReasonText)
  std::string prefill_location;  // "remote", "local", "unspecified" (PrefillLocationText)
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  int prefill_retries = 0;
  double queued_s = 0;
  double prefill_s = 0;
  double kv_transfer_s = 0;
  double first_token_s = 0;
  double decode_s = 0;
  double total_s = 0;
  std::string prefill_worker;
  std::string decode_worker;
};

struct DeltaArrival {
  double time_s = 0;  // seconds from the start of the run
  int tokens = 0;     // token ids in the delta
};

// Times are seconds from the start of the run, on the bench's steady clock.
struct RequestRecord {
  int64_t index = 0;
  int prompt_tokens = 0;
  int output_tokens_requested = 0;
  int shared_prefix_tokens = 0;
  double scheduled_s = -1;  // the Poisson arrival time; -1 in closed loop
  double send_s = 0;
  double end_s = 0;                  // the final message, or the call's end without one
  std::vector<DeltaArrival> deltas;  // only deltas that carry token ids
  std::string status = "OK";         // the gRPC status code's name
  std::string error;                 // its message
  std::optional<ServerFinal> final;
};

struct Slo {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
  bool any() const { return ttft_ms.has_value() || tpot_ms.has_value(); }
};

// One request's latencies; empty optionals where they are undefined (a failed request, TPOT
// of a one-token output).
struct RequestMetrics {
  bool ok = false;  // status OK and at least one token
  int output_tokens = 0;
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;  // (e2e - ttft) / (output - 1)
  std::optional<double> e2e_ms;
  // Gaps between consecutive tokens. A delta of k tokens that came g after the previous one
  // counts as k gaps of g / k; the tokens after the first in the first delta count as gaps
  // of 0 (they came with it).
  std::vector<double> itl_ms;
  bool met_slo = false;  // ok, and TTFT and TPOT within whichever SLOs are set
};

RequestMetrics Measure(const RequestRecord& record, const Slo& slo);

// `duration_s`: from the start of the run to the last request's end (throughput and goodput
// are per second of it).
nlohmann::json Summarize(const std::vector<RequestRecord>& records, const Slo& slo,
                         double duration_s);

// One request, with its derived latencies.
nlohmann::json RecordToJson(const RequestRecord& record, const RequestMetrics& metrics);

// The compact table: `config` and `summary` as written to the JSON file.
void PrintSummary(const nlohmann::json& config, const nlohmann::json& summary, FILE* out);

// Linear interpolation between closest ranks (numpy's default); `sorted` ascending, non-empty.
double Percentile(const std::vector<double>& sorted, double p);

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_SERVING_METRICS_H_
