// Runs callbacks at given times on one thread of its own: the timers of code that must not
// block a thread to wait (the router's per-request backoffs, pauses and queue deadlines).
// Callbacks should be short (post the work elsewhere): a slow one delays every later timer.
//
// Thread-safe.
#ifndef TANDEM_COMMON_TIMER_QUEUE_H_
#define TANDEM_COMMON_TIMER_QUEUE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem {

class TimerQueue {
 public:
  using Id = uint64_t;

  TimerQueue();
  // Stops the thread; callbacks not yet run are destroyed without running, outside the
  // queue's lock (what they own may call Cancel, or At, which then schedules nothing).
  ~TimerQueue();
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs `fn` once, on the queue's thread, at `when` or soon after (at once when it has
  // passed). Timers due at the same time run in the order they were scheduled. After the
  // destructor has begun, `fn` is destroyed without running and 0 is returned.
  Id At(absl::Time when, std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  Id After(absl::Duration delay, std::function<void()> fn) {
    return At(absl::Now() + delay, std::move(fn));
  }

  // True when the timer had not started running: it never will, and its callback is
  // destroyed before Cancel returns. False when it ran, is running, or was cancelled.
  bool Cancel(Id id) ABSL_LOCKS_EXCLUDED(mu_);

  // Timers scheduled and neither run nor cancelled.
  int pending() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  // By (when, id): ids grow, so equal times keep their order.
  std::map<std::pair<absl::Time, Id>, std::function<void()>> timers_ ABSL_GUARDED_BY(mu_);
  std::map<Id, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  Id next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the fields above exist
};

}  // namespace tandem

#endif  // TANDEM_COMMON_TIMER_QUEUE_H_
