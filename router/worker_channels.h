// One grpc::Channel per worker address, shared by every request to that worker. A worker
// that registers again at the same address (a restart) gets a fresh channel, so a channel
// stuck in reconnect backoff to the dead process is never reused.
//
// Thread-safe.
#ifndef TANDEM_ROUTER_WORKER_CHANNELS_H_
#define TANDEM_ROUTER_WORKER_CHANNELS_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "router/worker_view.h"

namespace tandem::router {

class WorkerChannels {
 public:
  // `credentials`: how to reach the workers (mutual TLS when the router has --tls-ca).
  explicit WorkerChannels(
      std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials())
      : credentials_(std::move(credentials)) {}

  std::shared_ptr<grpc::Channel> Get(const WorkerView& worker);

 private:
  struct Cached {
    std::string worker_id;
    std::shared_ptr<grpc::Channel> channel;
  };
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Cached> by_address_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_CHANNELS_H_
