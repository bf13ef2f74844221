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

// Where the integration tests run the model: $TANDEM_TEST_DEVICE ("cpu" when unset; "cuda"
// on the GPU machine, see tests/gpu/cluster_check.sh). The workers get --device with it and
// the in-process reference engine uses it too.
std::string TestDevice();
// The KV transport prefill workers open: $TANDEM_TEST_KV_TRANSPORT, else tcp.
std::string TestKvTransport();

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEST_ENV_H_
