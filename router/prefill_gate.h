// Bounds the prompt tokens the router has handed to prefill workers and not yet seen
// prefilled. A disaggregated request reserves KV blocks on its decode worker before its
// prefill starts, and the reservation expires if the KV does not arrive in time; without a
// bound, a burst queues more prompts at the prefill workers than they finish before the
// deadline, and the requests at the back fail while holding decode memory for nothing.
// Behind the gate a request waits in the router, holding nothing, first come first served.
//
// Thread-safe.
#ifndef TANDEM_ROUTER_PREFILL_GATE_H_
#define TANDEM_ROUTER_PREFILL_GATE_H_

#include <cstdint>
#include <deque>
#include <functional>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tandem::router {

class PrefillGate {
 public:
  // `tokens_per_worker`: what each serving prefill worker may have queued (<= 0: no bound).
  explicit PrefillGate(int64_t tokens_per_worker) : tokens_per_worker_(tokens_per_worker) {}

  // Waits for `tokens` to fit under tokens_per_worker x prefill_workers() (a prompt larger
  // than the whole bound passes when nothing else is in flight), in arrival order. False
  // when gone() turned true or `deadline` passed first; then nothing was taken.
  bool Acquire(int64_t tokens, const std::function<int()>& prefill_workers, absl::Time deadline,
               const std::function<bool()>& gone);
  // Gives back what one Acquire took.
  void Release(int64_t tokens);

  int64_t in_flight() const;
  int waiting() const;

 private:
  const int64_t tokens_per_worker_;
  mutable absl::Mutex mu_;
  absl::CondVar changed_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<uint64_t> queue_ ABSL_GUARDED_BY(mu_);  // waiters' tickets, oldest first
  uint64_t next_ticket_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_PREFILL_GATE_H_
