// Runs closures one at a time, in the order they were posted, without a thread of its own:
// the thread that posts into an idle serializer runs what is queued until the queue is
// empty; a post while another thread runs only queues. The state a serializer guards needs
// no lock, and a closure may post (the post queues and returns), so callbacks that gRPC or
// a timer may invoke from any thread, or from inside the call that started them, can all
// go through it (gRPC core's WorkSerializer does the same).
//
// Thread-safe. The owner must outlive every Run in progress.
#ifndef TANDEM_COMMON_SERIALIZER_H_
#define TANDEM_COMMON_SERIALIZER_H_

#include <deque>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace tandem {

class Serializer {
 public:
  // Runs `fn` now, on this thread, when nothing else runs or is queued; otherwise queues it
  // for the thread that runs.
  void Run(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_SERIALIZER_H_
