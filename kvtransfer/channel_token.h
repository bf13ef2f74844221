// The token that authenticates a KV channel's TCP data connection (docs/SERVING.md, The KV
// channel and Security). The decode side draws a fresh random token per channel and hands
// it to the prefill side in the Open reply, over the control stream (a gRPC stream, under
// mutual TLS when the workers have certificates); the prefill side's first message on the
// data connection is the token, and the decode side takes only a connection that presents
// it. Anyone else who reaches the data port is closed at once or after `token_timeout`.
//
// NOTE: this authenticates the connection; the KV bytes themselves stay unencrypted.
#ifndef TANDEM_KVTRANSFER_CHANNEL_TOKEN_H_
#define TANDEM_KVTRANSFER_CHANNEL_TOKEN_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtransfer/tcp_transport.h"

namespace tandem {

inline constexpr int kChannelTokenBytes = 32;

// kChannelTokenBytes from the kernel's CSPRNG (getrandom); INTERNAL if it fails.
absl::StatusOr<std::string> NewChannelToken();

// Compares a presented token with the channel's in constant time.
bool ChannelTokenEquals(std::string_view presented, std::string_view token);

// Prefill side: sends `token` as the first message of a fresh data connection.
absl::Status PresentChannelToken(TcpTransport& transport, std::string_view token,
                                 absl::Time deadline);

// Decode side: accepts connections on `listener` until one presents `token` (compared in
// constant time) and returns it; every other connection is closed and logged. Each gets
// `token_timeout` to present. DEADLINE_EXCEEDED when no valid connection arrives by
// `deadline`.
absl::StatusOr<std::unique_ptr<TcpTransport>> AcceptWithChannelToken(
    TcpTransportListener& listener, std::string_view token, absl::Time deadline,
    absl::Duration token_timeout = absl::Seconds(2));

}  // namespace tandem

#endif  // TANDEM_KVTRANSFER_CHANNEL_TOKEN_H_
