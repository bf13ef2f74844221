#include "service/tls.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_certs.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("tandem-tls-test-" + std::to_string(getpid())))
               .string();
    std::filesystem::create_directories(dir_);
    absl::StatusOr<testing::TestCerts> certs = testing::MakeTestCerts(dir_);
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = *certs;
    garbage_ = dir_ + "/garbage.pem";
    std::ofstream(garbage_) << "-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                               "-----END CERTIFICATE-----\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  std::string garbage_;
  testing::TestCerts certs_;
};

TEST_F(TlsTest, LoadsAMatchingSet) {
  absl::StatusOr<TlsPem> pem =
      LoadTlsFiles({certs_.router_cert, certs_.router_key, certs_.ca});
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_TRUE(pem->has_identity());
  EXPECT_THAT(pem->cert, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_THAT(pem->key, HasSubstr("PRIVATE KEY"));
  EXPECT_THAT(pem->ca, HasSubstr("BEGIN CERTIFICATE"));
  EXPECT_NE(MakeServerCredentials(*pem, ClientCertPolicy::kRequireAndVerify), nullptr);
  EXPECT_NE(MakeChannelCredentials(*pem), nullptr);
}

TEST_F(TlsTest, NothingGivenIsPlaintext) {
  absl::StatusOr<TlsPem> pem = LoadTlsFiles({});
  ASSERT_TRUE(pem.ok()) << pem.status();
  EXPECT_FALSE(pem->has_identity());
  EXPECT_TRUE(pem->ca.empty());
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> client = ClientChannelCredentials("");
  ASSERT_TRUE(client.ok()) << client.status();
}

TEST_F(TlsTest, MissingFilesAreNotFoundNamingFlagAndPath) {
  struct Case {
    TlsFiles files;
    const char* flag;
    std::string path;
  };
  const std::string missing = dir_ + "/missing.pem";
  for (const Case& c : {Case{{missing, certs_.router_key, certs_.ca}, "--tls-cert", missing},
                        Case{{certs_.router_cert, missing, certs_.ca}, "--tls-key", missing},
                        Case{{certs_.router_cert, certs_.router_key, missing}, "--tls-ca",
                             missing}}) {
    absl::StatusOr<TlsPem> pem = LoadTlsFiles(c.files);
    EXPECT_EQ(pem.status().code(), absl::StatusCode::kNotFound) << pem.status();
    EXPECT_THAT(pem.status().message(), HasSubstr(c.flag));
    EXPECT_THAT(pem.status().message(), HasSubstr(c.path));
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> client =
      ClientChannelCredentials(missing);
  EXPECT_EQ(client.status().code(), absl::StatusCode::kNotFound) << client.status();
}

TEST_F(TlsTest, GarbagePemIsInvalidArgumentNamingFlagAndPath) {
  struct Case {
    TlsFiles files;
    const char* flag;
  };
  const std::string empty = dir_ + "/empty.pem";
  std::ofstream(empty).flush();
  for (const Case& c : {Case{{garbage_, certs_.router_key, certs_.ca}, "--tls-cert"},
                        Case{{empty, certs_.router_key, certs_.ca}, "--tls-cert"},
                        Case{{certs_.router_cert, garbage_, certs_.ca}, "--tls-key"},
                        // A certificate where the key should be, and the reverse.
                        Case{{certs_.router_cert, certs_.router_cert, certs_.ca}, "--tls-key"},
                        Case{{certs_.router_key, certs_.router_key, certs_.ca}, "--tls-cert"},
                        Case{{certs_.router_cert, certs_.router_key, garbage_}, "--tls-ca"}}) {
    absl::StatusOr<TlsPem> pem = LoadTlsFiles(c.files);
    EXPECT_EQ(pem.status().code(), absl::StatusCode::kInvalidArgument) << pem.status();
    EXPECT_THAT(pem.status().message(), HasSubstr(c.flag)) << pem.status();
  }
}

TEST_F(TlsTest, KeyOfAnotherCertificateIsRefused) {
  absl::StatusOr<TlsPem> pem = LoadTlsFiles({certs_.router_cert, certs_.worker_key, certs_.ca});
  EXPECT_EQ(pem.status().code(), absl::StatusCode::kInvalidArgument) << pem.status();
  EXPECT_THAT(pem.status().message(), HasSubstr("does not match"));
}

}  // namespace
}  // namespace tandem
