#include "tests/testing/test_certs.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace tandem::testing {
namespace {

// Runs `command` in `dir`, its output appended to dir/openssl.log.
absl::Status Run(const std::string& dir, const std::string& command) {
  const std::string line =
      absl::StrCat("cd '", dir, "' && { ", command, " ; } >> openssl.log 2>&1");
  if (std::system(line.c_str()) == 0) return absl::OkStatus();
  std::ifstream log(dir + "/openssl.log");
  std::stringstream text;
  text << log.rdbuf();
  return absl::InternalError(absl::StrCat("`", command, "` failed:\n", text.str()));
}

// A P-256 key and a certificate for `name` signed by `ca`.
absl::Status Issue(const std::string& dir, const std::string& ca, const std::string& name) {
  std::ofstream(absl::StrCat(dir, "/", name, ".ext"))
      << "basicConstraints=CA:FALSE\n"
         "keyUsage=critical,digitalSignature\n"
         "extendedKeyUsage=serverAuth,clientAuth\n"
         "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  return Run(dir, absl::StrCat(
                      "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                      "-keyout ", name, ".key -out ", name, ".csr -subj /CN=tandem-", name,
                      " && openssl x509 -req -in ", name, ".csr -CA ", ca, ".pem -CAkey ", ca,
                      ".key -CAcreateserial -days 2 -out ", name, ".pem -extfile ", name,
                      ".ext"));
}

absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Run(dir, absl::StrCat("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                               "-nodes -keyout ", name, ".key -out ", name, ".pem -days 2 "
                               "-subj '/CN=tandem test ", name, "' "
                               "-addext basicConstraints=critical,CA:TRUE "
                               "-addext keyUsage=critical,keyCertSign,cRLSign"));
}

}  // namespace

absl::StatusOr<TestCerts> MakeTestCerts(const std::string& dir) {
  for (const char* ca : {"ca", "rogue-ca"}) {
    if (absl::Status s = MakeCa(dir, ca); !s.ok()) return s;
  }
  for (const auto& [ca, name] : {std::pair{"ca", "router"}, std::pair{"ca", "worker"},
                                 std::pair{"rogue-ca", "rogue-worker"}}) {
    if (absl::Status s = Issue(dir, ca, name); !s.ok()) return s;
  }
  TestCerts c;
  c.ca = dir + "/ca.pem";
  c.router_cert = dir + "/router.pem";
  c.router_key = dir + "/router.key";
  c.worker_cert = dir + "/worker.pem";
  c.worker_key = dir + "/worker.key";
  c.rogue_ca = dir + "/rogue-ca.pem";
  c.rogue_worker_cert = dir + "/rogue-worker.pem";
  c.rogue_worker_key = dir + "/rogue-worker.key";
  return c;
}

}  // namespace tandem::testing
