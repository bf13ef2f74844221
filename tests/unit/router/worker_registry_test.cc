#include "router/worker_registry.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/generation_service.h"

namespace tandem::router {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kFingerprint[] = "model-abc";

class WorkerRegistryTest : public ::testing::Test {
 protected:
  WorkerRegistryTest() {
    WorkerRegistryOptions options;
    options.model_fingerprint = kFingerprint;
    options.heartbeat_interval = absl::Milliseconds(500);
    options.clock = [this] { return now_; };
    registry_ = std::make_unique<WorkerRegistry>(std::move(options));
  }

  static v1::RegisterRequest Request(v1::WorkerRole role, std::string address,
                                     std::string fingerprint = kFingerprint) {
    v1::RegisterRequest r;
    r.set_role(role);
    r.set_address(std::move(address));
    r.set_model("SmolLM2");
    r.mutable_kv_layout()->set_model_fingerprint(std::move(fingerprint));
    r.mutable_kv_layout()->set_block_size(16);
    r.mutable_load()->set_free_kv_blocks(100);
    r.mutable_load()->set_total_kv_blocks(100);
    return r;
  }

  static v1::WorkerLoad Load(int64_t free_blocks, int32_t running = 0, bool draining = false) {
    v1::WorkerLoad load;
    load.set_free_kv_blocks(free_blocks);
    load.set_total_kv_blocks(100);
    load.set_running_sequences(running);
    load.set_draining(draining);
    return load;
  }

  std::vector<std::string> Ids() const {
    std::vector<std::string> ids;
    for (const WorkerView& w : registry_->Snapshot()) ids.push_back(w.id);
    return ids;
  }

  absl::Time now_ = absl::FromUnixSeconds(1000);
  std::unique_ptr<WorkerRegistry> registry_;
};

TEST_F(WorkerRegistryTest, RegisterAssignsIds) {
  auto p = registry_->Register(Request(v1::WORKER_ROLE_PREFILL, "127.0.0.1:7001"));
  auto d = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"));
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*p, "prefill-1");
  EXPECT_EQ(*d, "decode-2");
  const std::vector<WorkerView> workers = registry_->Snapshot();
  ASSERT_EQ(workers.size(), 2u);
  EXPECT_EQ(workers[0].id, "decode-2");
  EXPECT_EQ(workers[0].role, v1::WORKER_ROLE_DECODE);
  EXPECT_EQ(workers[0].address, "127.0.0.1:7002");
  EXPECT_EQ(workers[0].load.free_kv_blocks(), 100);
  EXPECT_FALSE(workers[0].draining);
}

// What a worker says of its GPU and KV transports reaches placement and Health.
TEST_F(WorkerRegistryTest, DeviceAndTransportsReachTheViewAndHealth) {
  v1::RegisterRequest gpu = Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002");
  gpu.set_device_uuid("GPU-1a2b3c4d-0000-1111-2222-333344445555");
  gpu.add_transports("tcp");
  gpu.add_transports("cuda_ipc");
  auto d = registry_->Register(gpu);
  auto p = registry_->Register(Request(v1::WORKER_ROLE_PREFILL, "127.0.0.1:7001"));
  ASSERT_TRUE(d.ok() && p.ok());
  const std::optional<WorkerView> view = registry_->Find(*d);
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->device_uuid, "GPU-1a2b3c4d-0000-1111-2222-333344445555");
  EXPECT_THAT(view->transports, ElementsAre("tcp", "cuda_ipc"));

  const v1::HealthResponse health = MakeHealth(RouterMode::kDisaggregated, registry_->Snapshot());
  ASSERT_EQ(health.workers_size(), 2);
  for (const v1::WorkerStatus& w : health.workers()) {
    if (w.id() == *d) {
      EXPECT_EQ(w.device_uuid(), "GPU-1a2b3c4d-0000-1111-2222-333344445555");
      EXPECT_THAT(w.transports(), ElementsAre("tcp", "cuda_ipc"));
    } else {
      EXPECT_EQ(w.device_uuid(), "");  // a CPU worker
      EXPECT_TRUE(w.transports().empty());
    }
  }
}

TEST_F(WorkerRegistryTest, RefusesAnotherModel) {
  auto r = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002", "model-xyz"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("model-xyz"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(kFingerprint));
  EXPECT_TRUE(registry_->Snapshot().empty());
}

TEST_F(WorkerRegistryTest, RefusesMissingAddressOrRole) {
  auto no_address = registry_->Register(Request(v1::WORKER_ROLE_DECODE, ""));
  EXPECT_EQ(no_address.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_address.status().message()), HasSubstr("address"));
  auto no_role = registry_->Register(Request(v1::WORKER_ROLE_UNSPECIFIED, "127.0.0.1:1"));
  EXPECT_EQ(no_role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_role.status().message()), HasSubstr("role"));
}

