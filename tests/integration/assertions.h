// Status assertions for the integration tests (gtest 1.12 has no absl matchers).
#ifndef TANDEM_TESTS_INTEGRATION_ASSERTIONS_H_
#define TANDEM_TESTS_INTEGRATION_ASSERTIONS_H_

#include "gtest/gtest.h"

#define IT_CONCAT_INNER_(a, b) a##b
#define IT_CONCAT_(a, b) IT_CONCAT_INNER_(a, b)

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const auto& it_status_ = (expr);                          \
    ASSERT_TRUE(it_status_.ok()) << #expr ": " << it_status_; \
  } while (0)

#define EXPECT_OK(expr)                                       \
  do {                                                        \
    const auto& it_status_ = (expr);                          \
    EXPECT_TRUE(it_status_.ok()) << #expr ": " << it_status_; \
  } while (0)

// `ASSERT_OK_AND_ASSIGN(auto x, Foo());`: fails the test (returning from it) when not OK.
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  IT_ASSERT_OK_AND_ASSIGN_IMPL_(IT_CONCAT_(it_statusor_, __LINE__), lhs, expr)
#define IT_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr)       \
  auto statusor = (expr);                                        \
  ASSERT_TRUE(statusor.ok()) << #expr ": " << statusor.status(); \
  lhs = std::move(statusor).value()

#endif  // TANDEM_TESTS_INTEGRATION_ASSERTIONS_H_
