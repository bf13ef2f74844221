#include "service/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/strings.h"

namespace tandem::metrics {
namespace {

void AtomicAdd(std::atomic<double>& target, double amount) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + amount, std::memory_order_relaxed)) {
  }
}

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// HELP text: \ -> \\, newline -> \n.
std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// `{a="x",b="y"}` from the constant labels, the family's, and an extra one (le); empty
// when there are none.
std::string LabelSet(const ConstLabels& const_labels, const std::vector<std::string>& names,
                     const LabelValues& values, std::string_view extra_name = {},
                     std::string_view extra_value = {}) {
  std::string out;
  auto add = [&out](std::string_view name, std::string_view value) {
    out += out.empty() ? "{" : ",";
    out += name;
    out += "=\"";
    out += EscapeLabelValue(value);
    out += '"';
  };
  for (const auto& [name, value] : const_labels) add(name, value);
  for (size_t i = 0; i < names.size() && i < values.size(); ++i) add(names[i], values[i]);
  if (!extra_name.empty()) add(extra_name, extra_value);
  if (!out.empty()) out += '}';
  return out;
}

void AppendSample(std::string& out, std::string_view name, const std::string& labels,
                  double value) {
  out += name;
  out += labels;
  out += ' ';
  out += FormatValue(value);
  out += '\n';
}

}  // namespace

namespace internal {
void FailLabelArity(const std::vector<std::string>& names, const LabelValues& values) {
  LOG(FATAL) << "metric family with labels {" << absl::StrJoin(names, ",") << "} given "
             << values.size() << " values {" << absl::StrJoin(values, ",") << "}";
  std::abort();
}
}  // namespace internal

void Counter::Increment(double amount) {
  CHECK(amount >= 0) << "a counter cannot go down (" << amount << ")";
  AtomicAdd(value_, amount);
}

void Gauge::Add(double amount) { AtomicAdd(value_, amount); }

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    CHECK(std::isfinite(bounds_[i])) << "histogram bound " << i << " is " << bounds_[i];
    CHECK(i == 0 || bounds_[i - 1] < bounds_[i])
        << "histogram bounds must increase: " << bounds_[i - 1] << " then " << bounds_[i];
  }
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // The first bound >= value (le is inclusive); past the last: +Inf.
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  buckets_[bucket].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(sum_, value);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.bounds = bounds_;
  snapshot.cumulative.resize(bounds_.size() + 1);
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    total += buckets_[i].load(std::memory_order_relaxed);
    snapshot.cumulative[i] = total;
  }
  snapshot.count = total;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

bool IsValidMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || name.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Shortest round-trip digits; exponent form only where Go's %g would use it.
  const double magnitude = std::fabs(value);
  const std::chars_format format = magnitude != 0 && (magnitude < 1e-4 || magnitude >= 1e21)
                                       ? std::chars_format::scientific
                                       : std::chars_format::fixed;
  char buffer[400];  // fixed notation of the largest value below 1e21, with any fraction
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value, format);
  return std::string(buffer, result.ptr);
}

Registry::Registry(ConstLabels const_labels) : const_labels_(std::move(const_labels)) {
  for (const auto& [name, value] : const_labels_) {
    CHECK(IsValidLabelName(name)) << "bad constant label name '" << name << "'";
  }
}

Registry::Entry& Registry::FindOrAdd(std::string_view name, std::string_view help, MetricType type,
                                     std::vector<std::string> label_names,
                                     std::vector<double> bounds, bool callback) {
  CHECK(IsValidMetricName(name)) << "bad metric name '" << name << "'";
  for (const std::string& label : label_names) {
    CHECK(IsValidLabelName(label)) << "metric " << name << ": bad label name '" << label << "'";
    CHECK(!(type == MetricType::kHistogram && label == "le"))
        << "metric " << name << ": 'le' is the histogram's own label";
    for (const auto& [const_name, value] : const_labels_) {
      CHECK(label != const_name) << "metric " << name << ": label '" << label
                                 << "' is already a constant label of the registry";
    }
  }
  absl::MutexLock lock(&mu_);
  for (const std::unique_ptr<Entry>& entry : entries_) {
    if (entry->name != name) continue;
    CHECK(entry->type == type && entry->label_names == label_names && entry->bounds == bounds &&
          !callback && entry->collect == nullptr)
        << "metric " << name << " registered twice with different shapes";
    return *entry;
  }
  auto entry = std::make_unique<Entry>();
  entry->name = std::string(name);
  entry->help = std::string(help);
  entry->type = type;
  entry->label_names = label_names;
  entry->bounds = bounds;
  if (!callback) {
    switch (type) {
      case MetricType::kCounter:
        entry->counters = std::make_unique<Family<Counter>>(
            label_names, [] { return std::make_unique<Counter>(); });
        if (label_names.empty()) entry->counters->Get();
        break;
      case MetricType::kGauge:
        entry->gauges =
            std::make_unique<Family<Gauge>>(label_names, [] { return std::make_unique<Gauge>(); });
        if (label_names.empty()) entry->gauges->Get();
        break;
      case MetricType::kHistogram:
        entry->histograms = std::make_unique<Family<Histogram>>(
            label_names, [bounds] { return std::make_unique<Histogram>(bounds); });
        if (label_names.empty()) entry->histograms->Get();
        break;
    }
  }
  entries_.push_back(std::move(entry));
  return *entries_.back();
}

