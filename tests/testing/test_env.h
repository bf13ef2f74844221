// Paths the tests share: the source tree (golden data) and the default model.
#ifndef TANDEM_TESTS_TESTING_TEST_ENV_H_
#define TANDEM_TESTS_TESTING_TEST_ENV_H_

#include <string>

namespace tandem::testing {

// Root of the source tree, for tests/golden/ data.
std::string SourceDir();
// Path of the default model (SmolLM2-135M-Instruct Q4_1): $TANDEM_TEST_MODEL if set, else
// $TANDEM_HOME/models/<file> (TANDEM_HOME defaults to ~/.cache/tandem). Tests that need it
// fail (they do not skip) when it is missing: `tandem model pull` fetches it.
std::string DefaultModelPath();

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEST_ENV_H_
