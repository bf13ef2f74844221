#include "common/serializer.h"

#include <utility>

namespace tandem {

void Serializer::Run(std::function<void()> fn) {
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
    if (running_) return;
    running_ = true;
  }
  while (true) {
    std::function<void()> next;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) {
        running_ = false;
        return;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next();
  }
}

}  // namespace tandem
