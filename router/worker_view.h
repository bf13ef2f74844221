// One registered worker as the router sees it at one moment: what it registered, what its
// last heartbeat said, and what the router itself has in flight on it. WorkerRegistry
// produces these; Placement consumes them.
#ifndef TANDEM_ROUTER_WORKER_VIEW_H_
#define TANDEM_ROUTER_WORKER_VIEW_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tandem/v1/worker.pb.h"

namespace tandem::router {

struct WorkerView {
  std::string id;  // "prefill-1", "decode-2": assigned by the registry
  std::string address;
  v1::WorkerRole role = v1::WORKER_ROLE_UNSPECIFIED;
  bool draining = false;
  int block_size = 16;  // tokens per KV block (the worker's kv_layout)
  v1::WorkerLoad load;  // the last heartbeat's (or the registration's) figures
  // KV transports ("tcp", "cuda_ipc", "nccl"): a prefill worker's one (the one it opens),
  // a decode worker's every one it accepts. Empty: unknown (any).
  std::vector<std::string> transports;
  std::string device_uuid;  // the worker's GPU ("GPU-<uuid>"); empty on the CPU

  // Router-side counts: more current than a heartbeat that is up to one interval old.
  int32_t inflight_requests = 0;       // requests the router has placed here, not finished
  int64_t inflight_prompt_tokens = 0;  // prefill: prompt tokens of in-flight prefills
  // Decode: blocks the router reserved here that the heartbeats may not show yet.
  int64_t unreported_blocks = 0;
};

}  // namespace tandem::router

#endif  // TANDEM_ROUTER_WORKER_VIEW_H_
