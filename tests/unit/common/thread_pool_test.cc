#include "common/thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(ThreadPoolTest, RunCallsEveryThreadOnceWithCallerAsZero) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    std::vector<std::atomic<int>> calls(threads);
    const std::thread::id caller = std::this_thread::get_id();
    std::atomic<bool> zero_on_caller{false};
    pool.Run([&](int t, int nt) {
      EXPECT_EQ(nt, threads);
      calls[t].fetch_add(1);
      if (t == 0) zero_on_caller = std::this_thread::get_id() == caller;
    });
    for (int t = 0; t < threads; ++t) EXPECT_EQ(calls[t].load(), 1) << t;
    EXPECT_TRUE(zero_on_caller.load());
  }
}

// Workers take part: while the caller is busy with index 0, the other indices run on
// other OS threads.
TEST(ThreadPoolTest, WorkersRunIndicesConcurrently) {
  ThreadPool pool(3);
  std::vector<std::thread::id> ran_on(3);
  pool.Run([&](int t, int) {
    ran_on[t] = std::this_thread::get_id();
    if (t == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  });
  EXPECT_NE(ran_on[1], ran_on[0]);
  EXPECT_NE(ran_on[2], ran_on[0]);
}

// A worker that is not scheduled in time does not hold up Run: its index runs on the caller.
TEST(ThreadPoolTest, CallerRunsIndicesNoWorkerClaimed) {
  ThreadPool pool(2);
  std::atomic<int> calls{0};
  for (int i = 0; i < 1000; ++i) {
    pool.Run([&](int, int) { calls.fetch_add(1); });
  }
  EXPECT_EQ(calls.load(), 2000);
}

TEST(ThreadPoolTest, DefaultUsesHardwareConcurrency) {
  ThreadPool pool(0);
  EXPECT_GE(pool.num_threads(), 1);
}

// Also with more threads than this machine has cores: spinning must not stall the pool.
TEST(ThreadPoolTest, ManyRegionsBackToBack) {
  for (int threads : {2, 4}) {
    ThreadPool pool(threads);
    std::vector<int64_t> sums(threads, 0);
    const int regions = threads == 2 ? 20000 : 2000;
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < regions; ++r) {
      pool.Run([&](int t, int) { sums[t] += r; });
    }
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count() /
        regions;
    const int64_t expected = int64_t{regions} * (regions - 1) / 2;
    for (int64_t s : sums) EXPECT_EQ(s, expected);
    std::printf("%d threads: %.2f us per Run\n", threads, us);
  }
}

TEST(ThreadPoolTest, RunAfterIdleSleepWakesWorkers) {
  ThreadPool pool(3);
  std::atomic<int> count{0};
  pool.Run([&](int, int) { count.fetch_add(1); });
  // Longer than the spin window: the workers are asleep on the futex now.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  pool.Run([&](int, int) { count.fetch_add(1); });
  EXPECT_EQ(count.load(), 6);
}

TEST(ThreadPoolTest, CallerWaitsForSlowWorker) {
  ThreadPool pool(2);
  std::atomic<bool> done{false};
  pool.Run([&](int t, int) {
    if (t == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      done = true;
    }
  });
  EXPECT_TRUE(done.load());
}

TEST(ThreadPoolTest, ParallelForCoversRangeExactlyOnce) {
  ThreadPool pool(3);
  for (int64_t n : {0, 1, 2, 3, 7, 1000}) {
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int> calls{0};
    pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
      EXPECT_LT(begin, end);
      calls.fetch_add(1);
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
    EXPECT_LE(calls.load(), 3);
  }
}

TEST(ThreadPoolTest, DestroyWhileWorkersSleep) {
  for (int i = 0; i < 20; ++i) {
    ThreadPool pool(3);
    pool.Run([](int, int) {});
    if (i % 2 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

}  // namespace
}  // namespace tandem
