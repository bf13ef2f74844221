// Polling without burning a core for long.
#ifndef TANDEM_COMMON_BACKOFF_H_
#define TANDEM_COMMON_BACKOFF_H_

#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tandem {

// Yields for the first ~thousand rounds (a layer's transfer takes microseconds to
// milliseconds), then sleeps 20 µs a round.
class Backoff {
 public:
  void Wait() {
    if (++rounds_ < 1000) {
      std::this_thread::yield();
    } else {
      absl::SleepFor(absl::Microseconds(20));
    }
  }

 private:
  int rounds_ = 0;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_BACKOFF_H_
