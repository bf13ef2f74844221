#include "service/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem {
namespace {

absl::StatusOr<std::string> ReadPemFile(const char* flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return absl::NotFoundError(Cat("cannot read ", flag, " file '", path, "': ",
                                   std::strerror(err)));
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::NotFoundError(Cat("cannot read ", flag, " file '", path, "'"));
  return text;
}

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;

BioPtr MemoryBio(const std::string& text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// Refuses a passphrase prompt: keys must be unencrypted.
int NoPassphrase(char*, int, int, void*) { return -1; }

// The first certificate in `text`; null when there is none.
X509Ptr FirstCertificate(const std::string& text) {
  BioPtr bio = MemoryBio(text);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  ERR_clear_error();
  return cert;
}

absl::StatusOr<X509Ptr> ParseCertificate(const char* flag, const std::string& path,
                                         const std::string& text) {
  X509Ptr cert = FirstCertificate(text);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(Cat(flag, " file '", path,
                                          "' holds no PEM certificate "
                                          "('-----BEGIN CERTIFICATE-----')"));
  }
  return cert;
}

}  // namespace

absl::StatusOr<TlsPem> LoadTlsFiles(const TlsFiles& files) {
  TlsPem pem;
  X509Ptr cert;
  if (!files.cert.empty()) {
    ASSIGN_OR_RETURN(pem.cert, ReadPemFile("--tls-cert", files.cert));
    ASSIGN_OR_RETURN(cert, ParseCertificate("--tls-cert", files.cert, pem.cert));
  }
  if (!files.key.empty()) {
    ASSIGN_OR_RETURN(pem.key, ReadPemFile("--tls-key", files.key));
    BioPtr bio = MemoryBio(pem.key);
    KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
    ERR_clear_error();
    if (key == nullptr) {
      return absl::InvalidArgumentError(Cat("--tls-key file '", files.key,
                                            "' holds no PEM private key (an encrypted key "
                                            "is not supported)"));
    }
    if (cert != nullptr && X509_check_private_key(cert.get(), key.get()) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(Cat("--tls-key file '", files.key,
                                            "' does not match the certificate in --tls-cert '",
                                            files.cert, "'"));
    }
  }
  if (!files.ca.empty()) {
    ASSIGN_OR_RETURN(pem.ca, ReadPemFile("--tls-ca", files.ca));
    RETURN_IF_ERROR(ParseCertificate("--tls-ca", files.ca, pem.ca).status());
  }
  return pem;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsPem& pem,
                                                               ClientCertPolicy policy) {
  if (!pem.has_identity()) return grpc::InsecureServerCredentials();
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  switch (policy) {
    case ClientCertPolicy::kNone:
      break;
    case ClientCertPolicy::kRequestAndVerify:
      request = GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
      break;
    case ClientCertPolicy::kRequireAndVerify:
      request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      break;
  }
  grpc::SslServerCredentialsOptions options(request);
  options.pem_root_certs = policy == ClientCertPolicy::kNone ? "" : pem.ca;
  options.pem_key_cert_pairs.push_back({pem.key, pem.cert});
  return grpc::SslServerCredentials(options);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsPem& pem) {
  if (pem.ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pem.ca;
  if (pem.has_identity()) {
    options.pem_private_key = pem.key;
    options.pem_cert_chain = pem.cert;
  }
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientChannelCredentials(
    const std::string& ca_path) {
  TlsFiles files;
  files.ca = ca_path;
  ASSIGN_OR_RETURN(TlsPem pem, LoadTlsFiles(files));
  return MakeChannelCredentials(pem);
}

}  // namespace tandem
