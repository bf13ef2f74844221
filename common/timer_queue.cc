#include "common/timer_queue.h"

#include <utility>

namespace tandem {

TimerQueue::TimerQueue() : thread_([this] { Run(); }) {}

TimerQueue::~TimerQueue() {
  std::map<std::pair<absl::Time, Id>, std::function<void()>> dropped;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  {
    absl::MutexLock lock(&mu_);
    dropped.swap(timers_);
    when_.clear();
  }
  // `dropped` goes here, outside the lock.
}

TimerQueue::Id TimerQueue::At(absl::Time when, std::function<void()> fn) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return 0;  // NOTE: `fn` is destroyed on return, after the lock is released
  const Id id = next_id_++;
  timers_.emplace(std::make_pair(when, id), std::move(fn));
  when_.emplace(id, when);
  return id;
}

bool TimerQueue::Cancel(Id id) {
  std::function<void()> dropped;  // destroyed last, outside the lock
  absl::MutexLock lock(&mu_);
  auto it = when_.find(id);
  if (it == when_.end()) return false;
  auto timer = timers_.find(std::make_pair(it->second, id));
  dropped = std::move(timer->second);
  timers_.erase(timer);
  when_.erase(it);
  return true;
}

int TimerQueue::pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(timers_.size());
}

void TimerQueue::Run() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    const absl::Time next = timers_.empty() ? absl::InfiniteFuture() : timers_.begin()->first.first;
    if (absl::Now() < next) {
      // Woken by a stop or by an earlier timer; otherwise by the deadline.
      auto changed = [this, next]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || (!timers_.empty() && timers_.begin()->first.first < next);
      };
      mu_.AwaitWithDeadline(absl::Condition(&changed), next);
      continue;
    }
    auto first = timers_.begin();
    std::function<void()> fn = std::move(first->second);
    when_.erase(first->first.second);
    timers_.erase(first);
    mu_.Unlock();
    fn();
    fn = nullptr;
    mu_.Lock();
  }
}

}  // namespace tandem
