#include "common/serializer.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(Serializer, RunsAtOnceWhenIdle) {
  Serializer serializer;
  int ran = 0;
  serializer.Run([&] { ++ran; });
  EXPECT_EQ(ran, 1);
}

// A closure that posts does not recurse: the posted one runs after it returns, in order.
TEST(Serializer, APostFromInsideRunsAfterTheCurrentClosure) {
  Serializer serializer;
  std::vector<int> order;
  serializer.Run([&] {
    order.push_back(1);
    serializer.Run([&] { order.push_back(3); });
    serializer.Run([&] { order.push_back(4); });
    order.push_back(2);
  });
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4}));
}

// Closures posted from many threads never overlap, and none is lost. The counter is not
// atomic on purpose: overlapping closures would lose increments (and ThreadSanitizer would
// name the race).
TEST(Serializer, ClosuresFromManyThreadsNeverOverlap) {
  Serializer serializer;
  int counter = 0;
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  constexpr int kThreads = 4;
  constexpr int kEach = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        serializer.Run([&] {
          if (inside.fetch_add(1) != 0) overlapped = true;
          ++counter;
          inside.fetch_sub(1);
        });
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_FALSE(overlapped);
  EXPECT_EQ(counter, kThreads * kEach);
}

}  // namespace
}  // namespace tandem
