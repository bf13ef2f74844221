#include "service/api_key.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path =
      (std::filesystem::temp_directory_path() / (name + "-" + std::to_string(getpid()))).string();
  std::ofstream(path) << text;
  return path;
}

TEST(ApiKeysTest, NoKeysAcceptsEverything) {
  ApiKeys keys;
  EXPECT_FALSE(keys.enabled());
  EXPECT_TRUE(keys.Check("", "").ok());
  EXPECT_TRUE(keys.Check("Bearer anything", "").ok());
}

TEST(ApiKeysTest, FromCommaSeparatedFlags) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromLists({"alpha, beta", "gamma"});
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(keys->enabled());
  EXPECT_EQ(keys->size(), 3);
  for (const char* key : {"alpha", "beta", "gamma"}) {
    EXPECT_TRUE(keys->Check(std::string("Bearer ") + key, "").ok()) << key;
    EXPECT_TRUE(keys->Check("", key).ok()) << key;
  }
  absl::StatusOr<ApiKeys> empty = ApiKeys::FromLists({"a,,b"});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("--api-key"));
}

TEST(ApiKeysTest, FromFileSkipsBlankLinesAndComments) {
  const std::string path = WriteTemp("keys", "# the team's keys\n\n  k1  \nk2\n");
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(path);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 2);
  EXPECT_TRUE(keys->Check("Bearer k1", "").ok());
  EXPECT_TRUE(keys->Check("", "k2").ok());
  EXPECT_FALSE(keys->Check("Bearer # the team's keys", "").ok());
  std::remove(path.c_str());

  const std::string only_comments = WriteTemp("nokeys", "# nothing\n\n");
  absl::StatusOr<ApiKeys> none = ApiKeys::FromFile(only_comments);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("--api-key-file"));
  std::remove(only_comments.c_str());

  absl::StatusOr<ApiKeys> missing = ApiKeys::FromFile("/nonexistent/keys.txt");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/keys.txt"));
}

TEST(ApiKeysTest, ConfigTakesFlagsAndFileElseTheEnvironment) {
  const std::string path = WriteTemp("filekeys", "from-file\n");
  absl::StatusOr<ApiKeys> both = ApiKeys::FromConfig({"from-flag"}, path, "from-env");
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->size(), 2);
  EXPECT_TRUE(both->Check("Bearer from-flag", "").ok());
  EXPECT_TRUE(both->Check("Bearer from-file", "").ok());
  EXPECT_FALSE(both->Check("Bearer from-env", "").ok()) << "a flag overrides the environment";
  std::remove(path.c_str());

  absl::StatusOr<ApiKeys> env = ApiKeys::FromConfig({}, "", "e1,e2");
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->size(), 2);
  EXPECT_TRUE(env->Check("", "e2").ok());

  absl::StatusOr<ApiKeys> none = ApiKeys::FromConfig({}, "", nullptr);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->enabled());
  absl::StatusOr<ApiKeys> empty_env = ApiKeys::FromConfig({}, "", "");
  ASSERT_TRUE(empty_env.ok()) << empty_env.status();
  EXPECT_FALSE(empty_env->enabled());
}

TEST(ApiKeysTest, BearerAndXApiKey) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromLists({"s3cret"});
  ASSERT_TRUE(keys.ok());
  EXPECT_TRUE(keys->Check("Bearer s3cret", "").ok());
  EXPECT_TRUE(keys->Check("bearer   s3cret ", "").ok()) << "the scheme is case-insensitive";
  EXPECT_TRUE(keys->Check("", "s3cret").ok());
  // A wrong bearer with the right x-api-key: either header may carry it.
  EXPECT_TRUE(keys->Check("Bearer nope", "s3cret").ok());
  // Not a bearer scheme: the key is not taken from it.
  EXPECT_FALSE(keys->Check("Basic s3cret", "").ok());
  EXPECT_FALSE(keys->Check("s3cret", "").ok());
}

TEST(ApiKeysTest, WrongMissingAndEmptyAreUnauthenticatedWithoutEchoingTheKey) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromLists({"s3cret"});
  ASSERT_TRUE(keys.ok());
  const absl::Status wrong = keys->Check("Bearer guess-123", "");
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.message(), HasSubstr("invalid API key"));
  EXPECT_THAT(wrong.message(), Not(HasSubstr("guess-123")));
  EXPECT_THAT(wrong.message(), Not(HasSubstr("s3cret")));
  EXPECT_EQ(keys->Check("", "s3cret-and-more").code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys->Check("", "s3cre").code(), absl::StatusCode::kUnauthenticated);

  for (const auto& [authorization, x_api_key] :
       std::vector<std::pair<std::string, std::string>>{{"", ""}, {"Bearer ", ""}, {"", "  "},
                                                        {"Bearer", ""}}) {
    const absl::Status missing = keys->Check(authorization, x_api_key);
    EXPECT_EQ(missing.code(), absl::StatusCode::kUnauthenticated)
        << "'" << authorization << "' '" << x_api_key << "'";
    EXPECT_THAT(missing.message(), HasSubstr("missing API key"));
  }
  const absl::Status basic = keys->Check("Basic dXNlcjpzM2NyZXQ=", "");
  EXPECT_THAT(basic.message(), HasSubstr("missing API key"));
  EXPECT_THAT(basic.message(), Not(HasSubstr("dXNlcjpzM2NyZXQ")));
}

TEST(ApiKeysTest, ConstantTimeEquals) {
  // The comparison Check uses: every byte is looked at, whatever the first difference.
  EXPECT_TRUE(ApiKeys::ConstantTimeEquals("", ""));
  EXPECT_TRUE(ApiKeys::ConstantTimeEquals("abcdef", "abcdef"));
  EXPECT_FALSE(ApiKeys::ConstantTimeEquals("abcdef", "abcdeg"));
  EXPECT_FALSE(ApiKeys::ConstantTimeEquals("xbcdef", "abcdef"));
  EXPECT_FALSE(ApiKeys::ConstantTimeEquals("abc", "abcd"));
  const std::string a(32, '\0');
  std::string b = a;
  b[31] = 1;
  EXPECT_FALSE(ApiKeys::ConstantTimeEquals(a, b));
}

TEST(ApiKeysTest, ClientKeyFromFlagElseEnvironment) {
  ::setenv(kApiKeyEnv, "env-key", 1);
  EXPECT_EQ(ClientApiKey("flag-key"), "flag-key");
  EXPECT_EQ(ClientApiKey(""), "env-key");
  ::unsetenv(kApiKeyEnv);
  EXPECT_EQ(ClientApiKey(""), "");
}

}  // namespace
}  // namespace tandem
