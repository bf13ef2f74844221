// Which KV blocks the step in flight writes, for a runner whose forward pass runs
// asynchronously (the CUDA runner): a KV read from another thread must wait for the step
// only when the step writes one of the blocks it reads. Data that earlier steps wrote is
// complete, because a step's Forward returns only after its work has finished.
//
// Without it, a prefill worker's transfer thread that reads layer l just after the next
// step began would wait for that step's layer l (the layer's event is re-recorded by every
// step), adding up to a whole step to the request's time to first token.
#ifndef TANDEM_ENGINE_STEP_KV_WRITES_H_
#define TANDEM_ENGINE_STEP_KV_WRITES_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"

namespace tandem {

class StepKvWrites {
 public:
  // A step that writes the tokens at `slots` (block * block_size + offset; negative: none)
  // begins. The engine thread only.
  void Begin(absl::Span<const int64_t> slots, int block_size) {
    std::vector<int32_t> blocks;
    blocks.reserve(slots.size());
    for (int64_t slot : slots) {
      if (slot >= 0) blocks.push_back(static_cast<int32_t>(slot / block_size));
    }
    std::sort(blocks.begin(), blocks.end());
    blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
    absl::MutexLock lock(&mu_);
    blocks_.swap(blocks);
  }
  // The step's work has finished (or failed). The engine thread only.
  void End() {
    absl::MutexLock lock(&mu_);
    blocks_.clear();
  }
  // Whether a step in flight writes any of `blocks`. Any thread.
  bool Touches(absl::Span<const int32_t> blocks) const {
    absl::MutexLock lock(&mu_);
    for (int32_t b : blocks) {
      if (std::binary_search(blocks_.begin(), blocks_.end(), b)) return true;
    }
    return false;
  }

 private:
  mutable absl::Mutex mu_;
  // Sorted, unique; empty when no step is in flight.
  std::vector<int32_t> blocks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_STEP_KV_WRITES_H_
