#include "engine/step_kv_writes.h"

#include <vector>

#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(StepKvWritesTest, TouchesOnlyTheBlocksOfTheStepInFlight) {
  StepKvWrites writes;
  const std::vector<int32_t> reader = {3, 4, 5};
  EXPECT_FALSE(writes.Touches(reader));  // no step yet

  // Block size 16: slots 16..31 are block 1, 112 is block 7; -1 writes nothing.
  const std::vector<int64_t> slots = {16, 17, 31, 112, -1};
  writes.Begin(slots, 16);
  EXPECT_FALSE(writes.Touches(reader));
  EXPECT_TRUE(writes.Touches(std::vector<int32_t>{9, 7}));
  EXPECT_TRUE(writes.Touches(std::vector<int32_t>{1}));
  EXPECT_FALSE(writes.Touches(std::vector<int32_t>{0, 2, 6, 8}));
  EXPECT_FALSE(writes.Touches({}));

  // Finished: nothing is in flight, whatever it wrote.
  writes.End();
  EXPECT_FALSE(writes.Touches(std::vector<int32_t>{1, 7}));

  // The next step replaces the set.
  writes.Begin(std::vector<int64_t>{5 * 16 + 3}, 16);
  EXPECT_TRUE(writes.Touches(reader));
  EXPECT_FALSE(writes.Touches(std::vector<int32_t>{1, 7}));
}

}  // namespace
}  // namespace tandem
