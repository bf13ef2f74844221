// Status across the gRPC boundary: absl::Status and grpc::Status share their codes, so a
// worker's INVALID_ARGUMENT reaches the router, and the router's reaches the client, as is.
#ifndef TANDEM_SERVICE_GRPC_STATUS_H_
#define TANDEM_SERVICE_GRPC_STATUS_H_

#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace tandem {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// FromGrpcStatus with "<what>: " before the message, for errors that cross a hop.
absl::Status FromGrpcStatus(const grpc::Status& status, std::string_view what);

// A ClientContext deadline `timeout` from now.
void SetDeadline(grpc::ClientContext& context, absl::Duration timeout);

// The reactor of a server-streaming call (callback API) refused before it began: it ends
// with `status` and no message, and deletes itself.
template <typename Response>
grpc::ServerWriteReactor<Response>* RefuseStream(grpc::Status status) {
  class Refused final : public grpc::ServerWriteReactor<Response> {
   public:
    explicit Refused(grpc::Status status) { this->Finish(std::move(status)); }
    void OnDone() override { delete this; }
  };
  return new Refused(std::move(status));
}

}  // namespace tandem

#endif  // TANDEM_SERVICE_GRPC_STATUS_H_
