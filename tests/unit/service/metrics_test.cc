#include "service/metrics.h"

#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CounterAndGaugeExactText) {
  Registry registry(ConstLabels{{"model_name", "m"}});
  Family<Counter>& requests =
      registry.AddCounter("tandem:requests_total", "Requests by outcome.", {"outcome"});
  Gauge& running = registry.AddGauge("tandem:num_requests_running", "Running.").Get();
  requests.WithLabels({"ok"}).Increment();
  requests.WithLabels({"ok"}).Increment(2);
  requests.WithLabels({"cancelled"}).Increment();
  running.Set(3);
  running.Decrement();
  running.Add(0.5);
  EXPECT_EQ(registry.TextExposition(),
            "# HELP tandem:requests_total Requests by outcome.\n"
            "# TYPE tandem:requests_total counter\n"
            "tandem:requests_total{model_name=\"m\",outcome=\"cancelled\"} 1\n"
            "tandem:requests_total{model_name=\"m\",outcome=\"ok\"} 3\n"
            "# HELP tandem:num_requests_running Running.\n"
            "# TYPE tandem:num_requests_running gauge\n"
            "tandem:num_requests_running{model_name=\"m\"} 2.5\n");
}

TEST(MetricsTest, UnlabelledFamilyShowsZeroBeforeUse) {
  Registry registry;
  registry.AddCounter("a_total", "A.");
  EXPECT_EQ(registry.TextExposition(), "# HELP a_total A.\n# TYPE a_total counter\na_total 0\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Registry registry(ConstLabels{{"model_name", "m"}});
  Histogram& h = registry.AddHistogram("lat_seconds", "Latency.", {0.125, 1, 2.5}).Get();
  for (double v : {0.0625, 0.125, 0.5, 1.0, 2.0, 100.0}) h.Observe(v);
  EXPECT_EQ(registry.TextExposition(),
            "# HELP lat_seconds Latency.\n"
            "# TYPE lat_seconds histogram\n"
            "lat_seconds_bucket{model_name=\"m\",le=\"0.125\"} 2\n"
            "lat_seconds_bucket{model_name=\"m\",le=\"1\"} 4\n"
            "lat_seconds_bucket{model_name=\"m\",le=\"2.5\"} 5\n"
            "lat_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 6\n"
            "lat_seconds_sum{model_name=\"m\"} 103.6875\n"
            "lat_seconds_count{model_name=\"m\"} 6\n");
  const Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 4, 5, 6}));
  EXPECT_EQ(s.count, 6u);
}

TEST(MetricsTest, LabelledHistogramPutsLeLast) {
  Registry registry;
  registry.AddHistogram("x_seconds", "X.", {1}, {"direction"}).WithLabels({"sent"}).Observe(2);
  EXPECT_EQ(registry.TextExposition(),
            "# HELP x_seconds X.\n"
            "# TYPE x_seconds histogram\n"
            "x_seconds_bucket{direction=\"sent\",le=\"1\"} 0\n"
            "x_seconds_bucket{direction=\"sent\",le=\"+Inf\"} 1\n"
            "x_seconds_sum{direction=\"sent\"} 2\n"
            "x_seconds_count{direction=\"sent\"} 1\n");
}

TEST(MetricsTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  Registry registry(ConstLabels{{"model_name", "we\"ird\\name\n"}});
  registry.AddGauge("g", "Help with \\ and\nnewline.");
  EXPECT_EQ(registry.TextExposition(),
            "# HELP g Help with \\\\ and\\nnewline.\n"
            "# TYPE g gauge\n"
            "g{model_name=\"we\\\"ird\\\\name\\n\"} 0\n");
}

