// Security at the edge (docs/SERVING.md, Security): mutual TLS between the router and the
// workers (and on the KV channel), TLS for public clients, and API keys on Generate.
#include <sys/wait.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/tls.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"
#include "tests/integration/reference_model.h"
#include "tests/testing/test_certs.h"

namespace tandem::integration {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kMaxTokens = 12;
const char kPrompt[] = "The capital of France is";

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestDir();
    ASSERT_FALSE(dir_.empty());
    ASSERT_OK_AND_ASSIGN(certs_, tandem::testing::MakeTestCerts(dir_));
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  std::vector<std::string> RouterTls() const {
    return {"--tls-cert", certs_.router_cert, "--tls-key", certs_.router_key,
            "--tls-ca",   certs_.ca};
  }
  std::vector<std::string> WorkerTls() const {
    return {"--tls-cert", certs_.worker_cert, "--tls-key", certs_.worker_key,
            "--tls-ca",   certs_.ca};
  }
  // The harness calls the router and the workers' Load: it presents a worker certificate.
  std::shared_ptr<grpc::ChannelCredentials> HarnessCredentials() const {
    absl::StatusOr<TlsPem> pem = LoadTlsFiles({certs_.worker_cert, certs_.worker_key, certs_.ca});
    EXPECT_TRUE(pem.ok()) << pem.status();
    return MakeChannelCredentials(pem.ok() ? *pem : TlsPem());
  }

  // Runs `tandem client ARGS...` to completion; its exit status and output.
  std::pair<int, std::string> RunCli(const std::string& name, std::vector<std::string> args) {
    args.insert(args.begin(), {std::string(TANDEM_BIN_DIR) + "/tandem", "client"});
    auto process = Process::Spawn(name, std::move(args), absl::StrCat(dir_, "/", name, ".log"));
    if (!process.ok()) return {-1, std::string(process.status().message())};
    absl::StatusOr<int> status = (*process)->Wait(absl::Seconds(60));
    const int code = status.ok() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
    return {code, (*process)->Log()};
  }

  std::string dir_;
  tandem::testing::TestCerts certs_;
};

TEST_F(SecurityTest, MutualTlsServesEndToEndAndRefusesStrangers) {
  ASSERT_OK_AND_ASSIGN(ReferenceModel * ref, ReferenceModel::Default());
  ASSERT_OK_AND_ASSIGN(ReferenceOutput expected,
                       ref->Greedy(ref->TokenizePrompt(kPrompt), kMaxTokens));

  ClusterOptions options = WithWorkers(1, 1);
  options.router_flags = RouterTls();
  options.channel_credentials = HarnessCredentials();
  Cluster cluster(options);
  ASSERT_OK(cluster.StartRouter());
  WorkerOptions mtls;
  mtls.flags = WorkerTls();
  ASSERT_OK(cluster.AddPrefill(mtls).status());
  ASSERT_OK(cluster.AddDecode(mtls).status());
  ASSERT_OK(cluster.WaitForWorkers(1, 1));

  // Router -> P and D, P -> D (KV channel and its token-checked data connection): all under
  // mutual TLS, and the output is the single-process engine's.
  GenerateResult r = cluster.Generate(GreedyPrompt(kPrompt, kMaxTokens));
  ASSERT_TRUE(r.ok()) << r.Describe();
  EXPECT_EQ(r.token_ids, expected.tokens);
  EXPECT_EQ(r.text, expected.text);
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->prefill_location(), tandem::v1::PREFILL_LOCATION_REMOTE) << r.Describe();

  // A public client with only the CA (no certificate of its own) is served over TLS.
  {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        ClientChannelCredentials(certs_.ca);
    ASSERT_TRUE(creds.ok()) << creds.status();
    auto stub = tandem::v1::Generation::NewStub(
        grpc::CreateChannel(cluster.router_address(), *creds));
    GenerateResult public_call =
        RunGenerate(*stub, GreedyPrompt(kPrompt, kMaxTokens), WithDeadline(absl::Seconds(60)));
    ASSERT_TRUE(public_call.ok()) << public_call.Describe();
    EXPECT_EQ(public_call.token_ids, expected.tokens);

    // ...but the Registry refuses it: no client certificate.
    auto registry =
        tandem::v1::Registry::NewStub(grpc::CreateChannel(cluster.router_address(), *creds));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    tandem::v1::RegisterRequest request;
    request.set_role(tandem::v1::WORKER_ROLE_DECODE);
    request.set_address("127.0.0.1:1");
    tandem::v1::RegisterResponse response;
    grpc::Status status = registry->Register(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << StatusCodeName(status.error_code()) << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("--tls-ca"));
  }

  // The CLI with --tls-ca.
  {
    auto [code, output] =
        RunCli("cli-tls", {"--router", cluster.router_address(), "--tls-ca", certs_.ca,
                           "--prompt", kPrompt, "--max-tokens", std::to_string(kMaxTokens),
                           "--temperature", "0"});
    EXPECT_EQ(code, 0) << output;
    EXPECT_THAT(output, HasSubstr(expected.text));
  }

  // A plaintext client cannot talk to the TLS port.
  {
    auto stub = tandem::v1::Generation::NewStub(
        grpc::CreateChannel(cluster.router_address(), grpc::InsecureChannelCredentials()));
    GenerateResult plain =
        RunGenerate(*stub, GreedyPrompt(kPrompt, kMaxTokens), WithDeadline(absl::Seconds(5)));
    EXPECT_FALSE(plain.ok()) << plain.Describe();
    EXPECT_TRUE(plain.token_ids.empty()) << plain.Describe();
  }

  // A worker whose certificate another CA signed, and one with no TLS at all, never join.
  WorkerOptions rogue_options;
  rogue_options.flags = {"--tls-cert", certs_.rogue_worker_cert, "--tls-key",
                         certs_.rogue_worker_key, "--tls-ca", certs_.ca};
  rogue_options.wait_registered = false;
  ASSERT_OK_AND_ASSIGN(Worker * rogue, cluster.AddDecode(rogue_options));
  WorkerOptions plaintext_options;
  plaintext_options.wait_registered = false;
  ASSERT_OK_AND_ASSIGN(Worker * plaintext, cluster.AddDecode(plaintext_options));
  const bool joined = PollUntil(absl::Seconds(8), [&] {
    auto health = cluster.Health();
    return health.ok() && health->workers_size() > 2;
  });
  EXPECT_FALSE(joined) << cluster.Health()->ShortDebugString();
  for (Worker* w : {rogue, plaintext}) {
    SCOPED_TRACE(w->process->name());
    const std::string log = w->process->Log();
    EXPECT_THAT(log, Not(HasSubstr("registered with router"))) << log;
    EXPECT_THAT(log, HasSubstr("not reachable yet")) << log;
  }
  // After 10 s of refusals each says, once, what to check (the router logs nothing: gRPC
  // drops a refused handshake before any call).
  EXPECT_TRUE(PollUntil(absl::Seconds(15), [&] {
    return absl::StrContains(rogue->process->Log(), "still not reachable after") &&
           absl::StrContains(plaintext->process->Log(), "still not reachable after");
  }));
  EXPECT_THAT(rogue->process->Log(), HasSubstr("does the router's --tls-ca sign this worker's"));
  EXPECT_THAT(plaintext->process->Log(), HasSubstr("is the router running there, and without TLS"));
  // The cluster still serves.
  GenerateResult again = cluster.Generate(GreedyPrompt(kPrompt, kMaxTokens));
  ASSERT_TRUE(again.ok()) << again.Describe();
  EXPECT_EQ(again.token_ids, expected.tokens);
}