Family<Counter>& Registry::AddCounter(std::string_view name, std::string_view help,
                                      std::vector<std::string> label_names) {
  return *FindOrAdd(name, help, MetricType::kCounter, std::move(label_names), {}, false).counters;
}

Family<Gauge>& Registry::AddGauge(std::string_view name, std::string_view help,
                                  std::vector<std::string> label_names) {
  return *FindOrAdd(name, help, MetricType::kGauge, std::move(label_names), {}, false).gauges;
}

Family<Histogram>& Registry::AddHistogram(std::string_view name, std::string_view help,
                                          std::vector<double> bounds,
                                          std::vector<std::string> label_names) {
  // Validate the bounds now rather than at the first child.
  Histogram check(bounds);
  return *FindOrAdd(name, help, MetricType::kHistogram, std::move(label_names), std::move(bounds),
                    false)
              .histograms;
}

void Registry::AddCallback(MetricType type, std::string_view name, std::string_view help,
                           std::vector<std::string> label_names, Collector collect) {
  CHECK(type != MetricType::kHistogram) << "metric " << name << ": no callback histograms";
  CHECK(collect != nullptr) << "metric " << name << ": no collector";
  Entry& entry = FindOrAdd(name, help, type, std::move(label_names), {}, true);
  absl::MutexLock lock(&mu_);
  entry.collect = std::move(collect);
}

void Registry::AddCallback(MetricType type, std::string_view name, std::string_view help,
                           std::function<double()> value) {
  CHECK(value != nullptr) << "metric " << name << ": no value function";
  AddCallback(type, name, help, {}, [value = std::move(value)] {
    return std::vector<Sample>{Sample{{}, value()}};
  });
}

std::string Registry::TextExposition() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const std::unique_ptr<Entry>& entry : entries_) {
    const Entry& e = *entry;
    out += Cat("# HELP ", e.name, " ", EscapeHelp(e.help), "\n");
    out += Cat("# TYPE ", e.name, " ", TypeName(e.type), "\n");
    if (e.collect != nullptr) {
      for (const Sample& sample : e.collect()) {
        if (sample.label_values.size() != e.label_names.size()) {
          internal::FailLabelArity(e.label_names, sample.label_values);
        }
        AppendSample(out, e.name, LabelSet(const_labels_, e.label_names, sample.label_values),
                     sample.value);
      }
    } else if (e.counters != nullptr) {
      e.counters->ForEach([&](const LabelValues& values, const Counter& c) {
        AppendSample(out, e.name, LabelSet(const_labels_, e.label_names, values), c.value());
      });
    } else if (e.gauges != nullptr) {
      e.gauges->ForEach([&](const LabelValues& values, const Gauge& g) {
        AppendSample(out, e.name, LabelSet(const_labels_, e.label_names, values), g.value());
      });
    } else if (e.histograms != nullptr) {
      e.histograms->ForEach([&](const LabelValues& values, const Histogram& h) {
        const Histogram::Snapshot s = h.Read();
        const std::string bucket = Cat(e.name, "_bucket");
        for (size_t i = 0; i <= s.bounds.size(); ++i) {
          const std::string le = i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
          AppendSample(out, bucket, LabelSet(const_labels_, e.label_names, values, "le", le),
                       static_cast<double>(s.cumulative[i]));
        }
        const std::string labels = LabelSet(const_labels_, e.label_names, values);
        AppendSample(out, Cat(e.name, "_sum"), labels, s.sum);
        AppendSample(out, Cat(e.name, "_count"), labels, static_cast<double>(s.count));
      });
    }
  }
  return out;
}

std::vector<double> TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}

std::vector<double> InterTokenLatencyBuckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
          0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
}

std::vector<double> RequestLatencyBuckets() {
  // vLLM's, with 0.01 .. 0.1 added below for requests that finish in milliseconds.
  return {0.01, 0.025, 0.05, 0.1,  0.3,  0.5,  0.8,   1.0,   1.5,   2.0,   2.5,    5.0,   10.0,
          15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}

std::vector<double> TokenCountBuckets() {
  // vLLM's build_1_2_5_buckets up to the largest contexts.
  std::vector<double> buckets;
  for (double base = 1; base <= 1e6; base *= 10) {
    for (double m : {1.0, 2.0, 5.0}) buckets.push_back(base * m);
  }
  return buckets;
}

std::vector<double> KvTransferBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0};
}

std::vector<double> EngineStepBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
}

}  // namespace tandem::metrics
