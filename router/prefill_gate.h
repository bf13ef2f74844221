// Bounds the prompt tokens the router has handed to prefill workers and not yet seen
// prefilled. A disaggregated request reserves KV blocks on its decode worker before its
// prefill starts, and the reservation expires if the KV does not arrive in time; without a
// bound, a burst queues more prompts at the prefill workers than they finish before the
// deadline, and the requests at the back fail while holding decode memory for nothing.
// Behind the gate a request waits in the router, holding nothing (no thread either), first
// come first served.
//
// Thread-safe.
#ifndef TANDEM_ROUTER_PREFILL_GATE_H_
#define TANDEM_ROUTER_PREFILL_GATE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem::router {

class PrefillGate {
 public:
  using Waiter = uint64_t;

  // `tokens_per_worker`: what each serving prefill worker may have queued (<= 0: no bound);
  // `prefill_workers()`: how many serve now (read under the gate's lock: it must not call
  // back into the gate).
  PrefillGate(int64_t tokens_per_worker, std::function<int()> prefill_workers)
      : tokens_per_worker_(tokens_per_worker), prefill_workers_(std::move(prefill_workers)) {}

  // Takes `tokens` at once and returns 0 when they fit under tokens_per_worker x
  // prefill_workers() and nobody waits ahead (a prompt larger than the whole bound passes
  // when nothing else is in flight). Otherwise queues them and returns the waiter's id:
  // `admitted` runs once they are taken, on the thread of the Release or Withdraw that made
  // room, unless Withdraw(id) returned true before.
  Waiter Enqueue(int64_t tokens, std::function<void()> admitted) ABSL_LOCKS_EXCLUDED(mu_);
  // Leaves the queue: true when the waiter was still waiting (it never will be admitted);
  // false when it was admitted already (its `admitted` has run or is about to, and its
  // tokens must be Released).
  bool Withdraw(Waiter id) ABSL_LOCKS_EXCLUDED(mu_);
  // Gives back what one admission took.
  void Release(int64_t tokens) ABSL_LOCKS_EXCLUDED(mu_);

  int64_t in_flight() const ABSL_LOCKS_EXCLUDED(mu_);
  int waiting() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Waiting {
    Waiter id;
    int64_t tokens;
    std::function<void()> admitted;
  };
  // tokens_per_worker x the serving prefill workers (0: no bound).
  int64_t Bound() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Fits(int64_t tokens, int64_t bound) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Admits the waiters at the front that fit; returns their callbacks to run unlocked.
  std::vector<std::function<void()>> AdmitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void RunAll(std::vector<std::function<void()>> callbacks);

  const int64_t tokens_per_worker_;
  const std::function<int()> prefill_workers_;
  mutable absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);  // oldest first
  Waiter next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PREFILL_GATE_H_
