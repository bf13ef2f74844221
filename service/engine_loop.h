// The engine thread of a worker (DESIGN.md, threading): one thread owns the Engine and
// runs "drain commands -> step -> hand out outputs" in a loop. gRPC threads never touch
// the Engine; they Post commands (or Call and wait for a result) and receive outputs
// through the handler.
#ifndef TANDEM_SERVICE_ENGINE_LOOP_H_
#define TANDEM_SERVICE_ENGINE_LOOP_H_

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine.h"
#include "engine/kv_cache_manager.h"
#include "service/metrics.h"

namespace tandem {

class EngineLoop {
 public:
  using Command = std::function<void(Engine&)>;
  // Runs on the engine thread after every step that produced outputs.
  using OutputHandler = std::function<void(Engine&, std::vector<RequestOutput>&)>;
  // Runs on the engine thread once per loop iteration (deadlines, bookkeeping).
  using TickHandler = std::function<void(Engine&)>;

  EngineLoop(std::unique_ptr<Engine> engine, OutputHandler on_outputs, TickHandler on_tick);
  ~EngineLoop();  // Stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  void Start();
  // Stops after the current iteration; queued commands are dropped.
  void Stop();

  // Queues `command` for the engine thread; it runs before the next step.
  void Post(Command command);
  // Runs `fn` on the engine thread and returns its result (blocks the caller).
  template <typename Fn>
  auto Call(Fn fn) -> std::invoke_result_t<Fn, Engine&> {
    using R = std::invoke_result_t<Fn, Engine&>;
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    Post([this, promise, fn = std::move(fn)](Engine& engine) mutable {
      if constexpr (std::is_void_v<R>) {
        fn(engine);
        RefreshStats(engine);
        promise->set_value();
      } else {
        R result = fn(engine);
        RefreshStats(engine);
        promise->set_value(std::move(result));
      }
    });
    return future.get();
  }

  // The engine's figures after the last iteration, or after the last Call that returned
  // (a reservation shows in the free blocks once Reserve's Call is back). Any thread.
  EngineStats stats() const;
  PrefixCacheStats prefix_cache_stats() const;
  // Observes every Step's wall time in `histogram` (which must outlive the loop; null:
  // none). Any thread.
  void SetStepHistogram(metrics::Histogram* histogram);
  // Parts of the engine that never change after construction (any thread).
  const ModelConfig& config() const { return engine_->config(); }
  const Engine& engine_for_constants() const { return *engine_; }

 private:
  void Run();
  // Publishes the engine's figures for stats() and prefix_cache_stats(). Engine thread.
  void RefreshStats(const Engine& engine) ABSL_LOCKS_EXCLUDED(mu_);

  std::unique_ptr<Engine> engine_;
  const OutputHandler on_outputs_;
  const TickHandler on_tick_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::vector<Command> commands_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  PrefixCacheStats prefix_cache_stats_ ABSL_GUARDED_BY(mu_);
  std::atomic<metrics::Histogram*> step_histogram_{nullptr};
};

}  // namespace tandem

#endif  // TANDEM_SERVICE_ENGINE_LOOP_H_
