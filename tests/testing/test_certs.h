// Certificates for the TLS tests, made at test time with the `openssl` CLI: a CA, a router
// and a worker certificate it signed (SANs localhost and 127.0.0.1, usable as server and as
// client certificates), and a second, unrelated CA with a "rogue" worker certificate.
#ifndef TANDEM_TESTS_TESTING_TEST_CERTS_H_
#define TANDEM_TESTS_TESTING_TEST_CERTS_H_

#include <string>

#include "absl/status/statusor.h"

namespace tandem::testing {

struct TestCerts {
  std::string ca;  // PEM paths
  std::string router_cert, router_key;
  std::string worker_cert, worker_key;
  std::string rogue_ca;
  std::string rogue_worker_cert, rogue_worker_key;  // signed by rogue_ca
};

// Writes the files into `dir` (which must exist). INTERNAL with openssl's output when a
// command fails.
absl::StatusOr<TestCerts> MakeTestCerts(const std::string& dir);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEST_CERTS_H_
