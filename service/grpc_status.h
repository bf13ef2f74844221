// Status across the gRPC boundary: absl::Status and grpc::Status share their codes, so a
// worker's INVALID_ARGUMENT reaches the router, and the router's reaches the client, as is.
#ifndef TANDEM_SERVICE_GRPC_STATUS_H_
#define TANDEM_SERVICE_GRPC_STATUS_H_

#include <string_view>

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

}  // namespace tandem

#endif  // TANDEM_SERVICE_GRPC_STATUS_H_
