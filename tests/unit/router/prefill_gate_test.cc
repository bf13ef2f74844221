#include "router/prefill_gate.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace tandem::router {
namespace {

int OneWorker() { return 1; }

TEST(PrefillGate, AdmitsUpToTheBoundPerWorker) {
  int workers = 1;
  PrefillGate gate(100, [&] { return workers; });
  EXPECT_EQ(gate.Enqueue(60, nullptr), 0u);
  EXPECT_EQ(gate.Enqueue(40, nullptr), 0u);
  EXPECT_EQ(gate.in_flight(), 100);
  // Full: a third waits, taking nothing, until it leaves.
  bool admitted = false;
  const PrefillGate::Waiter waiter = gate.Enqueue(1, [&] { admitted = true; });
  ASSERT_NE(waiter, 0u);
  EXPECT_EQ(gate.waiting(), 1);
  EXPECT_TRUE(gate.Withdraw(waiter));
  EXPECT_FALSE(gate.Withdraw(waiter));  // gone already
  EXPECT_FALSE(admitted);
  EXPECT_EQ(gate.in_flight(), 100);
  EXPECT_EQ(gate.waiting(), 0);
  // Two workers double the bound.
  workers = 2;
  EXPECT_EQ(gate.Enqueue(100, nullptr), 0u);
  gate.Release(60);
  gate.Release(40);
  gate.Release(100);
  EXPECT_EQ(gate.in_flight(), 0);
}

TEST(PrefillGate, APromptLargerThanTheBoundPassesAlone) {
  PrefillGate gate(100, OneWorker);
  EXPECT_EQ(gate.Enqueue(5000, nullptr), 0u);
  int admitted = 0;
  ASSERT_NE(gate.Enqueue(1, [&] { ++admitted; }), 0u);
  gate.Release(5000);  // admits the waiter, on this thread
  EXPECT_EQ(admitted, 1);
  EXPECT_EQ(gate.in_flight(), 1);
}

TEST(PrefillGate, NoBoundWhenZero) {
  PrefillGate gate(0, OneWorker);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(gate.Enqueue(1 << 20, nullptr), 0u);
}

// Waiters are admitted in arrival order: a small prompt does not overtake a large one, and
// one that leaves lets the next in.
TEST(PrefillGate, FirstComeFirstServed) {
  PrefillGate gate(100, OneWorker);
  ASSERT_EQ(gate.Enqueue(100, nullptr), 0u);
  std::vector<int> admitted;
  const PrefillGate::Waiter big = gate.Enqueue(90, [&] { admitted.push_back(90); });
  const PrefillGate::Waiter middle = gate.Enqueue(20, [&] { admitted.push_back(20); });
  const PrefillGate::Waiter small = gate.Enqueue(5, [&] { admitted.push_back(5); });
  ASSERT_NE(big, 0u);
  ASSERT_NE(middle, 0u);
  ASSERT_NE(small, 0u);
  gate.Release(50);  // 50 in flight: the 90 at the front does not fit, so nobody enters
  EXPECT_TRUE(admitted.empty());
  gate.Release(50);  // empty: the 90 enters; the 20 does not fit, and the 5 waits behind it
  EXPECT_EQ(admitted, (std::vector<int>{90}));
  EXPECT_EQ(gate.waiting(), 2);
  EXPECT_FALSE(gate.Withdraw(big));    // admitted already: its tokens are held
  EXPECT_TRUE(gate.Withdraw(middle));  // leaving lets the 5 behind it in
  EXPECT_EQ(admitted, (std::vector<int>{90, 5}));
  EXPECT_EQ(gate.in_flight(), 95);
  EXPECT_EQ(gate.waiting(), 0);
}

// Admission runs on whichever thread releases; waiters that queue while others release
// all get in, exactly once.
TEST(PrefillGate, ConcurrentWaitersAreEachAdmittedOnce) {
  PrefillGate gate(10, OneWorker);
  constexpr int kWaiters = 400;
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kWaiters / 4; ++i) {
        if (gate.Enqueue(3, [&] { admitted.fetch_add(1); }) == 0) admitted.fetch_add(1);
      }
    });
  }
  std::thread releaser([&] {
    for (int released = 0; released < kWaiters;) {
      if (released < admitted.load()) {
        gate.Release(3);
        ++released;
      } else {
        std::this_thread::yield();
      }
    }
  });
  for (std::thread& t : threads) t.join();
  releaser.join();
  EXPECT_EQ(admitted.load(), kWaiters);
  EXPECT_EQ(gate.in_flight(), 0);
  EXPECT_EQ(gate.waiting(), 0);
}

}  // namespace
}  // namespace tandem::router
