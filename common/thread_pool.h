// A fixed pool of worker threads for data-parallel kernels. The caller's thread takes part
// as thread 0, so ThreadPool(1) runs everything inline. Dispatch is a spin-then-sleep
// barrier: a decode step issues hundreds of small parallel regions, so the cost of one
// Run() must stay in the low microseconds.
#ifndef TANDEM_COMMON_THREAD_POOL_H_
#define TANDEM_COMMON_THREAD_POOL_H_

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace tandem {

class ThreadPool {
 public:
  // `num_threads` counts the caller; <= 0 means the machine's hardware concurrency.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;

  // Runs fn(thread_index, num_threads) once for every thread_index in [0, num_threads) and
  // returns when all have finished. The caller runs index 0; workers claim the others, and
  // the caller also runs any index no worker has claimed by the time it is done (a worker
  // the OS has not scheduled is not waited for), so an index names a share of the work, not
  // an OS thread. Not reentrant: fn must not call Run on the same pool. Only one thread may
  // call Run at a time (the engine thread).
  void Run(absl::FunctionRef<void(int thread_index, int num_threads)> fn);

  // Splits [0, n) into contiguous ranges, one per thread, and runs fn(begin, end) on each
  // non-empty range.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace tandem

#endif  // TANDEM_COMMON_THREAD_POOL_H_
