#include "router/worker_channels.h"

#include <limits>

namespace tandem::router {

std::shared_ptr<grpc::Channel> WorkerChannels::Get(const WorkerView& worker) {
  absl::MutexLock lock(&mu_);
  Cached& cached = by_address_[worker.address];
  if (cached.channel == nullptr || cached.worker_id != worker.id) {
    grpc::ChannelArguments args;
    // Token streams and long prompts: no message size limit below the proto's own.
    args.SetMaxReceiveMessageSize(std::numeric_limits<int>::max());
    args.SetMaxSendMessageSize(std::numeric_limits<int>::max());
    // NOTE: channels to one target share subchannels (and their reconnect backoff) through
    // the global pool unless each keeps its own; a fresh channel must really be fresh.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    cached.worker_id = worker.id;
    cached.channel =
        grpc::CreateCustomChannel(worker.address, credentials_, args);
  }
  return cached.channel;
}

}  // namespace tandem::router
