#include "common/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <thread>
#include <vector>

#include "common/logging.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TANDEM_CPU_RELAX() _mm_pause()
#else
#define TANDEM_CPU_RELAX() ((void)0)
#endif

namespace tandem {
namespace {

// How long an idle worker (or the waiting caller) spins before it sleeps. A decode step
// issues parallel regions every few microseconds, so spinning through the gaps avoids a
// futex wake (~5-20 µs) per region; past this, the thread sleeps so an idle pool costs
// nothing.
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr auto kSpinBeforeYield = std::chrono::microseconds(20);

void FutexWait(std::atomic<uint32_t>* addr, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// Spins until pred() holds or kSpinTime passes; returns whether pred() held. Past the first
// few microseconds it also yields the core, so that when threads outnumber free cores (a
// loaded machine, or a pool larger than the machine) the thread being waited for can run.
template <typename Pred>
bool SpinUntil(Pred pred) {
  const auto start = std::chrono::steady_clock::now();
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      TANDEM_CPU_RELAX();
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    if (elapsed > kSpinTime) return pred();
    if (elapsed > kSpinBeforeYield) sched_yield();
  }
}

}  // namespace

struct ThreadPool::Impl {
  int num_threads = 1;
  std::vector<std::thread> workers;

  // Bumped by Run (and by shutdown) to release the workers; workers futex-wait on it.
  alignas(64) std::atomic<uint32_t> generation{0};
  // Workers currently in (or entering) FutexWait on `generation`; Run skips the wake
  // syscall when it is zero.
  alignas(64) std::atomic<int> sleepers{0};
  // (job << 32) | the next thread index of that job to hand out. Indices 1.. are claimed
  // by whichever thread gets there first, the caller included: on a loaded machine a
  // descheduled worker's share is done by the caller instead of waited for.
  alignas(64) std::atomic<uint64_t> claim{0};
  // Indices >= 1 of the current job that have finished; the caller waits for
  // num_threads - 1, and the thread that completes the count wakes it if it slept.
  alignas(64) std::atomic<uint32_t> done{0};
  std::atomic<bool> caller_sleeping{false};

  // The current job; written before `claim` is published (release) and read only by a
  // thread holding a claim of that job (acquire), so never while it is rewritten.
  alignas(64) const absl::FunctionRef<void(int, int)>* fn = nullptr;
  std::atomic<bool> stop{false};  // read by workers that may wake for an earlier Run

  // Runs unclaimed indices of the current job until none is left.
  void Help() {
    uint64_t c = claim.load(std::memory_order_acquire);
    while (true) {
      const uint32_t index = static_cast<uint32_t>(c);
      if (index >= static_cast<uint32_t>(num_threads)) return;
      if (!claim.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
      (*fn)(static_cast<int>(index), num_threads);
      if (done.fetch_add(1, std::memory_order_seq_cst) + 1 ==
              static_cast<uint32_t>(num_threads - 1) &&
          caller_sleeping.load(std::memory_order_seq_cst)) {
        FutexWakeAll(&done);
      }
      c = claim.load(std::memory_order_acquire);
    }
  }

  void WorkerLoop() {
    uint32_t seen = 0;
    while (true) {
      uint32_t g = generation.load(std::memory_order_acquire);
      if (g == seen) {
        SpinUntil([&] { return generation.load(std::memory_order_acquire) != seen; });
        g = generation.load(std::memory_order_acquire);
      }
      if (g == seen) {
        // seq_cst pairs with Run's increment-then-read of `sleepers`: either Run sees this
        // sleeper and wakes it, or this thread sees the new generation.
        sleepers.fetch_add(1, std::memory_order_seq_cst);
        while ((g = generation.load(std::memory_order_seq_cst)) == seen) {
          FutexWait(&generation, seen);
        }
        sleepers.fetch_sub(1, std::memory_order_relaxed);
      }
      seen = g;
      if (stop.load(std::memory_order_acquire)) return;
      Help();
    }
  }
};

ThreadPool::ThreadPool(int num_threads) : impl_(new Impl) {
  if (num_threads <= 0) {
    num_threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }
  impl_->num_threads = num_threads;
  impl_->workers.reserve(num_threads - 1);
  for (int i = 1; i < num_threads; ++i) {
    impl_->workers.emplace_back([this] { impl_->WorkerLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  impl_->stop.store(true, std::memory_order_release);
  impl_->generation.fetch_add(1, std::memory_order_seq_cst);
  FutexWakeAll(&impl_->generation);
  for (std::thread& t : impl_->workers) t.join();
  delete impl_;
}

int ThreadPool::num_threads() const { return impl_->num_threads; }

void ThreadPool::Run(absl::FunctionRef<void(int thread_index, int num_threads)> fn) {
  Impl& p = *impl_;
  if (p.num_threads == 1) {
    fn(0, 1);
    return;
  }
  p.fn = &fn;
  p.done.store(0, std::memory_order_relaxed);
  const uint64_t job = (p.claim.load(std::memory_order_relaxed) >> 32) + 1;
  p.claim.store(job << 32 | 1, std::memory_order_release);
  p.generation.fetch_add(1, std::memory_order_seq_cst);
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&p.generation);

  fn(0, p.num_threads);
  p.Help();

  const uint32_t all = static_cast<uint32_t>(p.num_threads - 1);
  if (!SpinUntil([&] { return p.done.load(std::memory_order_acquire) == all; })) {
    p.caller_sleeping.store(true, std::memory_order_seq_cst);
    uint32_t now;
    while ((now = p.done.load(std::memory_order_seq_cst)) != all) FutexWait(&p.done, now);
    p.caller_sleeping.store(false, std::memory_order_relaxed);
  }
  p.fn = nullptr;
}

void ThreadPool::ParallelFor(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn) {
  if (n <= 0) return;
  const int threads = num_threads();
  if (threads == 1 || n == 1) {
    fn(0, n);
    return;
  }
  Run([&](int t, int nt) {
    const int64_t begin = n * t / nt;
    const int64_t end = n * (t + 1) / nt;
    if (begin < end) fn(begin, end);
  });
}

}  // namespace tandem
