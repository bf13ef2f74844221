// API keys for the router's public endpoints (docs/SERVING.md, Security): the set of
// accepted keys and the check of one call's headers against it. Used by the gRPC
// Generation service and the HTTP API alike.
//
// Only SHA-256 digests of the keys are kept, and a presented key is compared against every
// digest in constant time, so neither the timing nor a memory dump tells a key apart.
//
// Immutable after construction: thread-safe.
#ifndef TANDEM_SERVICE_API_KEY_H_
#define TANDEM_SERVICE_API_KEY_H_

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "grpcpp/client_context.h"
#include "grpcpp/server_context.h"

namespace tandem {

inline constexpr char kApiKeyEnv[] = "TANDEM_API_KEY";

class ApiKeys {
 public:
  // No keys: enabled() is false and Check accepts everything.
  ApiKeys() = default;

  // `lists` are comma-separated keys (each --api-key value); whitespace around a key is
  // dropped. INVALID_ARGUMENT for an empty key ("a,,b") or an empty list.
  static absl::StatusOr<ApiKeys> FromLists(absl::Span<const std::string> lists);
  // One key per line; blank lines and lines starting with '#' are skipped. NOT_FOUND when the
  // file cannot be read, INVALID_ARGUMENT when it holds no key. Errors name --api-key-file.
  static absl::StatusOr<ApiKeys> FromFile(const std::string& path);
  // The router's rule: the keys of every --api-key (`flag_lists`) and of --api-key-file
  // (`file`, empty: none); when neither is given, `env_value` (TANDEM_API_KEY, comma-separated;
  // null or empty: no keys).
  static absl::StatusOr<ApiKeys> FromConfig(absl::Span<const std::string> flag_lists,
                                            const std::string& file, const char* env_value);

  bool enabled() const { return !digests_.empty(); }
  int size() const { return static_cast<int>(digests_.size()); }

  // A call's headers: `authorization` ("Bearer <key>", what the OpenAI SDK sends) and
  // `x_api_key` (the bare key); either may be empty. OK when disabled or when either
  // carries an accepted key; else UNAUTHENTICATED "missing API key" or "invalid API key".
  // The message never contains what was presented.
  absl::Status Check(std::string_view authorization, std::string_view x_api_key) const;

  // Check on a gRPC call's metadata ("authorization", "x-api-key").
  absl::Status CheckGrpc(const grpc::ServerContextBase& context) const;

  // Compares two equally long byte strings in time that depends on the length only.
  static bool ConstantTimeEquals(std::string_view a, std::string_view b);

 private:
  using Digest = std::array<uint8_t, 32>;
  absl::Status Add(std::string_view key, std::string_view source);
  bool Accepts(std::string_view key) const;

  std::vector<Digest> digests_;  // SHA-256 of each key
};

// Clients (`tandem client`, `tandem bench serve`): the key to send, `flag_value`
// (--api-key) or else $TANDEM_API_KEY; empty: none.
std::string ClientApiKey(const std::string& flag_value);
// Adds "authorization: Bearer <key>" to a call; nothing for an empty key.
void AddApiKeyMetadata(grpc::ClientContext& context, const std::string& key);

}  // namespace tandem

#endif  // TANDEM_SERVICE_API_KEY_H_
