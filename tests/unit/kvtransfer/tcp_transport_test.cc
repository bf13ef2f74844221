#include "kvtransfer/tcp_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

constexpr int kHeaderBytes = 24;  // the wire format in tcp_transport.h
constexpr int kTrailerBytes = 8;

absl::Time In(absl::Duration d) { return absl::Now() + d; }

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> out(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
  return out;
}

struct TransportPair {
  std::unique_ptr<TcpTransport> client;  // the connecting side (prefill)
  std::unique_ptr<TcpTransport> server;  // the accepting side (decode)
};

TransportPair Connected(const TcpTransportOptions& options = {}) {
  auto listener = TcpTransportListener::Listen("127.0.0.1", 0, options);
  EXPECT_TRUE(listener.ok()) << listener.status();
  TransportPair pair;
  auto client = TcpTransport::Connect("127.0.0.1", (*listener)->port(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  auto server = (*listener)->Accept(In(absl::Seconds(5)));
  EXPECT_TRUE(server.ok()) << server.status();
  pair.client = std::move(*client);
  pair.server = std::move(*server);
  return pair;
}

// A plain blocking socket, to play a peer that does not follow the protocol.
class RawSocket {
 public:
  explicit RawSocket(int fd) : fd_(fd) {}
  ~RawSocket() {
    if (fd_ >= 0) close(fd_);
  }
  static std::unique_ptr<RawSocket> ConnectTo(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    return std::make_unique<RawSocket>(fd);
  }
  // Stops early when the receiver hangs up (it does on DATA_LOSS).
  void Write(const std::vector<uint8_t>& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return;
      done += n;
    }
  }
  std::vector<uint8_t> Read(size_t n) {
    std::vector<uint8_t> out(n);
    size_t done = 0;
    while (done < n) {
      const ssize_t got = recv(fd_, out.data() + done, n - done, 0);
      EXPECT_GT(got, 0);
      if (got <= 0) break;
      done += got;
    }
    return out;
  }
  void Close() {
    close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// The exact bytes a TcpTransport puts on the wire for `payloads`: a real sender talking to a
// raw socket.
std::vector<std::vector<uint8_t>> CaptureFrames(const std::vector<std::vector<uint8_t>>& payloads) {
  const int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(lfd, 1), 0);
  socklen_t len = sizeof(addr);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  auto sender = TcpTransport::Connect("127.0.0.1", ntohs(addr.sin_port));
  EXPECT_TRUE(sender.ok()) << sender.status();
  RawSocket raw(accept(lfd, nullptr, nullptr));
  close(lfd);
  std::vector<std::vector<uint8_t>> frames;
  for (const std::vector<uint8_t>& p : payloads) {
    std::thread reader(
        [&] { frames.push_back(raw.Read(kHeaderBytes + p.size() + kTrailerBytes)); });
    EXPECT_TRUE((*sender)->Send(p.data(), p.size(), In(absl::Seconds(5))).ok());
    reader.join();
  }
  return frames;
}

// A real receiver fed `bytes` by a raw peer; returns what Recv(expect_bytes) says.
absl::Status RecvFromRaw(const std::vector<uint8_t>& bytes, int64_t expect_bytes,
                         bool close_after = false) {
  auto listener = TcpTransportListener::Listen("127.0.0.1", 0);
  EXPECT_TRUE(listener.ok());
  auto raw = RawSocket::ConnectTo((*listener)->port());
  auto receiver = (*listener)->Accept(In(absl::Seconds(5)));
  EXPECT_TRUE(receiver.ok()) << receiver.status();
  std::thread writer([&] {
    raw->Write(bytes);
    if (close_after) raw->Close();
  });
  std::vector<uint8_t> dst(expect_bytes);
  absl::Status s = (*receiver)->Recv(dst.data(), expect_bytes, In(absl::Seconds(5)));
  writer.join();
  // Broken afterwards: every later call fails.
  if (!s.ok()) {
    EXPECT_EQ((*receiver)->Recv(dst.data(), expect_bytes, In(absl::Seconds(5))).code(),
              absl::StatusCode::kUnavailable);
  }
  return s;
}

TEST(TcpTransportTest, RoundTripsBuffersOfManySizesInOrder) {
  TransportPair pair = Connected();
  const std::vector<size_t> sizes = {0, 1, 4095, 1 << 20, 64 << 20, 3};
  std::vector<std::vector<uint8_t>> sent;
  for (size_t i = 0; i < sizes.size(); ++i) sent.push_back(RandomBytes(sizes[i], i + 1));
  std::thread sender([&] {
    for (const auto& buf : sent) {
      ASSERT_TRUE(pair.client->Send(buf.data(), buf.size(), In(absl::Seconds(30))).ok());
    }
  });
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> got(sizes[i], 0xAB);
    ASSERT_TRUE(pair.server->Recv(got.data(), got.size(), In(absl::Seconds(30))).ok()) << i;
    EXPECT_TRUE(got == sent[i]) << "message " << i << " of " << sizes[i] << " bytes differs";
  }
  sender.join();
}

TEST(TcpTransportTest, ManySmallMessagesArriveInOrder) {
  TransportPair pair = Connected();
  constexpr int kMessages = 20000;
  std::thread sender([&] {
    for (int i = 0; i < kMessages; ++i) {
      const std::vector<uint8_t> buf = RandomBytes(i % 37, i);
      ASSERT_TRUE(pair.client->Send(buf.data(), buf.size(), In(absl::Seconds(30))).ok());
    }
  });
  for (int i = 0; i < kMessages; ++i) {
    std::vector<uint8_t> got(i % 37);
    ASSERT_TRUE(pair.server->Recv(got.data(), got.size(), In(absl::Seconds(30))).ok()) << i;
    ASSERT_TRUE(got == RandomBytes(i % 37, i)) << "message " << i;
  }
  sender.join();
}

TEST(TcpTransportTest, BothDirectionsAtOnce) {
  TransportPair pair = Connected();
  const std::vector<uint8_t> a = RandomBytes(16 << 20, 1), b = RandomBytes(16 << 20, 2);
  std::vector<uint8_t> got_a(a.size()), got_b(b.size());
  std::thread t1(
      [&] { ASSERT_TRUE(pair.client->Send(a.data(), a.size(), In(absl::Seconds(30))).ok()); });
  std::thread t2(
      [&] { ASSERT_TRUE(pair.server->Send(b.data(), b.size(), In(absl::Seconds(30))).ok()); });
  std::thread t3(
      [&] { ASSERT_TRUE(pair.client->Recv(got_b.data(), b.size(), In(absl::Seconds(30))).ok()); });
  ASSERT_TRUE(pair.server->Recv(got_a.data(), a.size(), In(absl::Seconds(30))).ok());
  t1.join();
  t2.join();
  t3.join();
  EXPECT_TRUE(got_a == a);
  EXPECT_TRUE(got_b == b);
}

TEST(TcpTransportTest, WrongLengthIsDataLossAndBreaksBothEnds) {
  TransportPair pair = Connected();
  const std::vector<uint8_t> buf = RandomBytes(100, 1);
  ASSERT_TRUE(pair.client->Send(buf.data(), buf.size(), In(absl::Seconds(5))).ok());
  std::vector<uint8_t> got(99);
  absl::Status s = pair.server->Recv(got.data(), got.size(), In(absl::Seconds(5)));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("carries 100 bytes but the receiver asked for 99"));
  EXPECT_EQ(pair.server->Recv(got.data(), got.size(), In(absl::Seconds(5))).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(pair.server->Send(got.data(), got.size(), In(absl::Seconds(5))).code(),
            absl::StatusCode::kUnavailable);
  // The receiver shut the connection down: the sender learns at once, not at its deadline.
  const absl::Time start = absl::Now();
  EXPECT_EQ(pair.client->Recv(got.data(), got.size(), In(absl::Seconds(30))).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST(TcpTransportTest, CorruptedFramesAreDataLoss) {
  const std::vector<uint8_t> payload = RandomBytes(1000, 9);
  const std::vector<uint8_t> frame = CaptureFrames({payload})[0];
  ASSERT_EQ(frame.size(), kHeaderBytes + payload.size() + kTrailerBytes);
  // The untouched frame is accepted: the captured bytes are a faithful copy.
  EXPECT_TRUE(RecvFromRaw(frame, payload.size()).ok());

  struct Case {
    size_t byte;
    const char* expected;
  };
  const Case cases[] = {
      {kHeaderBytes + 500, "payload checksum mismatch"},
      {kHeaderBytes, "payload checksum mismatch"},
      {kHeaderBytes + 999, "payload checksum mismatch"},
      {kHeaderBytes + 1000, "payload checksum mismatch"},  // the checksum itself
      {kHeaderBytes + 1004, "bad frame trailer magic"},
      {0, "bad frame magic"},
      {8, "header checksum mismatch"},   // sequence number
      {16, "header checksum mismatch"},  // length
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> corrupted = frame;
    corrupted[c.byte] ^= 0x04;
    absl::Status s = RecvFromRaw(corrupted, payload.size());
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "byte " << c.byte << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.expected)) << "byte " << c.byte;
  }
}

TEST(TcpTransportTest, LostMessageIsDataLoss) {
  const std::vector<std::vector<uint8_t>> frames =
      CaptureFrames({RandomBytes(64, 1), RandomBytes(64, 2)});
  absl::Status s = RecvFromRaw(frames[1], 64);  // message #0 never arrives
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("sequence number 1, expected 0"));
}

