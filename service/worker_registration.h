// A worker's membership in the router's registry (docs/SERVING.md, Registration): register
// (retrying until the router answers), keep one heartbeat stream with the worker's load,
// register again when the stream breaks (the router restarted or dropped us), and
// deregister to drain.
#ifndef TANDEM_SERVICE_WORKER_REGISTRATION_H_
#define TANDEM_SERVICE_WORKER_REGISTRATION_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "tandem/v1/worker.grpc.pb.h"

namespace tandem {

class WorkerRegistration {
 public:
  // `load` is called on the heartbeat thread for every beat. `credentials`: how to reach the
  // router (mutual TLS when the worker has certificates; `tls` says so, for the hint logged
  // when the router stays unreachable: a refused TLS handshake looks like a closed socket).
  WorkerRegistration(
      std::string router_address, v1::RegisterRequest request,
      std::function<v1::WorkerLoad()> load,
      std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials(),
      bool tls = false);
  ~WorkerRegistration();  // Stop()
  WorkerRegistration(const WorkerRegistration&) = delete;
  WorkerRegistration& operator=(const WorkerRegistration&) = delete;

  void Start();
  // Tells the router to place nothing new here; heartbeats go on (with draining set) so
  // the router keeps routing the worker's running requests' cancellations.
  void Drain();
  // Ends the heartbeat stream (the router drops the worker) and joins the thread.
  void Stop();

  bool registered() const { return registered_.load(); }
  std::string worker_id() const;

 private:
  void Run();
  // One registration and its heartbeat stream, until the stream breaks or Stop.
  void RegisterAndBeat();

  const std::string router_address_;
  const v1::RegisterRequest request_;
  const std::function<v1::WorkerLoad()> load_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  std::thread thread_;
  std::atomic<bool> registered_{false};
  std::atomic<bool> draining_{false};
  const bool tls_;
  // Registration thread only: since when Register has failed, and whether that was said.
  absl::Time failing_since_ = absl::InfinitePast();
  bool warned_unreachable_ = false;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::string worker_id_ ABSL_GUARDED_BY(mu_);
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace tandem

#endif  // TANDEM_SERVICE_WORKER_REGISTRATION_H_
