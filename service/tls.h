// TLS for tandem's gRPC servers and channels (docs/SERVING.md, Security): the PEM files a
// process was given (--tls-cert, --tls-key, --tls-ca), checked once at startup, and the gRPC
// credentials made from them. Empty files mean plaintext: every function below then gives
// the insecure credentials, so callers need no branch.
#ifndef TANDEM_SERVICE_TLS_H_
#define TANDEM_SERVICE_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace tandem {

// Paths, as given on the command line; empty: not given.
struct TlsFiles {
  std::string cert;  // --tls-cert: this process's certificate chain (PEM)
  std::string key;   // --tls-key: its private key (PEM, unencrypted)
  std::string ca;    // --tls-ca: the CA that signs the peers' certificates (PEM)

  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// The files' contents.
struct TlsPem {
  std::string cert;
  std::string key;
  std::string ca;

  bool has_identity() const { return !cert.empty(); }
};

// Reads every file given and checks it: a certificate (chain) in --tls-cert and --tls-ca, a
// private key in --tls-key that matches the certificate. NOT_FOUND when a file cannot be
// read, INVALID_ARGUMENT when it does not hold what it should; both name the flag and path.
absl::StatusOr<TlsPem> LoadTlsFiles(const TlsFiles& files);

// Who a server asks for a client certificate.
enum class ClientCertPolicy {
  kNone,              // plain TLS
  kRequestAndVerify,  // a client may present one, and if it does it must verify against ca
  kRequireAndVerify,  // every client must present one that verifies against ca
};

// TLS with pem's certificate (and, for a client-cert policy, pem.ca to verify clients by);
// insecure when pem has no certificate.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsPem& pem,
                                                               ClientCertPolicy policy);

// TLS verifying the server by pem.ca, presenting pem's certificate when it has one;
// insecure when pem has no ca.
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsPem& pem);

// A public client's channel: TLS verifying the router by the CA in `ca_path` (--tls-ca;
// empty: plaintext). Errors as LoadTlsFiles.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientChannelCredentials(
    const std::string& ca_path);

}  // namespace tandem

#endif  // TANDEM_SERVICE_TLS_H_
