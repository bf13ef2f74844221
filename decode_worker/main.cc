// tandem-decode: a decode worker. Loads the model, serves Decode and KvChannel, registers
// with the router and heartbeats; SIGTERM drains (deregister, finish what it holds, exit).
#include <memory>

#include "decode_worker/decode_worker.h"
#include "service/worker_process.h"

int main(int argc, char** argv) {
  return tandem::RunWorkerProcess(
      "tandem-decode", tandem::v1::WORKER_ROLE_DECODE, argc, argv,
      [](std::unique_ptr<tandem::Engine> engine, const tandem::WorkerFlags& flags)
          -> std::unique_ptr<tandem::WorkerService> {
        tandem::DecodeWorkerOptions options;
        options.listen_host = flags.host;
        options.advertise_host = flags.advertise_host;
        options.model_name = flags.model_name;
        options.transfer_timeout = flags.kv_transfer_timeout;
        return std::make_unique<tandem::DecodeWorker>(std::move(engine), options);
      });
}
