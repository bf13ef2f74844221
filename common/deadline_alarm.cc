#include "common/deadline_alarm.h"

#include <utility>

namespace tandem {

DeadlineAlarm::DeadlineAlarm(std::function<void()> on_expiry)
    : on_expiry_(std::move(on_expiry)), thread_([this] { Run(); }) {}

DeadlineAlarm::~DeadlineAlarm() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void DeadlineAlarm::Arm(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  deadline_ = deadline;
}

int DeadlineAlarm::fired() const {
  absl::MutexLock lock(&mu_);
  return fired_;
}

void DeadlineAlarm::Run() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time deadline = deadline_;
    auto changed = [this, deadline]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_ || deadline_ != deadline;
    };
    // True: stopped or re-armed before the deadline; look again.
    if (mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) continue;
    deadline_ = absl::InfiniteFuture();
    ++fired_;
    on_expiry_();
  }
}

}  // namespace tandem
