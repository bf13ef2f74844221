#include "bench/serving_metrics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_format.h"

namespace tandem::bench {
namespace {

using nlohmann::json;

json Stats(std::vector<double> values) {
  json out;
  out["count"] = values.size();
  if (values.empty()) {
    for (const char* key : {"mean", "p50", "p90", "p99", "min", "max"}) out[key] = nullptr;
    return out;
  }
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  out["mean"] = sum / values.size();
  out["p50"] = Percentile(values, 50);
  out["p90"] = Percentile(values, 90);
  out["p99"] = Percentile(values, 99);
  out["min"] = values.front();
  out["max"] = values.back();
  return out;
}

json OptionalMs(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

std::string Ms(const json& v) {
  if (!v.is_number()) return "-";
  const double ms = v.get<double>();
  return ms >= 1000 ? absl::StrFormat("%.0f", ms) : absl::StrFormat("%.1f", ms);
}

// "512" or "512-2048".
std::string Span(const json& config, const std::string& what) {
  const int lo = config[what + "_tokens_min"].get<int>();
  const int hi = config[what + "_tokens_max"].get<int>();
  return lo == hi ? absl::StrFormat("%d", lo) : absl::StrFormat("%d-%d", lo, hi);
}

}  // namespace

double Percentile(const std::vector<double>& sorted, double p) {
  const double rank = p / 100.0 * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (rank - lo) * (sorted[hi] - sorted[lo]);
}

RequestMetrics Measure(const RequestRecord& record, const Slo& slo) {
  RequestMetrics m;
  for (const DeltaArrival& d : record.deltas) m.output_tokens += d.tokens;
  m.ok = record.status == "OK" && m.output_tokens > 0;
  if (!m.ok) return m;
  const double ttft = (record.deltas.front().time_s - record.send_s) * 1e3;
  const double e2e = (record.end_s - record.send_s) * 1e3;
  m.ttft_ms = ttft;
  m.e2e_ms = e2e;
  if (m.output_tokens > 1) m.tpot_ms = (e2e - ttft) / (m.output_tokens - 1);
  m.itl_ms.assign(record.deltas.front().tokens - 1, 0.0);
  for (size_t i = 1; i < record.deltas.size(); ++i) {
    const double gap = (record.deltas[i].time_s - record.deltas[i - 1].time_s) * 1e3;
    m.itl_ms.insert(m.itl_ms.end(), record.deltas[i].tokens, gap / record.deltas[i].tokens);
  }
  m.met_slo = (!slo.ttft_ms || ttft <= *slo.ttft_ms) &&
              (!slo.tpot_ms || !m.tpot_ms || *m.tpot_ms <= *slo.tpot_ms);
  return m;
}

json Summarize(const std::vector<RequestRecord>& records, const Slo& slo, double duration_s) {
  std::vector<double> ttft, tpot, itl, e2e;
  std::vector<double> queued, prefill, kv_transfer, server_first_token, server_decode;
  std::map<std::string, int> errors, locations, finish_reasons;
  int64_t completed = 0, met = 0, mismatched = 0;
  int64_t prompt_tokens = 0, output_tokens = 0, cached_tokens = 0, retries = 0;
  for (const RequestRecord& r : records) {
    const RequestMetrics m = Measure(r, slo);
    if (r.status != "OK") {
      ++errors[r.status];
    } else if (!m.ok) {
      ++errors["OK_WITHOUT_TOKENS"];
    }
    if (r.final) {
      ++locations[r.final->prefill_location];
      ++finish_reasons[r.final->finish_reason];
      cached_tokens += r.final->cached_prompt_tokens;
      retries += r.final->prefill_retries;
      queued.push_back(r.final->queued_s * 1e3);
      prefill.push_back(r.final->prefill_s * 1e3);
      kv_transfer.push_back(r.final->kv_transfer_s * 1e3);
      server_first_token.push_back(r.final->first_token_s * 1e3);
      server_decode.push_back(r.final->decode_s * 1e3);
    }
    if (!m.ok) continue;
    ++completed;
    met += m.met_slo;
    mismatched += m.output_tokens != r.output_tokens_requested;
    prompt_tokens += r.prompt_tokens;
    output_tokens += m.output_tokens;
    ttft.push_back(*m.ttft_ms);
    e2e.push_back(*m.e2e_ms);
    if (m.tpot_ms) tpot.push_back(*m.tpot_ms);
    itl.insert(itl.end(), m.itl_ms.begin(), m.itl_ms.end());
  }
  const double seconds = std::max(duration_s, 1e-9);
  json s;
  s["duration_s"] = duration_s;
  s["requests"] = records.size();
  s["completed"] = completed;
  s["failed"] = static_cast<int64_t>(records.size()) - completed;
  s["errors"] = json::object();
  for (const auto& [code, n] : errors) s["errors"][code] = n;
  s["output_length_mismatch"] = mismatched;
  s["prompt_tokens"] = prompt_tokens;
  s["output_tokens"] = output_tokens;
  s["request_throughput"] = completed / seconds;
  s["output_throughput"] = output_tokens / seconds;
  s["total_token_throughput"] = (prompt_tokens + output_tokens) / seconds;
  s["ttft_ms"] = Stats(ttft);
  s["tpot_ms"] = Stats(tpot);
  s["itl_ms"] = Stats(itl);
  s["e2e_ms"] = Stats(e2e);
  s["slo"] = {{"ttft_ms", OptionalMs(slo.ttft_ms)}, {"tpot_ms", OptionalMs(slo.tpot_ms)}};
  if (slo.any()) {
    s["slo_met"] = met;
    s["slo_attainment"] = records.empty() ? 0.0 : static_cast<double>(met) / records.size();
    s["goodput"] = met / seconds;
  } else {
    s["slo_met"] = s["slo_attainment"] = s["goodput"] = nullptr;
  }
  json& server = s["server"];
  server["queued_ms"] = Stats(queued);
  server["prefill_ms"] = Stats(prefill);
  server["kv_transfer_ms"] = Stats(kv_transfer);
  server["first_token_ms"] = Stats(server_first_token);
  server["decode_ms"] = Stats(server_decode);
  server["prefill_location"] = json::object();
  for (const auto& [where, n] : locations) server["prefill_location"][where] = n;
  server["finish_reasons"] = json::object();
  for (const auto& [why, n] : finish_reasons) server["finish_reasons"][why] = n;
  server["cached_prompt_tokens"] = cached_tokens;
  server["prefill_retries"] = retries;
  return s;
}

json RecordToJson(const RequestRecord& r, const RequestMetrics& m) {
  json j;
  j["index"] = r.index;
  j["prompt_tokens"] = r.prompt_tokens;
  j["output_tokens_requested"] = r.output_tokens_requested;
  j["output_tokens"] = m.output_tokens;
  j["shared_prefix_tokens"] = r.shared_prefix_tokens;
  j["scheduled_s"] = r.scheduled_s >= 0 ? json(r.scheduled_s) : json(nullptr);
  j["send_s"] = r.send_s;
  j["end_s"] = r.end_s;
  j["status"] = r.status;
  if (!r.error.empty()) j["error"] = r.error;
  j["ttft_ms"] = OptionalMs(m.ttft_ms);
  j["tpot_ms"] = OptionalMs(m.tpot_ms);
  j["e2e_ms"] = OptionalMs(m.e2e_ms);
  j["met_slo"] = m.met_slo;
  json deltas = json::array();
  for (const DeltaArrival& d : r.deltas) deltas.push_back({d.time_s, d.tokens});
  j["deltas"] = std::move(deltas);  // [[seconds from the start, tokens], ...]
  if (r.final) {
    const ServerFinal& f = *r.final;
    j["final"] = {{"finish_reason", f.finish_reason},
                  {"prefill_location", f.prefill_location},
                  {"prompt_tokens", f.prompt_tokens},
                  {"completion_tokens", f.completion_tokens},
                  {"cached_prompt_tokens", f.cached_prompt_tokens},
                  {"prefill_retries", f.prefill_retries},
                  {"prefill_worker", f.prefill_worker},
                  {"decode_worker", f.decode_worker},
                  {"timings_s",
                   {{"queued", f.queued_s},
                    {"prefill", f.prefill_s},
                    {"kv_transfer", f.kv_transfer_s},
                    {"first_token", f.first_token_s},
                    {"decode", f.decode_s},
                    {"total", f.total_s}}}};
  } else {
    j["final"] = nullptr;
  }
  return j;
}

void PrintSummary(const json& config, const json& s, FILE* out) {
  const std::string load =
      config["rate"].is_number()
          ? absl::StrFormat(
                "Poisson %.3g req/s%s", config["rate"].get<double>(),
                config["concurrency"].is_number()
                    ? absl::StrFormat(", at most %d in flight", config["concurrency"].get<int>())
                    : "")
          : absl::StrFormat("concurrency %d", config["concurrency"].get<int>());
  std::fprintf(
      out, "tandem bench serve%s: %s, mode %s, prompts %s, outputs %s tokens%s\n",
      config["label"].get<std::string>().empty()
          ? ""
          : (" [" + config["label"].get<std::string>() + "]").c_str(),
      load.c_str(), config["mode"].get<std::string>().c_str(), Span(config, "prompt").c_str(),
      Span(config, "output").c_str(),
      config["shared_prefix_ratio"].get<double>() > 0
          ? absl::StrFormat(", shared prefix %g", config["shared_prefix_ratio"].get<double>())
                .c_str()
          : "");
  std::fprintf(out, "%lld requests in %.1f s: %lld ok, %lld failed", s["requests"].get<long long>(),
               s["duration_s"].get<double>(), s["completed"].get<long long>(),
               s["failed"].get<long long>());
  for (const auto& [code, n] : s["errors"].items()) {
    std::fprintf(out, " (%s %d)", code.c_str(), n.get<int>());
  }
  if (s["output_length_mismatch"].get<int64_t>() > 0) {
    std::fprintf(out, "; %lld outputs not of the requested length",
                 s["output_length_mismatch"].get<long long>());
  }
  std::fprintf(out, "\nthroughput: %.3f req/s, %.1f output tokens/s, %.1f total tokens/s\n",
               s["request_throughput"].get<double>(), s["output_throughput"].get<double>(),
               s["total_token_throughput"].get<double>());
  std::fprintf(out, "%-6s %9s %9s %9s %9s %9s\n", "ms", "mean", "p50", "p90", "p99", "max");
  for (const char* key : {"ttft", "tpot", "itl", "e2e"}) {
    const json& st = s[std::string(key) + "_ms"];
    std::string name = key;
    std::transform(name.begin(), name.end(), name.begin(), ::toupper);
    std::fprintf(out, "%-6s %9s %9s %9s %9s %9s\n", name.c_str(), Ms(st["mean"]).c_str(),
                 Ms(st["p50"]).c_str(), Ms(st["p90"]).c_str(), Ms(st["p99"]).c_str(),
                 Ms(st["max"]).c_str());
  }
  if (s["goodput"].is_number()) {
    std::string slos;
    if (s["slo"]["ttft_ms"].is_number()) slos += "TTFT <= " + Ms(s["slo"]["ttft_ms"]) + " ms";
    if (s["slo"]["tpot_ms"].is_number()) {
      slos += (slos.empty() ? "" : " and ") + ("TPOT <= " + Ms(s["slo"]["tpot_ms"]) + " ms");
    }
    std::fprintf(out, "goodput: %.3f req/s (%.1f %% of requests meet %s)\n",
                 s["goodput"].get<double>(), 100 * s["slo_attainment"].get<double>(), slos.c_str());
  }
  const json& server = s["server"];
  std::string locations;
  for (const auto& [where, n] : server["prefill_location"].items()) {
    locations += absl::StrFormat("%s%s %d", locations.empty() ? "" : ", ", where, n.get<int>());
  }
  std::fprintf(
      out,
      "server (mean ms): queued %s, prefill %s, kv transfer %s, first token %s; "
      "prefill %s; cached prompt tokens %lld of %lld; prefill retries %lld\n",
      Ms(server["queued_ms"]["mean"]).c_str(), Ms(server["prefill_ms"]["mean"]).c_str(),
      Ms(server["kv_transfer_ms"]["mean"]).c_str(), Ms(server["first_token_ms"]["mean"]).c_str(),
      locations.empty() ? "-" : locations.c_str(), server["cached_prompt_tokens"].get<long long>(),
      s["prompt_tokens"].get<long long>(), server["prefill_retries"].get<long long>());
}

}  // namespace tandem::bench
