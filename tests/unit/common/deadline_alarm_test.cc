#include "common/deadline_alarm.h"

#include <atomic>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

bool PollUntil(absl::Duration limit, const std::function<bool()>& done) {
  const absl::Time end = absl::Now() + limit;
  while (!done()) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST(DeadlineAlarmTest, FiresOnceWhenTheDeadlinePasses) {
  std::atomic<int> calls{0};
  DeadlineAlarm alarm([&] { ++calls; });
  alarm.Arm(absl::Now() + absl::Milliseconds(20));
  EXPECT_TRUE(PollUntil(absl::Seconds(10), [&] { return calls.load() == 1; }));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(calls.load(), 1);  // not again until armed again
  EXPECT_EQ(alarm.fired(), 1);
  alarm.Arm(absl::Now() - absl::Seconds(1));  // already past: at once
  EXPECT_TRUE(PollUntil(absl::Seconds(10), [&] { return calls.load() == 2; }));
}

TEST(DeadlineAlarmTest, DisarmedOrMovedDeadlinesDoNotFire) {
  std::atomic<int> calls{0};
  {
    DeadlineAlarm alarm([&] { ++calls; });
    alarm.Arm(absl::Now() + absl::Milliseconds(100));
    alarm.Disarm();
    absl::SleepFor(absl::Milliseconds(150));
    // Pushed out before it passes, for longer than one deadline: a call making progress.
    for (int i = 0; i < 20; ++i) {
      alarm.Arm(absl::Now() + absl::Milliseconds(300));
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_EQ(calls.load(), 0);
    alarm.Arm(absl::Now() + absl::Seconds(60));
  }  // destroyed while armed: stops without firing
  EXPECT_EQ(calls.load(), 0);
}

}  // namespace
}  // namespace tandem
