// Prometheus metrics for the router and the workers: counters, gauges and histograms in
// families with labels, owned by a Registry that renders the text exposition format 0.0.4
// (what GET /metrics answers). Names follow vLLM's ("vllm:time_to_first_token_seconds"
// becomes "tandem:time_to_first_token_seconds"), so its dashboards adapt with a rename.
//
// Hot paths: look a child up once (Family::WithLabels takes the family's lock) and keep
// the reference; Increment/Set/Observe are then a few atomic operations, no lock.
//
// Values owned elsewhere (engine stats, the worker registry) are read at scrape time by
// callback families (Registry::AddCallback).
//
// Thread-safe throughout. Children, families and the registry live as long as the registry;
// references stay valid.
#ifndef TANDEM_SERVICE_METRICS_H_
#define TANDEM_SERVICE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem::metrics {

// Label values, in the order of the family's label names.
using LabelValues = std::vector<std::string>;
// (name, value) pairs put on every sample of a registry (model_name, role).
using ConstLabels = std::vector<std::pair<std::string, std::string>>;

enum class MetricType { kCounter, kGauge, kHistogram };

// A value that only goes up.
class Counter {
 public:
  // CHECKs `amount` >= 0.
  void Increment(double amount = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double amount);
  void Increment() { Add(1.0); }
  void Decrement() { Add(-1.0); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted in buckets with explicit upper bounds (inclusive, as Prometheus's
// `le`); +Inf is implicit.
class Histogram {
 public:
  // `bounds` strictly increasing and finite (CHECKed).
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // [bounds.size() + 1]: the last is +Inf (== count)
    double sum = 0;
    uint64_t count = 0;
  };
  // count always equals the +Inf bucket, even while other threads observe.
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // [bounds_.size() + 1], not cumulative
  std::atomic<double> sum_{0.0};
};

// The children of one metric name, one per distinct label values.
template <typename T>
class Family {
 public:
  using Factory = std::function<std::unique_ptr<T>()>;
  Family(std::vector<std::string> label_names, Factory factory)
      : label_names_(std::move(label_names)), factory_(std::move(factory)) {}
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The child for `values` (created on first use). CHECKs the number of values. Takes the
  // family's lock: cache the reference on hot paths.
  T& WithLabels(const LabelValues& values);
  // The child of a family without labels.
  T& Get() { return WithLabels({}); }
  const std::vector<std::string>& label_names() const { return label_names_; }

  // Every child, sorted by label values (for the exposition).
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) fn(values, *child);
  }

 private:
  const std::vector<std::string> label_names_;
  const Factory factory_;
  mutable absl::Mutex mu_;
  std::map<LabelValues, std::unique_ptr<T>> children_ ABSL_GUARDED_BY(mu_);
};

// One sample of a callback family.
struct Sample {
  LabelValues label_values;
  double value = 0;
};
// Called at scrape time; returns the family's samples. Must not call into the registry.
using Collector = std::function<std::vector<Sample>()>;

// The Content-Type of Registry::TextExposition() over HTTP.
inline constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

class Registry {
 public:
  explicit Registry(ConstLabels const_labels = {});
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Adds a family, or returns the one of that name when type, label names (and bounds)
  // match. CHECKs the names (metric: [a-zA-Z_:][a-zA-Z0-9_:]*; label:
  // [a-zA-Z_][a-zA-Z0-9_]*, not "__"-prefixed, not "le", not a constant label) and that a
  // name is not reused with another shape. A family without labels has its one child from
  // the start, so it shows 0 before its first increment.
  Family<Counter>& AddCounter(std::string_view name, std::string_view help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(std::string_view name, std::string_view help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(std::string_view name, std::string_view help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});
  // A counter or gauge family whose samples `collect` returns at each scrape.
  void AddCallback(MetricType type, std::string_view name, std::string_view help,
                   std::vector<std::string> label_names, Collector collect);
  // Shorthand: one unlabelled sample.
  void AddCallback(MetricType type, std::string_view name, std::string_view help,
                   std::function<double()> value);

  // Every family in the order added: "# HELP", "# TYPE", then its samples with the
  // constant labels first.
  std::string TextExposition() const;

  const ConstLabels& const_labels() const { return const_labels_; }

 private:
  struct Entry {
    std::string name;
    std::string help;
    MetricType type;
    std::vector<std::string> label_names;
    std::vector<double> bounds;  // histograms
    std::unique_ptr<Family<Counter>> counters;
    std::unique_ptr<Family<Gauge>> gauges;
    std::unique_ptr<Family<Histogram>> histograms;
    Collector collect;
  };
  // The entry named `name`, added when new; CHECKs that an existing one matches.
  Entry& FindOrAdd(std::string_view name, std::string_view help, MetricType type,
                   std::vector<std::string> label_names, std::vector<double> bounds, bool callback);

  const ConstLabels const_labels_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

// Exposition helpers, exposed for tests.
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);
// Label values: \ -> \\, " -> \", newline -> \n.
std::string EscapeLabelValue(std::string_view value);
// Go's way, as Prometheus parses it: shortest round-trip, "+Inf", "-Inf", "NaN".
std::string FormatValue(double value);

// Bucket bounds used across tandem, from vLLM's (seconds), with a few finer low buckets
// for CPU-fast requests where noted.
std::vector<double> TimeToFirstTokenBuckets();
std::vector<double> InterTokenLatencyBuckets();
std::vector<double> RequestLatencyBuckets();  // e2e, queue, prefill, decode
std::vector<double> TokenCountBuckets();      // prompt / generation tokens per request
std::vector<double> KvTransferBuckets();
std::vector<double> EngineStepBuckets();

namespace internal {
// CHECK failure naming the family's labels and the values given.
[[noreturn]] void FailLabelArity(const std::vector<std::string>& names, const LabelValues& values);
}  // namespace internal

template <typename T>
T& Family<T>::WithLabels(const LabelValues& values) {
  absl::MutexLock lock(&mu_);
  if (values.size() != label_names_.size()) {
    internal::FailLabelArity(label_names_, values);
  }
  std::unique_ptr<T>& child = children_[values];
  if (child == nullptr) child = factory_();
  return *child;
}

}  // namespace tandem::metrics

#endif  // TANDEM_SERVICE_METRICS_H_
