#include "kvtransfer/channel_token.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

TEST(ChannelTokenTest, TokensAreFreshAndFullLength) {
  std::set<std::string> seen;
  for (int i = 0; i < 16; ++i) {
    absl::StatusOr<std::string> token = NewChannelToken();
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(token->size(), kChannelTokenBytes);
    seen.insert(*token);
  }
  EXPECT_EQ(seen.size(), 16u);
}

// Connections that present nothing, garbage or a wrong token are closed; the one with the
// token is accepted, and the transport then carries data as usual.
TEST(ChannelTokenTest, AcceptsOnlyTheConnectionWithTheToken) {
  absl::StatusOr<std::unique_ptr<TcpTransportListener>> listener =
      TcpTransportListener::Listen("127.0.0.1", 0);
  ASSERT_TRUE(listener.ok()) << listener.status();
  const int port = (*listener)->port();
  absl::StatusOr<std::string> token = NewChannelToken();
  ASSERT_TRUE(token.ok());
  absl::StatusOr<std::string> wrong = NewChannelToken();
  ASSERT_TRUE(wrong.ok());

  std::thread peers([&] {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    // 1. Silent: closed after the token timeout.
    absl::StatusOr<std::unique_ptr<TcpTransport>> silent = TcpTransport::Connect("127.0.0.1", port);
    ASSERT_TRUE(silent.ok()) << silent.status();
    // 2. Raw bytes that are not a frame.
    const int raw = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(raw, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(connect(raw, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    const std::string garbage = "GET / HTTP/1.1\r\nHost: decode\r\n\r\n";
    ASSERT_EQ(write(raw, garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
    // 3. A well-formed frame with the wrong token.
    absl::StatusOr<std::unique_ptr<TcpTransport>> liar = TcpTransport::Connect("127.0.0.1", port);
    ASSERT_TRUE(liar.ok()) << liar.status();
    ASSERT_TRUE(PresentChannelToken(**liar, *wrong, deadline).ok());
    // 4. The real peer.
    absl::StatusOr<std::unique_ptr<TcpTransport>> peer = TcpTransport::Connect("127.0.0.1", port);
    ASSERT_TRUE(peer.ok()) << peer.status();
    ASSERT_TRUE(PresentChannelToken(**peer, *token, deadline).ok());
    const uint64_t payload = 0x1234567890abcdefULL;
    ASSERT_TRUE((*peer)->Send(&payload, sizeof(payload), deadline).ok());
    // The liar's connection was closed by the listener's side.
    uint64_t ignored = 0;
    EXPECT_FALSE((*liar)->Recv(&ignored, sizeof(ignored), deadline).ok());
    absl::SleepFor(absl::Milliseconds(200));  // let the accepting side read the payload
    close(raw);
  });
  absl::StatusOr<std::unique_ptr<TcpTransport>> accepted = AcceptWithChannelToken(
      **listener, *token, absl::Now() + absl::Seconds(10), absl::Milliseconds(300));
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  uint64_t got = 0;
  ASSERT_TRUE((*accepted)->Recv(&got, sizeof(got), absl::Now() + absl::Seconds(5)).ok());
  EXPECT_EQ(got, 0x1234567890abcdefULL);
  peers.join();
}

TEST(ChannelTokenTest, NoValidConnectionByTheDeadline) {
  absl::StatusOr<std::unique_ptr<TcpTransportListener>> listener =
      TcpTransportListener::Listen("127.0.0.1", 0);
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<std::unique_ptr<TcpTransport>> silent =
      TcpTransport::Connect("127.0.0.1", (*listener)->port());
  ASSERT_TRUE(silent.ok());
  absl::StatusOr<std::unique_ptr<TcpTransport>> accepted = AcceptWithChannelToken(
      **listener, std::string(kChannelTokenBytes, 'x'), absl::Now() + absl::Milliseconds(500),
      absl::Seconds(5));
  EXPECT_EQ(accepted.status().code(), absl::StatusCode::kDeadlineExceeded) << accepted.status();
}

}  // namespace
}  // namespace tandem
