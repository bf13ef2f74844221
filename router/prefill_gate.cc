#include "router/prefill_gate.h"

#include <algorithm>
#include <utility>

namespace tandem::router {

int64_t PrefillGate::Bound() const {
  return tokens_per_worker_ <= 0 ? 0 : tokens_per_worker_ * std::max(1, prefill_workers_());
}

bool PrefillGate::Fits(int64_t tokens, int64_t bound) const {
  return bound <= 0 || in_flight_ == 0 || in_flight_ + tokens <= bound;
}

std::vector<std::function<void()>> PrefillGate::AdmitLocked() {
  std::vector<std::function<void()>> admitted;
  if (queue_.empty()) return admitted;
  const int64_t bound = Bound();  // one look at the registry for the whole pass
  while (!queue_.empty() && Fits(queue_.front().tokens, bound)) {
    in_flight_ += queue_.front().tokens;
    admitted.push_back(std::move(queue_.front().admitted));
    queue_.pop_front();
  }
  return admitted;
}

void PrefillGate::RunAll(std::vector<std::function<void()>> callbacks) {
  for (std::function<void()>& fn : callbacks) fn();
}

PrefillGate::Waiter PrefillGate::Enqueue(int64_t tokens, std::function<void()> admitted) {
  absl::MutexLock lock(&mu_);
  if (queue_.empty() && Fits(tokens, Bound())) {
    in_flight_ += tokens;
    return 0;
  }
  const Waiter id = next_id_++;
  queue_.push_back(Waiting{id, tokens, std::move(admitted)});
  return id;
}

bool PrefillGate::Withdraw(Waiter id) {
  std::vector<std::function<void()>> admitted;
  {
    absl::MutexLock lock(&mu_);
    auto it =
        std::find_if(queue_.begin(), queue_.end(), [id](const Waiting& w) { return w.id == id; });
    if (it == queue_.end()) return false;
    queue_.erase(it);
    admitted = AdmitLocked();  // the waiter behind it may fit
  }
  RunAll(std::move(admitted));
  return true;
}

void PrefillGate::Release(int64_t tokens) {
  std::vector<std::function<void()>> admitted;
  {
    absl::MutexLock lock(&mu_);
    in_flight_ -= tokens;
    admitted = AdmitLocked();
  }
  RunAll(std::move(admitted));
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