TEST(TcpTransportTest, PeerClosingMidMessageIsUnavailableAtOnce) {
  const std::vector<uint8_t> payload = RandomBytes(1 << 20, 4);
  std::vector<uint8_t> frame = CaptureFrames({payload})[0];
  frame.resize(frame.size() / 2);
  const absl::Time start = absl::Now();
  absl::Status s = RecvFromRaw(frame, payload.size(), /*close_after=*/true);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("peer closed the connection"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
}

TEST(TcpTransportTest, NothingSentIsDeadlineExceededAtTheDeadline) {
  TransportPair pair = Connected();
  std::vector<uint8_t> got(16);
  const absl::Time start = absl::Now();
  absl::Status s = pair.server->Recv(got.data(), got.size(), start + absl::Milliseconds(200));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(took, absl::Milliseconds(200));
  EXPECT_LT(took, absl::Milliseconds(700));
  EXPECT_EQ(pair.server->Recv(got.data(), got.size(), In(absl::Seconds(1))).code(),
            absl::StatusCode::kUnavailable);
}

TEST(TcpTransportTest, StalledReceiverMakesSendMissItsDeadline) {
  TransportPair pair = Connected();
  const std::vector<uint8_t> big = RandomBytes(256 << 20, 5);  // more than socket buffers hold
  const absl::Time start = absl::Now();
  absl::Status s = pair.client->Send(big.data(), big.size(), start + absl::Milliseconds(300));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(TcpTransportTest, CloseFromAnotherThreadUnblocksRecvAndSend) {
  TransportPair pair = Connected();
  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    pair.server->Close();
  });
  std::vector<uint8_t> got(16);
  absl::Time start = absl::Now();
  absl::Status s = pair.server->Recv(got.data(), got.size(), In(absl::Seconds(30)));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("closed"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  closer.join();

  // A Send blocked on a full pipe, on another pair.
  TransportPair other = Connected();
  std::thread closer2([&] {
    absl::SleepFor(absl::Milliseconds(100));
    other.client->Close();
  });
  const std::vector<uint8_t> big = RandomBytes(256 << 20, 6);
  start = absl::Now();
  s = other.client->Send(big.data(), big.size(), In(absl::Seconds(30)));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  closer2.join();
  // The peer sees the close too.
  start = absl::Now();
  std::vector<uint8_t> sink(big.size());
  s = other.server->Recv(sink.data(), sink.size(), In(absl::Seconds(30)));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST(TcpTransportTest, AcceptHonoursItsDeadlineAndClose) {
  auto listener = TcpTransportListener::Listen("127.0.0.1", 0);
  ASSERT_TRUE(listener.ok()) << listener.status();
  EXPECT_GT((*listener)->port(), 0);
  absl::Time start = absl::Now();
  auto accepted = (*listener)->Accept(start + absl::Milliseconds(200));
  absl::Duration took = absl::Now() - start;
  EXPECT_EQ(accepted.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(took, absl::Milliseconds(200));
  EXPECT_LT(took, absl::Milliseconds(700));

  std::thread closer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (*listener)->Close();
  });
  start = absl::Now();
  accepted = (*listener)->Accept(In(absl::Seconds(30)));
  EXPECT_EQ(accepted.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  closer.join();
}

TEST(TcpTransportTest, ConnectWithNobodyListeningIsUnavailable) {
  int port;
  {
    auto listener = TcpTransportListener::Listen("127.0.0.1", 0);
    ASSERT_TRUE(listener.ok());
    port = (*listener)->port();
  }
  auto t = TcpTransport::Connect("127.0.0.1", port);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("cannot connect"));
}

// Prints, does not assert: loopback throughput depends on the machine and its load.
TEST(TcpTransportTest, LoopbackThroughput) {
  for (int buffer_bytes : {0, 4 << 20}) {
    TcpTransportOptions options;
    options.socket_buffer_bytes = buffer_bytes;
    TransportPair pair = Connected(options);
    for (int64_t size :
         {int64_t{1} << 20, int64_t{4} << 20, int64_t{16} << 20, int64_t{64} << 20}) {
      const int reps = static_cast<int>(std::max<int64_t>(4, (512ll << 20) / size));
      const std::vector<uint8_t> src = RandomBytes(size, 3);
      std::vector<uint8_t> dst(size);
      const absl::Time start = absl::Now();
      std::thread sender([&] {
        for (int i = 0; i < reps; ++i) {
          ASSERT_TRUE(pair.client->Send(src.data(), size, In(absl::Seconds(60))).ok());
        }
      });
      for (int i = 0; i < reps; ++i) {
        ASSERT_TRUE(pair.server->Recv(dst.data(), size, In(absl::Seconds(60))).ok());
      }
      sender.join();
      const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
      std::printf("TCP loopback (socket buffers %s): %3lld MiB x %3d: %.2f GB/s\n",
                  buffer_bytes == 0 ? "autotuned" : "4 MiB", static_cast<long long>(size >> 20),
                  reps, static_cast<double>(size) * reps / seconds / 1e9);
    }
  }
}

}  // namespace
}  // namespace tandem
