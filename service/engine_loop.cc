#include "service/engine_loop.h"

#include <cstdlib>

#include "common/logging.h"

namespace tandem {

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine, OutputHandler on_outputs,
                       TickHandler on_tick)
    : engine_(std::move(engine)), on_outputs_(std::move(on_outputs)),
      on_tick_(std::move(on_tick)) {
  stats_ = engine_->stats();
  prefix_cache_stats_ = engine_->kv_cache().prefix_cache_stats();
}

EngineLoop::~EngineLoop() { Stop(); }

void EngineLoop::Start() { thread_ = std::thread([this] { Run(); }); }

void EngineLoop::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::Post(Command command) {
  absl::MutexLock lock(&mu_);
  commands_.push_back(std::move(command));
}

EngineStats EngineLoop::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

PrefixCacheStats EngineLoop::prefix_cache_stats() const {
  absl::MutexLock lock(&mu_);
  return prefix_cache_stats_;
}

void EngineLoop::SetStepHistogram(metrics::Histogram* histogram) {
  step_histogram_.store(histogram, std::memory_order_release);
}

void EngineLoop::Run() {
  Engine& engine = *engine_;
  std::vector<Command> commands;
  while (true) {
    const EngineStats before = engine.stats();
    const bool busy = before.running > 0 || before.waiting > 0;
    {
      absl::MutexLock lock(&mu_);
      // Idle: sleep until a command arrives, waking now and then for deadlines.
      if (!busy) {
        auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
          return stop_ || !commands_.empty();
        };
        mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Milliseconds(10));
      }
      if (stop_) return;
      commands.swap(commands_);
    }
    for (Command& command : commands) command(engine);
    commands.clear();
    if (on_tick_) on_tick_(engine);
    if (engine.HasWork()) {
      const absl::Time step_start = absl::Now();
      absl::StatusOr<std::vector<RequestOutput>> outputs = engine.Step();
      if (metrics::Histogram* h = step_histogram_.load(std::memory_order_acquire)) {
        h->Observe(absl::ToDoubleSeconds(absl::Now() - step_start));
      }
      if (!outputs.ok()) {
        // A forward pass that fails is a bug or a broken device: the process cannot serve
        // on. The router sees the worker vanish and retries or resumes its requests.
        LOG(ERROR) << "engine step failed: " << outputs.status();
        std::_Exit(1);
      }
      if (!outputs->empty() && on_outputs_) on_outputs_(engine, *outputs);
    }
    RefreshStats(engine);
  }
}

void EngineLoop::RefreshStats(const Engine& engine) {
  const EngineStats stats = engine.stats();
  const PrefixCacheStats prefix = engine.kv_cache().prefix_cache_stats();
  absl::MutexLock lock(&mu_);
  stats_ = stats;
  prefix_cache_stats_ = prefix;
}

}  // namespace tandem
