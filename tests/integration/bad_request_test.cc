// Invalid requests fail fast with INVALID_ARGUMENT naming the offending field, and the router
// keeps serving.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "service/grpc_status.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"

namespace tandem::integration {
namespace {

using tandem::v1::GenerateRequest;

struct BadCase {
  std::string label;
  GenerateRequest request;
  std::vector<std::string> names;  // the message must contain one of these
};

TEST(BadRequestTest, InvalidArgumentNamesTheField) {
  Cluster cluster(WithWorkers(1, 1));
  ASSERT_OK(cluster.Start());

  int context_length = 0;
  {
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(5));
    tandem::v1::ListModelsResponse models;
    grpc::Status status =
        cluster.generation().ListModels(&context, tandem::v1::ListModelsRequest(), &models);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(models.models_size(), 1) << models.ShortDebugString();
    context_length = models.models(0).context_length();
    EXPECT_EQ(context_length, 8192) << models.ShortDebugString();
  }

  std::vector<BadCase> cases;
  cases.push_back({"empty prompt", GreedyPrompt("", 8), {"prompt"}});
  cases.push_back({"empty token_ids", GreedyTokens({}, 8), {"prompt", "token_ids"}});
  cases.push_back({"no input", GenerateRequest(), {"prompt", "input"}});
  cases.back().request.mutable_sampling()->set_max_tokens(8);
  cases.push_back({"max_tokens 0", GreedyPrompt("Hello", 0), {"max_tokens"}});
  cases.push_back({"max_tokens -1", GreedyPrompt("Hello", -1), {"max_tokens"}});
  cases.push_back(
      {"max_tokens beyond the context", GreedyPrompt("Hello", context_length + 1), {"max_tokens"}});
  {
    BadCase c{"temperature -1", GreedyPrompt("Hello", 8), {"temperature"}};
    c.request.mutable_sampling()->set_temperature(-1.0f);
    cases.push_back(c);
  }
  {
    BadCase c{"top_p 0", GreedyPrompt("Hello", 8), {"top_p"}};
    c.request.mutable_sampling()->set_top_p(0.0f);
    cases.push_back(c);
  }
  {
    BadCase c{"top_k -1", GreedyPrompt("Hello", 8), {"top_k"}};
    c.request.mutable_sampling()->set_top_k(-1);
    cases.push_back(c);
  }
  {
    BadCase c{"unknown model", GreedyPrompt("Hello", 8), {"model"}};
    c.request.set_model("no-such-model");
    cases.push_back(c);
  }
  {
    std::vector<int32_t> ids(9000, 1000);
    cases.push_back({"prompt longer than the context (9000 ids)",
                     GreedyTokens(ids, 8),
                     {"prompt", "token_ids", "context"}});
  }
  cases.push_back({"token id outside the vocabulary", GreedyTokens({1, 2, 1 << 20}, 8), {"token"}});
  {
    BadCase c{"unknown chat role", GreedyChat("Hello", 8), {"role"}};
    c.request.mutable_chat()->mutable_messages(0)->set_role("wizard");
    cases.push_back(c);
  }

  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.label);
    GenerateResult r = cluster.Generate(c.request, WithDeadline(absl::Seconds(20)));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.Describe();
    bool named = false;
    for (const std::string& n : c.names) {
      named = named || r.status.error_message().find(n) != std::string::npos;
    }
    EXPECT_TRUE(named) << "the message names none of {" << absl::StrJoin(c.names, ", ")
                       << "}: " << r.status.error_message();
    EXPECT_TRUE(r.token_ids.empty()) << r.Describe();
    EXPECT_LT(r.elapsed, absl::Seconds(5)) << r.Describe();
  }

  // Still serving, and at the edges of the valid range.
  GenerateResult ok = cluster.Generate(GreedyPrompt("Hello", 1));
  ASSERT_TRUE(ok.ok()) << ok.Describe();
  EXPECT_EQ(ok.token_ids.size(), 1u) << ok.Describe();
  GenerateRequest top_p_one = GreedyPrompt("Hello", 2);
  top_p_one.mutable_sampling()->set_top_p(1.0f);
  GenerateResult ok2 = cluster.Generate(top_p_one);
  EXPECT_TRUE(ok2.ok()) << ok2.Describe();
  auto health = cluster.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(health->serving()) << health->ShortDebugString();
}

}  // namespace
}  // namespace tandem::integration
