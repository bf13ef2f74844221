#include "service/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct ParsedResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;                                          // de-chunked
  std::string raw_head;

  const std::string* Header(std::string_view name) const {
    for (const auto& [n, v] : headers) {
      if (n == name) return &v;
    }
    return nullptr;
  }
};

// A blocking client on loopback that speaks just enough HTTP to check the server. Plain TCP,
// or TLS when given an SSL_CTX.
class Client {
 public:
  explicit Client(int port, SSL_CTX* tls = nullptr) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{.tv_sec = 20, .tv_usec = 0};  // a hung test fails instead of hanging
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (connected_ && tls != nullptr) {
      ssl_ = SSL_new(tls);
      SSL_set_fd(ssl_, fd_);
      SSL_set_tlsext_host_name(ssl_, "localhost");
      handshake_ok_ = SSL_connect(ssl_) == 1;
    }
  }
  ~Client() { Close(); }

  bool connected() const { return connected_; }
  bool handshake_ok() const { return handshake_ok_; }
  int fd() const { return fd_; }

  void Close() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    ssl_ = nullptr;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      const int n = ssl_ != nullptr
                        ? SSL_write(ssl_, data.data(), static_cast<int>(data.size()))
                        : static_cast<int>(send(fd_, data.data(), data.size(), MSG_NOSIGNAL));
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads one response; nullopt-like (status 0) when the connection ends first.
  ParsedResponse Read(bool head_request = false) {
    ParsedResponse r;
    std::string line;
    if (!ReadLine(&line)) return r;
    r.raw_head = line + "\n";
    // "HTTP/1.1 200 OK"
    if (line.size() < 12 || line.compare(0, 5, "HTTP/") != 0) return r;
    r.status = std::atoi(line.c_str() + 9);
    while (ReadLine(&line) && !line.empty()) {
      r.raw_head += line + "\n";
      const size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      std::string value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      r.headers.emplace_back(std::move(name), std::move(value));
    }
    if (head_request || r.status == 100 || r.status == 204 || r.status == 304) return r;
    if (const std::string* te = r.Header("transfer-encoding"); te != nullptr) {
      EXPECT_EQ(*te, "chunked");
      while (ReadLine(&line)) {
        const size_t size = std::stoul(line, nullptr, 16);
        if (size == 0) {
          while (ReadLine(&line) && !line.empty()) {
          }
          break;
        }
        std::string chunk;
        if (!ReadExactly(size + 2, &chunk)) break;
        EXPECT_EQ(chunk.substr(size), "\r\n");
        r.body += chunk.substr(0, size);
      }
    } else if (const std::string* cl = r.Header("content-length"); cl != nullptr) {
      ReadExactly(std::stoul(*cl), &r.body);
    } else {
      r.body = ReadUntilClose();
    }
    return r;
  }

  // Whether the server closed the connection (EOF, or a reset) with nothing more to read.
  bool ReadsEof() {
    char c;
    return Recv(&c, 1) <= 0;
  }

  std::string ReadUntilClose() {
    std::string out = std::move(buffered_);
    buffered_.clear();
    char buf[4096];
    int n;
    while ((n = Recv(buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    return out;
  }

 private:
  int Recv(char* buf, size_t size) {
    if (!buffered_.empty()) {
      const size_t n = std::min(size, buffered_.size());
      buffered_.copy(buf, n);
      buffered_.erase(0, n);
      return static_cast<int>(n);
    }
    if (ssl_ != nullptr) return SSL_read(ssl_, buf, static_cast<int>(size));
    return static_cast<int>(recv(fd_, buf, size, 0));
  }
  bool Fill() {
    char buf[4096];
    const int n = Recv(buf, sizeof(buf));
    if (n <= 0) return false;
    buffered_.append(buf, static_cast<size_t>(n));
    return true;
  }
  bool ReadLine(std::string* line) {
    size_t lf;
    while ((lf = buffered_.find('\n')) == std::string::npos) {
      std::string saved = std::move(buffered_);
      buffered_.clear();
      const bool ok = Fill();
      buffered_ = saved + buffered_;
      if (!ok) return false;
    }
    *line = buffered_.substr(0, lf);
    if (!line->empty() && line->back() == '\r') line->pop_back();
    buffered_.erase(0, lf + 1);
    return true;
  }
  bool ReadExactly(size_t n, std::string* out) {
    while (buffered_.size() < n) {
      std::string saved = std::move(buffered_);
      buffered_.clear();
      const bool ok = Fill();
      buffered_ = saved + buffered_;
      if (!ok) return false;
    }
    *out = buffered_.substr(0, n);
    buffered_.erase(0, n);
    return true;
  }

  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool connected_ = false;
  bool handshake_ok_ = false;
  std::string buffered_;
};

std::unique_ptr<HttpServer> StartServer(HttpServerOptions options, HttpHandler handler) {
  options.host = "127.0.0.1";
  auto server = HttpServer::Start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

// Answers "<method> <path> <body>" at once.
void EchoHandler(HttpRequest request, std::shared_ptr<HttpResponse> response) {
  response->Send(200, {{"Content-Type", "text/plain"}},
                 request.method + " " + request.target + " " + request.body);
}

bool WaitFor(absl::Notification& n) { return n.WaitForNotificationWithTimeout(absl::Seconds(10)); }

TEST(HttpServerTest, GetAndPostOnOneKeepAliveConnection) {
  std::atomic<int> calls{0};
  auto server = StartServer({}, [&](HttpRequest request, std::shared_ptr<HttpResponse> response) {
    ++calls;
    EXPECT_THAT(request.peer, StartsWith("127.0.0.1:"));
    EchoHandler(std::move(request), std::move(response));
  });
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->port(), 0);
  Client client(server->port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send("GET /v1/models?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"));
  ParsedResponse r = client.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "GET /v1/models?x=1 ");
  ASSERT_NE(r.Header("content-length"), nullptr);
  EXPECT_EQ(*r.Header("content-length"), "19");
  EXPECT_NE(r.Header("date"), nullptr);
  EXPECT_EQ(r.Header("connection"), nullptr);  // HTTP/1.1 keeps alive by default
  ASSERT_TRUE(client.Send("POST /v1/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
  r = client.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /v1/completions hello");
  // Connection: close is honoured: answered, then closed.
  ASSERT_TRUE(client.Send("GET /last HTTP/1.1\r\nConnection: close\r\n\r\n"));
  r = client.Read();
  EXPECT_EQ(r.body, "GET /last ");
  ASSERT_NE(r.Header("connection"), nullptr);
  EXPECT_EQ(*r.Header("connection"), "close");
  EXPECT_TRUE(client.ReadsEof());
  EXPECT_EQ(calls.load(), 3);
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  auto server = StartServer({}, EchoHandler);
  ASSERT_NE(server, nullptr);
  Client client(server->port());
  ASSERT_TRUE(
      client.Send("POST /first HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                  "GET /second HTTP/1.1\r\n\r\nHEAD /third HTTP/1.1\r\n\r\n"));
  ParsedResponse first = client.Read();
  ParsedResponse second = client.Read();
  ParsedResponse third = client.Read(/*head_request=*/true);
  EXPECT_EQ(first.body, "POST /first abc");
  EXPECT_EQ(second.body, "GET /second ");
  EXPECT_EQ(third.status, 200);
  ASSERT_NE(third.Header("content-length"), nullptr);
  EXPECT_EQ(*third.Header("content-length"), "12");  // the length a GET would get, no body
  EXPECT_TRUE(third.body.empty());
}

TEST(HttpServerTest, Http10IsClosedAfterTheResponseUnlessKeepAlive) {
  auto server = StartServer({}, EchoHandler);
  ASSERT_NE(server, nullptr);
  Client keep(server->port());
  ASSERT_TRUE(keep.Send("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  ParsedResponse r = keep.Read();
  EXPECT_EQ(r.body, "GET /a ");
  ASSERT_NE(r.Header("connection"), nullptr);
  EXPECT_EQ(*r.Header("connection"), "keep-alive");
  ASSERT_TRUE(keep.Send("GET /b HTTP/1.0\r\n\r\n"));
  r = keep.Read();
  EXPECT_EQ(r.body, "GET /b ");
  EXPECT_EQ(*r.Header("connection"), "close");
  EXPECT_TRUE(keep.ReadsEof());
}

TEST(HttpServerTest, StreamWrittenFromAnotherThread) {
  std::thread producer;
  auto server = StartServer({}, [&](HttpRequest, std::shared_ptr<HttpResponse> response) {
    response->StartStream(200, {{"Content-Type", "text/event-stream"}});
    producer = std::thread([response] {
      for (int i = 0; i < 200; ++i) {
        EXPECT_TRUE(response->Write("data: " + std::to_string(i) + "\n\n"));
      }
      response->End();
      EXPECT_TRUE(response->closed());
      EXPECT_FALSE(response->Write("late"));
    });
  });
  ASSERT_NE(server, nullptr);
  std::string expected;
  for (int i = 0; i < 200; ++i) expected += "data: " + std::to_string(i) + "\n\n";
  Client client(server->port());
  ASSERT_TRUE(client.Send("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"));
  ParsedResponse r = client.Read();
  producer.join();
  EXPECT_EQ(r.status, 200);
  ASSERT_NE(r.Header("transfer-encoding"), nullptr);
  EXPECT_EQ(r.Header("content-length"), nullptr);
  EXPECT_EQ(*r.Header("content-type"), "text/event-stream");
  EXPECT_EQ(r.body, expected);
  // The connection is still usable after the stream.
  ASSERT_TRUE(client.Send("GET / HTTP/1.1\r\n\r\n"));
  r = client.Read();
  producer.join();
  EXPECT_EQ(r.body, expected);
}

TEST(HttpServerTest, Http10StreamIsDelimitedByClose) {
  auto server = StartServer({}, [](HttpRequest, std::shared_ptr<HttpResponse> response) {
    response->StartStream(200, {});
    response->Write("abc");
    response->Write("def");
    response->End();
  });
  ASSERT_NE(server, nullptr);
  Client client(server->port());
  ASSERT_TRUE(client.Send("GET / HTTP/1.0\r\n\r\n"));
  ParsedResponse r = client.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("transfer-encoding"), nullptr);
  EXPECT_EQ(r.body, "abcdef");
}

TEST(HttpServerTest, ClientLeavingMidStreamRunsOnClose) {
  absl::Notification closed;
  absl::Notification started;
  std::shared_ptr<HttpResponse> kept;
  auto server = StartServer({}, [&](HttpRequest, std::shared_ptr<HttpResponse> response) {
    response->OnClose([&] { closed.Notify(); });
    response->StartStream(200, {});
    EXPECT_TRUE(response->Write("first"));
    kept = response;
    started.Notify();
  });
  ASSERT_NE(server, nullptr);
  auto client = std::make_unique<Client>(server->port());
  ASSERT_TRUE(client->Send("GET /stream HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor(started));
  const absl::Time left = absl::Now();
  client.reset();
  ASSERT_TRUE(WaitFor(closed));
  EXPECT_LT(absl::Now() - left, absl::Seconds(5));  // promptly (~ms), generously bounded
  EXPECT_TRUE(kept->closed());
  EXPECT_FALSE(kept->Write("more"));
  // A second callback is ignored: OnClose is set at most once.
  bool ran = false;
  kept->OnClose([&] { ran = true; });
  EXPECT_FALSE(ran);
}

TEST(HttpServerTest, OnCloseSetAfterTheCloseRunsAtOnce) {
  absl::Notification got;
  std::shared_ptr<HttpResponse> kept;
  auto server = StartServer({}, [&](HttpRequest, std::shared_ptr<HttpResponse> response) {
    kept = response;
    got.Notify();
  });
  ASSERT_NE(server, nullptr);
  auto client = std::make_unique<Client>(server->port());
  ASSERT_TRUE(client->Send("GET / HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor(got));
  client.reset();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!kept->closed() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_TRUE(kept->closed());
  bool ran = false;
  kept->OnClose([&] { ran = true; });
  EXPECT_TRUE(ran);
}

TEST(HttpServerTest, ClientThatNeverReadsIsDisconnected) {
  HttpServerOptions options;
  options.max_pending_output_bytes = 1 << 20;
  absl::Notification closed;
  std::thread producer;
  std::atomic<size_t> written{0};
  std::atomic<bool> write_failed{false};
  auto server = StartServer(options, [&](HttpRequest, std::shared_ptr<HttpResponse> response) {
    response->OnClose([&] { closed.Notify(); });
    response->StartStream(200, {});
    producer = std::thread([&, response] {
      const std::string chunk(64 << 10, 'x');
      // Far more than the limit plus any socket buffers; stops at the first refusal.
      for (int i = 0; i < 4096; ++i) {
        if (!response->Write(chunk)) {
          write_failed = true;
          return;
        }
        written += chunk.size();
      }
    });
  });
  ASSERT_NE(server, nullptr);
  Client client(server->port());
  ASSERT_TRUE(client.Send("GET /firehose HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor(closed));
  producer.join();
  EXPECT_TRUE(write_failed.load());
  EXPECT_LT(written.load(), size_t{4096} * (64 << 10));
}

TEST(HttpServerTest, SlowRequestTimesOutWith408AndIdleConnectionCloses) {
  HttpServerOptions options;
  options.request_timeout = absl::Milliseconds(300);
  options.idle_timeout = absl::Milliseconds(300);
  auto server = StartServer(options, EchoHandler);
  ASSERT_NE(server, nullptr);
  Client slow(server->port());
  ASSERT_TRUE(slow.Send("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"));
  ParsedResponse r = slow.Read();
  EXPECT_EQ(r.status, 408);
  EXPECT_THAT(r.body, HasSubstr("\"type\":\"invalid_request_error\""));
  EXPECT_TRUE(slow.ReadsEof());

  Client idle(server->port());
  ASSERT_TRUE(idle.Send("GET / HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(idle.Read().status, 200);
  EXPECT_TRUE(idle.ReadsEof());  // closed after idle_timeout, not by us
}

TEST(HttpServerTest, ParserErrorsAreAnsweredAsJsonAndClose) {
  HttpServerOptions options;
  options.max_body_bytes = 1000;
  options.max_header_bytes = 1024;
  std::atomic<int> calls{0};
  auto server = StartServer(options, [&](HttpRequest r, std::shared_ptr<HttpResponse> response) {
    ++calls;
    EchoHandler(std::move(r), std::move(response));
  });
  ASSERT_NE(server, nullptr);
  struct Case {
    std::string request;
    int status;
  };
  const std::vector<Case> cases = {
      {"GET / HTTP/2.0\r\n\r\n", 505},
      {"GET /\"quote HTTP/1.1\r\nBad Header: x\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'x'), 413},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
      {"GET / HTTP/1.1\r\nX: " + std::string(2000, 'a') + "\r\n\r\n", 431},
  };
  for (const Case& c : cases) {
    Client client(server->port());
    ASSERT_TRUE(client.Send(c.request));
    ParsedResponse r = client.Read();
    EXPECT_EQ(r.status, c.status) << c.request.substr(0, 40);
    EXPECT_EQ(*r.Header("content-type"), "application/json");
    EXPECT_EQ(*r.Header("connection"), "close");
    EXPECT_THAT(r.body, StartsWith("{\"error\":{\"message\":\""));
    EXPECT_THAT(r.body, HasSubstr(R"("type":"invalid_request_error","param":null,"code":null}})"));
    EXPECT_TRUE(client.ReadsEof());
  }
  EXPECT_EQ(calls.load(), 0);
}

TEST(HttpServerTest, ExpectContinueGetsAnInterimResponse) {
  auto server = StartServer({}, EchoHandler);
  ASSERT_NE(server, nullptr);
  Client client(server->port());
  ASSERT_TRUE(
      client.Send("POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"));
  EXPECT_EQ(client.Read().status, 100);
  ASSERT_TRUE(client.Send("data"));
  ParsedResponse r = client.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /up data");
}

TEST(HttpServerTest, DroppedResponseIsAnswered500) {
  auto server = StartServer({}, [](HttpRequest, std::shared_ptr<HttpResponse>) {});
  ASSERT_NE(server, nullptr);
  Client client(server->port());
  ASSERT_TRUE(client.Send("GET / HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(client.Read().status, 500);
}

TEST(HttpServerTest, ThousandConnectionsInFlightOnOneThread) {
  constexpr int kClients = 1000;
  HttpServerOptions options;
  options.threads = 1;
  absl::Mutex mu;
  std::vector<std::pair<std::string, std::shared_ptr<HttpResponse>>> pending;
  auto server = StartServer(options, [&](HttpRequest r, std::shared_ptr<HttpResponse> response) {
    absl::MutexLock lock(&mu);
    pending.emplace_back(r.path, std::move(response));
  });
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<Client>(server->port()));
    ASSERT_TRUE(clients.back()->connected()) << i;
    ASSERT_TRUE(clients.back()->Send("GET /" + std::to_string(i) + " HTTP/1.1\r\n\r\n"));
  }
  // Every request is in flight at once before any is answered.
  {
    absl::MutexLock lock(&mu);
    auto all_arrived = [&] { return pending.size() == kClients; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all_arrived), absl::Seconds(60)));
  }
  std::thread worker([&] {
    absl::MutexLock lock(&mu);
    for (auto& [path, response] : pending) response->Send(200, {}, "answer for " + path);
    pending.clear();
  });
  for (int i = 0; i < kClients; ++i) {
    const ParsedResponse r = clients[i]->Read();
    ASSERT_EQ(r.status, 200) << i;
    ASSERT_EQ(r.body, "answer for /" + std::to_string(i));
  }
  worker.join();
}

TEST(HttpServerTest, ShutdownClosesOpenStreams) {
  constexpr int kStreams = 3;
  std::atomic<int> closes{0};
  absl::Mutex mu;
  std::vector<std::shared_ptr<HttpResponse>> streams;
  auto server = StartServer({}, [&](HttpRequest, std::shared_ptr<HttpResponse> response) {
    response->OnClose([&] { ++closes; });
    response->StartStream(200, {});
    absl::MutexLock lock(&mu);
    streams.push_back(std::move(response));
  });
  ASSERT_NE(server, nullptr);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kStreams; ++i) {
    clients.push_back(std::make_unique<Client>(server->port()));
    ASSERT_TRUE(clients.back()->Send("GET / HTTP/1.1\r\n\r\n"));
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&] { return streams.size() == kStreams; };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(10)));
  }
  server->Shutdown();
  EXPECT_EQ(closes.load(), kStreams);
  server->Shutdown();  // idempotent
  server.reset();
  // The responses outlive the server: every call is safe and dropped.
  for (auto& s : streams) {
    EXPECT_TRUE(s->closed());
    EXPECT_FALSE(s->Write("after"));
    s->End();
  }
  for (auto& c : clients) {
    const ParsedResponse r = c->Read();
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(c->ReadsEof());
  }
  EXPECT_EQ(closes.load(), kStreams);
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitAreClosed) {
  HttpServerOptions options;
  options.max_connections = 2;
  auto server = StartServer(options, EchoHandler);
  ASSERT_NE(server, nullptr);
  Client a(server->port());
  Client b(server->port());
  ASSERT_TRUE(a.Send("GET /a HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(b.Send("GET /b HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(a.Read().status, 200);
  EXPECT_EQ(b.Read().status, 200);
  Client c(server->port());
  c.Send("GET /c HTTP/1.1\r\n\r\n");
  EXPECT_EQ(c.Read().status, 0);
}

TEST(HttpServerTest, BindFailureIsUnavailable) {
  auto first = StartServer({}, EchoHandler);
  ASSERT_NE(first, nullptr);
  HttpServerOptions options;
  options.host = "127.0.0.1";
  options.port = first->port();
  auto second = HttpServer::Start(options, EchoHandler);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

// --- TLS -----------------------------------------------------------------------------------

// A self-signed certificate (also usable as its own CA) and key, written as PEM files.
struct TlsFiles {
  std::string cert;
  std::string key;
};

TlsFiles MakeSelfSigned(const std::string& name) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x509 = X509_new();
  X509_set_version(x509, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x509), 1);
  X509_gmtime_adj(X509_getm_notBefore(x509), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x509), 24 * 3600);
  X509_set_pubkey(x509, key);
  X509_NAME* subject = X509_get_subject_name(x509);
  X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(x509, subject);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x509, x509, nullptr, nullptr, 0);
  for (const auto& [nid, value] : std::vector<std::pair<int, const char*>>{
           {NID_basic_constraints, "critical,CA:TRUE"}, {NID_subject_alt_name, "DNS:localhost"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    X509_add_ext(x509, ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(x509, key, EVP_sha256()), 0);
  TlsFiles files{testing::TempDir() + name + ".crt", testing::TempDir() + name + ".key"};
  FILE* f = std::fopen(files.cert.c_str(), "w");
  PEM_write_X509(f, x509);
  std::fclose(f);
  f = std::fopen(files.key.c_str(), "w");
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(x509);
  EVP_PKEY_free(key);
  return files;
}

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

// A client context that trusts `ca_file`, optionally presenting a certificate.
std::unique_ptr<SSL_CTX, SslCtxFree> ClientContext(const std::string& ca_file,
                                                   const TlsFiles* client = nullptr) {
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx(SSL_CTX_new(TLS_client_method()));
  EXPECT_EQ(SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr), 1);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (client != nullptr) {
    EXPECT_EQ(SSL_CTX_use_certificate_file(ctx.get(), client->cert.c_str(), SSL_FILETYPE_PEM), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx.get(), client->key.c_str(), SSL_FILETYPE_PEM), 1);
  }
  return ctx;
}

TEST(HttpServerTlsTest, RoundTripAndStream) {
  const TlsFiles server_files = MakeSelfSigned("tls_round_trip");
  HttpServerOptions options;
  options.tls_cert_file = server_files.cert;
  options.tls_key_file = server_files.key;
  auto server = StartServer(options, [](HttpRequest r, std::shared_ptr<HttpResponse> response) {
    if (r.path == "/stream") {
      response->StartStream(200, {});
      for (int i = 0; i < 50; ++i)
        response->Write(std::string(1000, static_cast<char>('a' + i % 26)));
      response->End();
      return;
    }
    EchoHandler(std::move(r), std::move(response));
  });
  ASSERT_NE(server, nullptr);
  auto ctx = ClientContext(server_files.cert);
  Client client(server->port(), ctx.get());
  ASSERT_TRUE(client.handshake_ok());
  ASSERT_TRUE(client.Send("POST /secure HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecret"));
  ParsedResponse r = client.Read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /secure secret");
  ASSERT_TRUE(client.Send("GET /stream HTTP/1.1\r\n\r\n"));
  r = client.Read();
  std::string expected;
  for (int i = 0; i < 50; ++i) expected += std::string(1000, static_cast<char>('a' + i % 26));
  EXPECT_EQ(r.body, expected);

  // Plain HTTP to the TLS port gets no HTTP answer.
  Client plain(server->port());
  plain.Send("GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(plain.Read().status, 0);
}

TEST(HttpServerTlsTest, ClientCertificateRequired) {
  const TlsFiles server_files = MakeSelfSigned("tls_mtls_server");
  const TlsFiles client_files = MakeSelfSigned("tls_mtls_client");
  HttpServerOptions options;
  options.tls_cert_file = server_files.cert;
  options.tls_key_file = server_files.key;
  options.tls_client_ca_file = client_files.cert;
  std::atomic<int> calls{0};
  auto server = StartServer(options, [&](HttpRequest r, std::shared_ptr<HttpResponse> response) {
    ++calls;
    EchoHandler(std::move(r), std::move(response));
  });
  ASSERT_NE(server, nullptr);

  // Without a certificate: refused. Under TLS 1.3 the client may finish its side of the
  // handshake before the server's verdict arrives, so the refusal can show on the read.
  auto anonymous_ctx = ClientContext(server_files.cert);
  Client anonymous(server->port(), anonymous_ctx.get());
  if (anonymous.handshake_ok()) {
    anonymous.Send("GET / HTTP/1.1\r\n\r\n");
    EXPECT_EQ(anonymous.Read().status, 0);
  }
  ERR_clear_error();

  // With a certificate the CA signed (here: itself): served.
  auto mtls_ctx = ClientContext(server_files.cert, &client_files);
  Client trusted(server->port(), mtls_ctx.get());
  ASSERT_TRUE(trusted.handshake_ok());
  ASSERT_TRUE(trusted.Send("GET /hi HTTP/1.1\r\n\r\n"));
  EXPECT_EQ(trusted.Read().body, "GET /hi ");
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpServerTlsTest, BadFilesAreInvalidArgumentNamingTheFile) {
  const TlsFiles good = MakeSelfSigned("tls_bad_files");
  const std::string garbage = testing::TempDir() + "tls_garbage.pem";
  FILE* f = std::fopen(garbage.c_str(), "w");
  std::fputs("not a certificate\n", f);
  std::fclose(f);
  const std::string missing = testing::TempDir() + "tls_missing.pem";

  auto start = [](std::string cert, std::string key, std::string ca) {
    HttpServerOptions options;
    options.host = "127.0.0.1";
    options.tls_cert_file = std::move(cert);
    options.tls_key_file = std::move(key);
    options.tls_client_ca_file = std::move(ca);
    return HttpServer::Start(options, EchoHandler).status();
  };
  for (const auto& [status, file] : std::vector<std::pair<absl::Status, std::string>>{
           {start(missing, good.key, ""), missing},
           {start(garbage, good.key, ""), garbage},
           {start(good.cert, garbage, ""), garbage},
           {start(good.cert, good.key, missing), missing},
           {start(good.cert, good.key, garbage), garbage},
       }) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(file));
  }
  EXPECT_EQ(start(good.cert, "", "").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem
