// A watchdog for blocking calls that take no deadline of their own (a gRPC stream's Read):
// Arm(deadline) before the call, Disarm() after it; if the deadline passes first, the
// alarm's thread runs `on_expiry` once (typically ServerContext/ClientContext::TryCancel,
// which makes the blocked call return).
#ifndef TANDEM_COMMON_DEADLINE_ALARM_H_
#define TANDEM_COMMON_DEADLINE_ALARM_H_

#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem {

class DeadlineAlarm {
 public:
  // `on_expiry` runs on the alarm's thread while Arm and Disarm wait: it must not call them.
  explicit DeadlineAlarm(std::function<void()> on_expiry);
  // Stops the thread; `on_expiry` does not run after this returns.
  ~DeadlineAlarm();
  DeadlineAlarm(const DeadlineAlarm&) = delete;
  DeadlineAlarm& operator=(const DeadlineAlarm&) = delete;

  // Replaces the armed deadline (InfiniteFuture: none).
  void Arm(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  void Disarm() ABSL_LOCKS_EXCLUDED(mu_) { Arm(absl::InfiniteFuture()); }
  // How many times the alarm went off.
  int fired() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  const std::function<void()> on_expiry_;
  mutable absl::Mutex mu_;
  absl::Time deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int fired_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: starts once the fields above exist
};

}  // namespace tandem

#endif  // TANDEM_COMMON_DEADLINE_ALARM_H_
