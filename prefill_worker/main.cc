// tandem-prefill: a prefill worker. Loads the model, serves Prefill, registers with the
// router and heartbeats; SIGTERM drains (deregister, finish what it holds, exit).
#include <memory>

#include "prefill_worker/prefill_worker.h"
#include "service/worker_process.h"

int main(int argc, char** argv) {
  return tandem::RunWorkerProcess(
      "tandem-prefill", tandem::v1::WORKER_ROLE_PREFILL, argc, argv,
      [](std::unique_ptr<tandem::Engine> engine, const tandem::WorkerFlags& flags)
          -> std::unique_ptr<tandem::WorkerService> {
        tandem::PrefillWorkerOptions options;
        options.kv_channel_credentials = tandem::MakeChannelCredentials(flags.tls);
        options.model_name = flags.model_name;
        options.kv_transport = flags.kv_transport;
        options.transfer_timeout = flags.kv_transfer_timeout;
        return std::make_unique<tandem::PrefillWorker>(std::move(engine), options);
      });
}
