#include "router/prefill_gate.h"

#include <algorithm>

namespace tandem::router {
namespace {

// How often a waiter looks at its client and the worker count while it waits.
constexpr absl::Duration kRecheck = absl::Milliseconds(20);

}  // namespace

bool PrefillGate::Acquire(int64_t tokens, const std::function<int()>& prefill_workers,
                          absl::Time deadline, const std::function<bool()>& gone) {
  if (tokens_per_worker_ <= 0) return true;
  absl::MutexLock lock(&mu_);
  const uint64_t ticket = next_ticket_++;
  queue_.push_back(ticket);
  while (true) {
    if (queue_.front() == ticket) {
      const int64_t bound = tokens_per_worker_ * std::max(1, prefill_workers());
      if (in_flight_ == 0 || in_flight_ + tokens <= bound) {
        queue_.pop_front();
        in_flight_ += tokens;
        changed_.SignalAll();  // the next in line may fit too
        return true;
      }
    }
    mu_.Unlock();
    const bool give_up = gone() || absl::Now() >= deadline;
    mu_.Lock();
    if (give_up) {
      queue_.erase(std::find(queue_.begin(), queue_.end(), ticket));
      changed_.SignalAll();
      return false;
    }
    // Woken by Release and by the waiter ahead leaving; the timeout also notices a
    // cancelled client and a changed worker count.
    changed_.WaitWithTimeout(&mu_, kRecheck);
  }
}

void PrefillGate::Release(int64_t tokens) {
  if (tokens_per_worker_ <= 0) return;
  absl::MutexLock lock(&mu_);
  in_flight_ -= tokens;
  changed_.SignalAll();
}

int64_t PrefillGate::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

int PrefillGate::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

}  // namespace tandem::router