TEST(MetricsTest, FormatsValuesLikeGo) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(12345678), "12345678");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1e21), "1e+21");
  EXPECT_EQ(FormatValue(0.0005), "0.0005");
  EXPECT_EQ(FormatValue(5e-5), "5e-05");
  EXPECT_EQ(FormatValue(-2.5), "-2.5");
  EXPECT_EQ(FormatValue(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsTest, ValidatesNames) {
  EXPECT_TRUE(IsValidMetricName("tandem:time_to_first_token_seconds"));
  EXPECT_TRUE(IsValidMetricName("_x1"));
  EXPECT_FALSE(IsValidMetricName(""));
  EXPECT_FALSE(IsValidMetricName("1x"));
  EXPECT_FALSE(IsValidMetricName("a-b"));
  EXPECT_FALSE(IsValidMetricName("a b"));
  EXPECT_TRUE(IsValidLabelName("model_name"));
  EXPECT_FALSE(IsValidLabelName("__reserved"));
  EXPECT_FALSE(IsValidLabelName("a:b"));
  EXPECT_FALSE(IsValidLabelName("9a"));
}

TEST(MetricsDeathTest, RejectsBadNamesAndArity) {
  Registry registry;
  EXPECT_DEATH(registry.AddCounter("bad-name", "x"), "bad metric name");
  EXPECT_DEATH(registry.AddCounter("ok", "x", {"bad:label"}), "bad label name");
  EXPECT_DEATH(registry.AddHistogram("h", "x", {1}, {"le"}), "histogram's own label");
  EXPECT_DEATH(registry.AddHistogram("h2", "x", {2, 1}), "must increase");
  Family<Counter>& family = registry.AddCounter("c_total", "x", {"a"});
  EXPECT_DEATH(family.WithLabels({"1", "2"}), "given 2 values");
  EXPECT_DEATH(registry.AddGauge("c_total", "x", {"a"}), "different shapes");
}

TEST(MetricsTest, SameShapeReturnsSameFamily) {
  Registry registry;
  Family<Counter>& a = registry.AddCounter("c_total", "x", {"a"});
  Family<Counter>& b = registry.AddCounter("c_total", "x", {"a"});
  EXPECT_EQ(&a, &b);
  EXPECT_EQ(&a.WithLabels({"1"}), &b.WithLabels({"1"}));
}

TEST(MetricsTest, CallbacksAreReadAtScrape) {
  Registry registry(ConstLabels{{"role", "decode"}});
  double value = 1;
  registry.AddCallback(MetricType::kGauge, "usage", "Usage.", [&value] { return value; });
  registry.AddCallback(MetricType::kGauge, "workers", "Workers.", {"state"}, [] {
    return std::vector<Sample>{{{"serving"}, 2}, {{"draining"}, 0}};
  });
  value = 0.75;
  EXPECT_EQ(registry.TextExposition(),
            "# HELP usage Usage.\n"
            "# TYPE usage gauge\n"
            "usage{role=\"decode\"} 0.75\n"
            "# HELP workers Workers.\n"
            "# TYPE workers gauge\n"
            "workers{role=\"decode\",state=\"serving\"} 2\n"
            "workers{role=\"decode\",state=\"draining\"} 0\n");
}

TEST(MetricsTest, ConcurrentIncrementsAreNotLost) {
  Registry registry;
  Family<Counter>& family = registry.AddCounter("c_total", "x", {"t"});
  Histogram& histogram = registry.AddHistogram("h", "x", {0.5}).Get();
  Gauge& gauge = registry.AddGauge("g", "x").Get();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& shared = family.WithLabels({"shared"});
      for (int i = 0; i < kPerThread; ++i) {
        shared.Increment();
        family.WithLabels({t % 2 == 0 ? "even" : "odd"}).Increment();
        histogram.Observe(i % 2 == 0 ? 0.25 : 1.0);
        gauge.Increment();
        gauge.Decrement();
      }
    });
  }
  // Scrapes race with the writers and must stay well formed.
  for (int i = 0; i < 20; ++i) EXPECT_THAT(registry.TextExposition(), HasSubstr("# TYPE h "));
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(family.WithLabels({"shared"}).value(), kThreads * kPerThread);
  EXPECT_EQ(family.WithLabels({"even"}).value(), kThreads / 2 * kPerThread);
  const Histogram::Snapshot s = histogram.Read();
  EXPECT_EQ(s.count, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(s.cumulative[0], static_cast<uint64_t>(kThreads * kPerThread / 2));
  EXPECT_DOUBLE_EQ(s.sum, kThreads * kPerThread / 2 * 1.25);
  EXPECT_EQ(gauge.value(), 0);
}

TEST(MetricsTest, VllmBucketsIncrease) {
  for (const std::vector<double>& b :
       {TimeToFirstTokenBuckets(), InterTokenLatencyBuckets(), RequestLatencyBuckets(),
        TokenCountBuckets(), KvTransferBuckets(), EngineStepBuckets()}) {
    Histogram h(b);  // CHECKs the order
    EXPECT_GT(b.size(), 5u);
  }
  EXPECT_EQ(TimeToFirstTokenBuckets().back(), 2560);
  EXPECT_EQ(InterTokenLatencyBuckets().front(), 0.01);
  EXPECT_EQ(RequestLatencyBuckets().back(), 7680);
}

}  // namespace
}  // namespace tandem::metrics
