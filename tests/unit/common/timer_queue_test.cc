#include "common/timer_queue.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(TimerQueue, RunsTimersInTheirOrderNotTheirSchedulingOrder) {
  TimerQueue timers;
  absl::Mutex mu;
  std::vector<int> order;
  absl::Notification done;
  const absl::Time start = absl::Now();
  auto record = [&](int i) {
    return [&, i] {
      absl::MutexLock lock(&mu);
      order.push_back(i);
      if (order.size() == 4) done.Notify();
    };
  };
  timers.At(start + absl::Milliseconds(60), record(3));
  timers.At(start + absl::Milliseconds(20), record(1));
  timers.At(start + absl::Milliseconds(40), record(2));
  timers.At(start + absl::Milliseconds(60), record(4));  // same time: after the earlier one
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(60));
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(timers.pending(), 0);
}

TEST(TimerQueue, APastTimeRunsAtOnce) {
  TimerQueue timers;
  absl::Notification ran;
  timers.At(absl::InfinitePast(), [&] { ran.Notify(); });
  EXPECT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(TimerQueue, CancelBeforeItRunsDestroysTheCallback) {
  TimerQueue timers;
  auto owned = std::make_shared<int>(7);
  std::weak_ptr<int> watch = owned;
  std::atomic<bool> ran{false};
  const TimerQueue::Id id =
      timers.After(absl::Seconds(30), [owned = std::move(owned), &ran] { ran = true; });
  EXPECT_EQ(timers.pending(), 1);
  EXPECT_TRUE(timers.Cancel(id));
  EXPECT_TRUE(watch.expired());  // destroyed inside Cancel
  EXPECT_FALSE(timers.Cancel(id));
  EXPECT_EQ(timers.pending(), 0);
  EXPECT_FALSE(ran);
}

TEST(TimerQueue, CancelAfterItRanIsFalse) {
  TimerQueue timers;
  absl::Notification ran;
  const TimerQueue::Id id = timers.After(absl::ZeroDuration(), [&] { ran.Notify(); });
  ASSERT_TRUE(ran.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_FALSE(timers.Cancel(id));
}

// An earlier timer scheduled while the thread waits for a later one wakes it.
TEST(TimerQueue, AnEarlierTimerOvertakesTheOneWaitedFor) {
  TimerQueue timers;
  std::atomic<bool> late{false};
  timers.After(absl::Seconds(30), [&] { late = true; });
  absl::SleepFor(absl::Milliseconds(20));  // the thread now waits for 30 s
  absl::Notification soon;
  const absl::Time start = absl::Now();
  timers.After(absl::Milliseconds(10), [&] { soon.Notify(); });
  ASSERT_TRUE(soon.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_FALSE(late);
}

// A callback may schedule and cancel timers (it runs without the queue's lock).
TEST(TimerQueue, CallbacksMayUseTheQueue) {
  TimerQueue timers;
  absl::Notification second;
  timers.After(absl::ZeroDuration(), [&] {
    const TimerQueue::Id never = timers.After(absl::Seconds(30), [] {});
    EXPECT_TRUE(timers.Cancel(never));
    timers.After(absl::ZeroDuration(), [&] { second.Notify(); });
  });
  EXPECT_TRUE(second.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(TimerQueue, DestructionDropsPendingTimersWithoutRunningThem) {
  auto owned = std::make_shared<int>(1);
  std::weak_ptr<int> watch = owned;
  std::atomic<bool> ran{false};
  {
    TimerQueue timers;
    timers.After(absl::Hours(1), [owned = std::move(owned), &ran] { ran = true; });
  }
  EXPECT_TRUE(watch.expired());
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace tandem