TEST_F(SecurityTest, ApiKeyGuardsGenerateAndListModelsButNotHealth) {
  ClusterOptions options = WithWorkers(0, 1, "collocated");
  options.router_flags = {"--api-key", "key-one,key-two"};
  Cluster cluster(options);
  ASSERT_OK(cluster.Start());  // Health is open: the harness polls it without a key
  const tandem::v1::GenerateRequest request = GreedyPrompt(kPrompt, 4);

  GenerateResult missing = cluster.Generate(request);
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << missing.Describe();
  EXPECT_THAT(missing.status.error_message(), HasSubstr("missing API key"));

  GenerateOptions wrong_key;
  wrong_key.metadata = {{"authorization", "Bearer guess-4711"}};
  GenerateResult wrong = cluster.Generate(request, wrong_key);
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << wrong.Describe();
  EXPECT_THAT(wrong.status.error_message(), HasSubstr("invalid API key"));
  EXPECT_THAT(wrong.status.error_message(), Not(HasSubstr("guess-4711")));

  GenerateOptions bearer;
  bearer.metadata = {{"authorization", "Bearer key-two"}};
  GenerateResult ok = cluster.Generate(request, bearer);
  ASSERT_TRUE(ok.ok()) << ok.Describe();
  EXPECT_FALSE(ok.token_ids.empty()) << ok.Describe();

  GenerateOptions x_api_key;
  x_api_key.metadata = {{"x-api-key", "key-one"}};
  GenerateResult ok_too = cluster.Generate(request, x_api_key);
  ASSERT_TRUE(ok_too.ok()) << ok_too.Describe();
  EXPECT_EQ(ok_too.token_ids, ok.token_ids);

  for (const char* key : {"", "key-one"}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (*key != '\0') context.AddMetadata("authorization", absl::StrCat("Bearer ", key));
    tandem::v1::ListModelsResponse models;
    grpc::Status status =
        cluster.generation().ListModels(&context, tandem::v1::ListModelsRequest(), &models);
    EXPECT_EQ(status.error_code(),
              *key == '\0' ? grpc::StatusCode::UNAUTHENTICATED : grpc::StatusCode::OK)
        << "key '" << key << "': " << status.error_message();
  }
  EXPECT_OK(cluster.Health().status());

  // The CLI sends --api-key (or $TANDEM_API_KEY) as a bearer token.
  const std::vector<std::string> cli = {"--router", cluster.router_address(), "--prompt", kPrompt,
                                        "--max-tokens", "4", "--temperature", "0"};
  std::vector<std::string> with_key = cli;
  with_key.insert(with_key.end(), {"--api-key", "key-one"});
  auto [code, output] = RunCli("cli-key", with_key);
  EXPECT_EQ(code, 0) << output;
  auto [code_without, output_without] = RunCli("cli-nokey", cli);
  EXPECT_NE(code_without, 0) << output_without;
  EXPECT_THAT(output_without, HasSubstr("missing API key"));
}

}  // namespace
}  // namespace tandem::integration
