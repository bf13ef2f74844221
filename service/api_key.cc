#include "service/api_key.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

// The token of "Bearer <token>" (scheme case-insensitive); empty for any other scheme.
std::string_view BearerToken(std::string_view authorization) {
  authorization = Trim(authorization);
  constexpr std::string_view kScheme = "bearer";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(absl::string_view(authorization.data(), kScheme.size()),
                              absl::string_view(kScheme.data(), kScheme.size())) ||
      !absl::ascii_isspace(static_cast<unsigned char>(authorization[kScheme.size()]))) {
    return {};
  }
  return Trim(authorization.substr(kScheme.size()));
}

std::string_view Metadata(const grpc::ServerContextBase& context, std::string_view name) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(grpc::string_ref(name.data(), name.size()));
  if (it == metadata.end()) return {};
  return std::string_view(it->second.data(), it->second.size());
}

}  // namespace

bool ApiKeys::ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  // NOTE: volatile keeps the compiler from turning the loop into an early-exit memcmp.
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

absl::Status ApiKeys::Add(std::string_view key, std::string_view source) {
  if (key.empty()) return absl::InvalidArgumentError(Cat(source, " holds an empty API key"));
  Sha256 sha;
  sha.Update(key);
  digests_.push_back(sha.Finish());
  return absl::OkStatus();
}

bool ApiKeys::Accepts(std::string_view key) const {
  Sha256 sha;
  sha.Update(key);
  const Digest presented = sha.Finish();
  const std::string_view p(reinterpret_cast<const char*>(presented.data()), presented.size());
  // Every digest is compared, matched or not: the time does not say which key (or whether
  // an early one) matched.
  bool accepted = false;
  for (const Digest& d : digests_) {
    accepted |= ConstantTimeEquals(std::string_view(reinterpret_cast<const char*>(d.data()),
                                                    d.size()),
                                   p);
  }
  return accepted;
}

absl::StatusOr<ApiKeys> ApiKeys::FromLists(absl::Span<const std::string> lists) {
  ApiKeys keys;
  for (const std::string& list : lists) {
    for (absl::string_view key : absl::StrSplit(list, ',')) {
      RETURN_IF_ERROR(keys.Add(Trim(std::string_view(key.data(), key.size())), "--api-key"));
    }
  }
  if (!keys.enabled()) return absl::InvalidArgumentError("--api-key holds no key");
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    const int err = errno;
    return absl::NotFoundError(
        Cat("cannot read --api-key-file '", path, "': ", std::strerror(err)));
  }
  ApiKeys keys;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const std::string_view key = Trim(line);
    if (key.empty() || key.front() == '#') continue;
    RETURN_IF_ERROR(keys.Add(key, Cat("--api-key-file '", path, "' line ", line_number)));
  }
  if (in.bad()) {
    return absl::NotFoundError(Cat("cannot read --api-key-file '", path, "'"));
  }
  if (!keys.enabled()) {
    return absl::InvalidArgumentError(Cat("--api-key-file '", path, "' holds no key"));
  }
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::FromConfig(absl::Span<const std::string> flag_lists,
                                            const std::string& file, const char* env_value) {
  ApiKeys keys;
  if (!flag_lists.empty()) {
    ASSIGN_OR_RETURN(keys, FromLists(flag_lists));
  }
  if (!file.empty()) {
    ASSIGN_OR_RETURN(ApiKeys from_file, FromFile(file));
    keys.digests_.insert(keys.digests_.end(), from_file.digests_.begin(),
                         from_file.digests_.end());
  }
  if (flag_lists.empty() && file.empty() && env_value != nullptr && *env_value != '\0') {
    absl::StatusOr<ApiKeys> from_env = FromLists({std::string(env_value)});
    if (!from_env.ok()) {
      return absl::InvalidArgumentError(Cat("$", kApiKeyEnv, " holds an empty API key"));
    }
    keys = *std::move(from_env);
  }
  return keys;
}

absl::Status ApiKeys::Check(std::string_view authorization, std::string_view x_api_key) const {
  if (!enabled()) return absl::OkStatus();
  const std::string_view bearer = BearerToken(authorization);
  x_api_key = Trim(x_api_key);
  if (bearer.empty() && x_api_key.empty()) {
    return absl::UnauthenticatedError(
        Trim(authorization).empty()
            ? "missing API key: send 'authorization: Bearer <key>' or 'x-api-key: <key>'"
            : "missing API key: the authorization header is not 'Bearer <key>'");
  }
  // Both are checked when both are sent, so the time does not say which one was right.
  bool accepted = false;
  if (!bearer.empty()) accepted |= Accepts(bearer);
  if (!x_api_key.empty()) accepted |= Accepts(x_api_key);
  if (!accepted) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

std::string ClientApiKey(const std::string& flag_value) {
  if (!flag_value.empty()) return flag_value;
  const char* env = std::getenv(kApiKeyEnv);
  return env == nullptr ? std::string() : std::string(Trim(env));
}

void AddApiKeyMetadata(grpc::ClientContext& context, const std::string& key) {
  if (!key.empty()) context.AddMetadata("authorization", Cat("Bearer ", key));
}

absl::Status ApiKeys::CheckGrpc(const grpc::ServerContextBase& context) const {
  if (!enabled()) return absl::OkStatus();
  return Check(Metadata(context, "authorization"), Metadata(context, "x-api-key"));
}

}  // namespace tandem
