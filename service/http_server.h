// A small HTTP/1.1 server on epoll for the router's OpenAI-compatible API and every
// process's /metrics: non-blocking sockets, a few event-loop threads for any number of
// connections (no thread per connection), keep-alive, whole responses with Content-Length
// and streamed ones with chunked transfer encoding (server-sent events), optional TLS
// (OpenSSL) and client certificates. Requests are parsed by HttpRequestParser
// (service/http_parser.h), which the fuzzer exercises.
//
// The handler runs on an event-loop thread and must not block: it answers at once (Send),
// or keeps the HttpResponse and answers later from any thread (StartStream, Write, End).
// One request per connection is in flight at a time; pipelined requests wait their turn.
#ifndef TANDEM_SERVICE_HTTP_SERVER_H_
#define TANDEM_SERVICE_HTTP_SERVER_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/http_parser.h"

namespace tandem {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

// One request's answer. Thread-safe: once the handler has it, any thread may call it.
// Exactly one of Send, or StartStream ... End, per request; calls after the connection
// closed are dropped.
class HttpResponse {
 public:
  virtual ~HttpResponse() = default;

  // A whole response; Content-Length is added. Ends the exchange.
  virtual void Send(int status, HttpHeaders headers, std::string body) = 0;

  // Starts a streamed response (chunked for HTTP/1.1; delimited by closing the connection
  // for HTTP/1.0). Then Write any number of times, then End.
  virtual void StartStream(int status, HttpHeaders headers) = 0;
  // Queues `data` as one chunk. False once the connection is gone or the client fell more
  // than HttpServerOptions::max_pending_output_bytes behind (the connection is then
  // closed): the caller should stop producing.
  virtual bool Write(std::string_view data) = 0;
  virtual void End() = 0;

  // `on_close` runs once, on an event-loop thread, when the connection closes before the
  // exchange ended: the client left, a write failed, the client fell too far behind, or the
  // server shut down. Runs at once (on the calling thread) if that already happened. Set it
  // at most once.
  virtual void OnClose(std::function<void()> on_close) = 0;
  // True once the connection closed (or the exchange ended).
  virtual bool closed() const = 0;
};

using HttpHandler =
    std::function<void(HttpRequest request, std::shared_ptr<HttpResponse> response)>;

struct HttpServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;     // 0: any free port (HttpServer::port() tells which)
  int threads = 1;  // event loops; connections are spread over them
  // Both or neither: HTTPS. Files in PEM.
  std::string tls_cert_file;
  std::string tls_key_file;
  // With TLS: require a client certificate signed by this CA (PEM).
  std::string tls_client_ca_file;
  size_t max_header_bytes = 64 << 10;  // request line + headers; beyond: 431
  size_t max_body_bytes = 16 << 20;    // beyond: 413
  // A streaming client this many bytes behind is disconnected (its request is cancelled).
  size_t max_pending_output_bytes = 8 << 20;
  int max_connections = 10000;  // beyond: accepted and closed at once
  // A request's head and body must arrive within this (slow clients are closed).
  absl::Duration request_timeout = absl::Seconds(30);
  // A keep-alive connection with nothing in flight is closed after this.
  absl::Duration idle_timeout = absl::Seconds(120);
};

class HttpServer {
 public:
  // Binds and starts the event loops. UNAVAILABLE when the address cannot be bound;
  // INVALID_ARGUMENT (naming the file) for unreadable or bad TLS files.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(HttpServerOptions options,
                                                          HttpHandler handler);
  virtual ~HttpServer() = default;  // implementations call Shutdown()

  // The port actually bound.
  virtual int port() const = 0;
  // Stops accepting, closes every connection (their OnClose callbacks run) and joins the
  // event loops. Idempotent.
  virtual void Shutdown() = 0;
};

// "HTTP/1.1 404 Not Found" reason phrases for the codes the server and its users send.
std::string_view HttpReasonPhrase(int status);

}  // namespace tandem

#endif  // TANDEM_SERVICE_HTTP_SERVER_H_