TEST_F(WorkerRegistryTest, ReRegisterFromTheSameAddressReplaces) {
  ASSERT_TRUE(registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002")).ok());
  std::string replaced;
  auto again = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"), &replaced);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(replaced, "decode-1");
  EXPECT_THAT(Ids(), ElementsAre("decode-2"));
  // The old id's heartbeats are refused: it must register again.
  EXPECT_EQ(registry_->Heartbeat("decode-1", Load(5)).code(), absl::StatusCode::kNotFound);
}

TEST_F(WorkerRegistryTest, HeartbeatsUpdateLoadAndMissedBeatsExpire) {
  auto d = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"));
  auto p = registry_->Register(Request(v1::WORKER_ROLE_PREFILL, "127.0.0.1:7001"));
  ASSERT_TRUE(d.ok() && p.ok());
  now_ += absl::Milliseconds(1000);
  ASSERT_TRUE(registry_->Heartbeat(*d, Load(42, 3)).ok());
  EXPECT_EQ(registry_->Find(*d)->load.free_kv_blocks(), 42);
  EXPECT_EQ(registry_->Find(*d)->load.running_sequences(), 3);
  EXPECT_TRUE(registry_->ReapExpired().empty());  // 1.0 s < 3 x 0.5 s

  now_ += absl::Milliseconds(600);  // prefill: 1.6 s silent; decode: 0.6 s
  EXPECT_THAT(registry_->ReapExpired(), ElementsAre(*p));
  EXPECT_THAT(Ids(), ElementsAre(*d));
  now_ += absl::Milliseconds(1000);  // decode: 1.6 s
  EXPECT_THAT(registry_->ReapExpired(), ElementsAre(*d));
  EXPECT_TRUE(registry_->Snapshot().empty());
  EXPECT_EQ(registry_->Heartbeat(*d, Load(1)).code(), absl::StatusCode::kNotFound);
}

TEST_F(WorkerRegistryTest, DrainKeepsTheWorkerListedUntilRemoved) {
  auto d = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(registry_->Deregister(*d).ok());
  auto view = registry_->Find(*d);
  ASSERT_TRUE(view.has_value());
  EXPECT_TRUE(view->draining);
  // A heartbeat without the flag does not undo the drain.
  ASSERT_TRUE(registry_->Heartbeat(*d, Load(10)).ok());
  EXPECT_TRUE(registry_->Find(*d)->draining);
  EXPECT_TRUE(registry_->Remove(*d));
  EXPECT_FALSE(registry_->Remove(*d));
  EXPECT_EQ(registry_->Deregister(*d).code(), absl::StatusCode::kNotFound);
}

TEST_F(WorkerRegistryTest, DrainingFlagInAHeartbeatDrains) {
  auto d = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"));
  ASSERT_TRUE(d.ok());
  ASSERT_TRUE(registry_->Heartbeat(*d, Load(10, 0, /*draining=*/true)).ok());
  EXPECT_TRUE(registry_->Find(*d)->draining);
}

TEST_F(WorkerRegistryTest, ChargesCountUntilReleasedAndBlocksUntilReported) {
  auto d = registry_->Register(Request(v1::WORKER_ROLE_DECODE, "127.0.0.1:7002"));
  ASSERT_TRUE(d.ok());
  const auto c1 = registry_->Charge(*d, 100, 7);
  const auto c2 = registry_->Charge(*d, 50, 3);
  WorkerView v = *registry_->Find(*d);
  EXPECT_EQ(v.inflight_requests, 2);
  EXPECT_EQ(v.inflight_prompt_tokens, 150);
  EXPECT_EQ(v.unreported_blocks, 10);
  // The first beat after a charge may predate the reservation; the second shows it.
  ASSERT_TRUE(registry_->Heartbeat(*d, Load(90)).ok());
  EXPECT_EQ(registry_->Find(*d)->unreported_blocks, 10);
  ASSERT_TRUE(registry_->Heartbeat(*d, Load(90)).ok());
  EXPECT_EQ(registry_->Find(*d)->unreported_blocks, 0);
  EXPECT_EQ(registry_->Find(*d)->inflight_requests, 2);
  registry_->Release(*d, c1);
  v = *registry_->Find(*d);
  EXPECT_EQ(v.inflight_requests, 1);
  EXPECT_EQ(v.inflight_prompt_tokens, 50);
  registry_->Release(*d, c2);
  EXPECT_EQ(registry_->Find(*d)->inflight_requests, 0);
  // Charging or releasing on an unknown worker is harmless.
  registry_->Release("decode-99", registry_->Charge("decode-99", 1, 1));
}

}  // namespace
}  // namespace tandem::router
