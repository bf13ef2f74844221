// The router end to end over gRPC, in-process, with fake prefill and decode workers: the
// request path of docs/SERVING.md (Reserve, Stream before Prefill, deltas, the final),
// prefill retries, decode failover, cancellation of both legs, overload, and the Registry
// service.
#include "router/router.h"

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/strings.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "service/grpc_status.h"
#include "tandem/v1/generation.grpc.pb.h"
#include "tandem/v1/worker.grpc.pb.h"
#include "tests/testing/test_env.h"

namespace tandem::router {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Tokens a fake decode worker emits: a function of the position in the sequence, so a
// request resumed elsewhere continues the same sequence.
int32_t TokenAt(size_t position) { return 1000 + static_cast<int32_t>(position); }

// Polls `done` until true or `timeout` passes.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(5)) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

class FakeDecode;

// Decode workers by address, so a fake prefill can hand "KV" to the ticket's decode worker.
class FakeCluster {
 public:
  void Add(const std::string& address, FakeDecode* d) {
    absl::MutexLock lock(&mu_);
    decoders_[address] = d;
  }
  FakeDecode* Find(const std::string& address) {
    absl::MutexLock lock(&mu_);
    auto it = decoders_.find(address);
    return it == decoders_.end() ? nullptr : it->second;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, FakeDecode*> decoders_;
};

struct FakeDecodeOptions {
  int fail_after_tokens = -1;  // >= 0: the stream fails (UNAVAILABLE) after this many tokens
  bool exhausted = false;      // Reserve answers RESOURCE_EXHAUSTED
  absl::Duration token_interval = absl::Milliseconds(2);
};

class FakeDecode final : public v1::Decode::Service {
 public:
  explicit FakeDecode(FakeDecodeOptions options) : options_(options) {}

  grpc::Status Reserve(grpc::ServerContext*, const v1::ReserveRequest* request,
                       v1::ReserveResponse* response) override {
    absl::MutexLock lock(&mu_);
    reserves_.push_back(*request);
    if (options_.exhausted) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no free KV blocks");
    }
    const uint64_t id = next_ticket_++;
    tickets_[id] = Ticket{*request, false, false};
    response->mutable_ticket()->set_ticket_id(id);
    response->mutable_ticket()->set_request_id(request->request_id());
    response->mutable_ticket()->set_decode_address(address);
    return grpc::Status::OK;
  }

  grpc::Status Stream(grpc::ServerContext* context, const v1::DecodeStreamRequest* request,
                      grpc::ServerWriter<v1::DecodeEvent>* writer) override {
    v1::ReserveRequest reserve;
    {
      absl::MutexLock lock(&mu_);
      auto it = tickets_.find(request->ticket_id());
      if (it == tickets_.end()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no ticket");
      reserve = it->second.request;
    }
    auto cancelled = [&] {
      absl::MutexLock lock(&mu_);
      return tickets_[request->ticket_id()].cancelled;
    };
    auto finish_cancelled = [&] {
      absl::MutexLock lock(&mu_);
      ++streams_cancelled_;
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    };
    // Wait for the KV (remote prefill) unless prefilling locally.
    while (!reserve.prefill_locally()) {
      if (context->IsCancelled() || cancelled()) return finish_cancelled();
      {
        absl::MutexLock lock(&mu_);
        if (tickets_[request->ticket_id()].delivered) break;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
    const size_t n_prompt = reserve.prompt_token_ids_size();
    const int max_tokens = reserve.sampling().max_tokens();
    for (int i = 0; i < max_tokens; ++i) {
      if (context->IsCancelled() || cancelled()) return finish_cancelled();
      if (i == options_.fail_after_tokens) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected decode failure");
      }
      v1::DecodeEvent event;
      event.mutable_delta()->set_text(Cat("<", TokenAt(n_prompt + i), ">"));
      event.mutable_delta()->add_token_ids(TokenAt(n_prompt + i));
      if (!writer->Write(event)) return finish_cancelled();
      absl::SleepFor(options_.token_interval);
    }
    v1::DecodeEvent last;
    v1::GenerateFinal* final = last.mutable_final();
    final->set_finish_reason(v1::FINISH_REASON_LENGTH);
    final->set_prompt_tokens(static_cast<int32_t>(n_prompt));
    final->set_completion_tokens(max_tokens);
    final->set_decode_worker(address);
    final->set_prefill_location(reserve.prefill_locally() ? v1::PREFILL_LOCATION_LOCAL
                                                          : v1::PREFILL_LOCATION_REMOTE);
    if (reserve.prefill_locally()) final->mutable_timings()->set_prefill(0.25);
    writer->Write(last);
    return grpc::Status::OK;
  }

  grpc::Status Cancel(grpc::ServerContext*, const v1::CancelRequest* request,
                      v1::CancelResponse*) override {
    absl::MutexLock lock(&mu_);
    cancels_.push_back(request->ticket_id());
    tickets_[request->ticket_id()].cancelled = true;
    return grpc::Status::OK;
  }

  // False when the ticket's KV arrived already (a real decode worker refuses the Begin).
  bool Deliver(uint64_t ticket_id) {
    absl::MutexLock lock(&mu_);
    if (tickets_[ticket_id].delivered) return false;
    tickets_[ticket_id].delivered = true;
    return true;
  }

  std::vector<v1::ReserveRequest> reserves() {
    absl::MutexLock lock(&mu_);
    return reserves_;
  }
  std::vector<uint64_t> cancels() {
    absl::MutexLock lock(&mu_);
    return cancels_;
  }
  int streams_cancelled() {
    absl::MutexLock lock(&mu_);
    return streams_cancelled_;
  }

  std::string address;

 private:
  struct Ticket {
    v1::ReserveRequest request;
    bool delivered = false;
    bool cancelled = false;
  };
  const FakeDecodeOptions options_;
  absl::Mutex mu_;
  uint64_t next_ticket_ = 1;
  std::map<uint64_t, Ticket> tickets_;
  std::vector<v1::ReserveRequest> reserves_;
  std::vector<uint64_t> cancels_;
  int streams_cancelled_ = 0;
};

struct FakePrefillOptions {
  int fail_calls = 0;  // the first this many calls fail with `failure`
  grpc::StatusCode failure = grpc::StatusCode::UNAVAILABLE;
  bool hang = false;                 // never finishes (until cancelled)
  bool fail_after_delivery = false;  // hands the KV over, then fails (UNAVAILABLE)
};

class FakePrefill final : public v1::Prefill::Service {
 public:
  FakePrefill(FakePrefillOptions options, FakeCluster& cluster)
      : options_(options), cluster_(cluster) {}

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       v1::PrefillResponse* response) override {
    int call;
    {
      absl::MutexLock lock(&mu_);
      call = calls_++;
      request_ids_.push_back(request->request_id());
    }
    if (call < options_.fail_calls)
      return grpc::Status(options_.failure, "injected prefill failure");
    if (options_.hang) {
      while (!context->IsCancelled()) absl::SleepFor(absl::Milliseconds(2));
      absl::MutexLock lock(&mu_);
      ++calls_cancelled_;
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    FakeDecode* d = cluster_.Find(request->ticket().decode_address());
    if (d == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "no such decode worker");
    if (!d->Deliver(request->ticket().ticket_id())) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "ticket is not reserved");
    }
    if (options_.fail_after_delivery) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection lost after the KV ack");
    }
    response->set_first_token(TokenAt(request->prompt_token_ids_size()));
    response->set_cached_prompt_tokens(16);
    response->set_prefill_s(0.5);
    response->set_kv_transfer_s(0.125);
    return grpc::Status::OK;
  }

  grpc::Status Cancel(grpc::ServerContext*, const v1::CancelRequest* request,
                      v1::CancelResponse*) override {
    absl::MutexLock lock(&mu_);
    cancels_.push_back(request->request_id());
    return grpc::Status::OK;
  }

  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  int calls_cancelled() {
    absl::MutexLock lock(&mu_);
    return calls_cancelled_;
  }
  std::vector<std::string> cancels() {
    absl::MutexLock lock(&mu_);
    return cancels_;
  }
  std::vector<std::string> request_ids() {
    absl::MutexLock lock(&mu_);
    return request_ids_;
  }

 private:
  const FakePrefillOptions options_;
  FakeCluster& cluster_;
  absl::Mutex mu_;
  int calls_ = 0;
  int calls_cancelled_ = 0;
  std::vector<std::string> cancels_;
  std::vector<std::string> request_ids_;
};

// What one Generate call produced.
struct Result {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  std::optional<v1::GenerateFinal> final;
  absl::Duration elapsed;
};

class RouterTest : public ::testing::Test {
 protected:
  void StartRouter(RouterOptions options) {
    options.host = "127.0.0.1";
    options.port = 0;
    options.model = testing::DefaultModelPath();
    // Registered through the registry object: no heartbeats, so never reaped.
    options.heartbeat_interval = absl::Seconds(1000);
    auto router = Router::Start(options);
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = std::move(*router);
    channel_ =
        grpc::CreateChannel(Cat("127.0.0.1:", router_->port()), grpc::InsecureChannelCredentials());
    generation_ = v1::Generation::NewStub(channel_);
  }

  // Starts a gRPC server for `service` on a free port; returns its address.
  std::string Serve(grpc::Service* service) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service);
    servers_.push_back(builder.BuildAndStart());
    EXPECT_NE(port, 0);
    return Cat("127.0.0.1:", port);
  }

  std::string Register(v1::WorkerRole role, const std::string& address) {
    v1::RegisterRequest r;
    r.set_role(role);
    r.set_address(address);
    r.mutable_kv_layout()->set_model_fingerprint(router_->model().fingerprint());
    r.mutable_kv_layout()->set_block_size(16);
    r.mutable_load()->set_free_kv_blocks(1000);
    r.mutable_load()->set_total_kv_blocks(1000);
    auto id = router_->registry().Register(r);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or("");
  }

  FakeDecode* AddDecode(FakeDecodeOptions options = {}) {
    decoders_.push_back(std::make_unique<FakeDecode>(options));
    FakeDecode* d = decoders_.back().get();
    d->address = Serve(d);
    cluster_.Add(d->address, d);
    Register(v1::WORKER_ROLE_DECODE, d->address);
    return d;
  }

  FakePrefill* AddPrefill(FakePrefillOptions options = {}) {
    prefills_.push_back(std::make_unique<FakePrefill>(options, cluster_));
    FakePrefill* p = prefills_.back().get();
    Register(v1::WORKER_ROLE_PREFILL, Serve(p));
    return p;
  }

  static v1::GenerateRequest Tokens(int n_prompt, int max_tokens) {
    v1::GenerateRequest r;
    for (int i = 0; i < n_prompt; ++i) r.mutable_token_ids()->add_ids(500 + i);
    r.mutable_sampling()->set_max_tokens(max_tokens);
    return r;
  }

  // `cancel_when`: TryCancel once this turns true (polled).
  Result Generate(const v1::GenerateRequest& request, std::function<bool()> cancel_when = nullptr,
                  absl::Duration deadline = absl::Seconds(20)) {
    Result result;
    grpc::ClientContext context;
    SetDeadline(context, deadline);
    const absl::Time start = absl::Now();
    std::thread canceller;
    std::atomic<bool> finished{false};
    if (cancel_when != nullptr) {
      canceller = std::thread([&] {
        while (!finished.load() && !cancel_when()) absl::SleepFor(absl::Milliseconds(2));
        context.TryCancel();
      });
    }
    auto reader = generation_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      if (response.has_delta()) {
        result.tokens.insert(result.tokens.end(), response.delta().token_ids().begin(),
                             response.delta().token_ids().end());
        result.text += response.delta().text();
      }
      if (response.has_final()) {
        EXPECT_FALSE(result.final.has_value()) << "two final messages";
        result.final = response.final();
      }
    }
    result.status = reader->Finish();
    result.elapsed = absl::Now() - start;
    finished.store(true);
    if (canceller.joinable()) canceller.join();
    return result;
  }

  static std::vector<int32_t> Expected(size_t n_prompt, int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(TokenAt(n_prompt + i));
    return t;
  }

  void TearDown() override {
    if (router_ != nullptr) router_->Shutdown(absl::Seconds(1));
    for (auto& s : servers_) s->Shutdown(std::chrono::system_clock::now());
  }

  FakeCluster cluster_;
  std::vector<std::unique_ptr<FakeDecode>> decoders_;
  std::vector<std::unique_ptr<FakePrefill>> prefills_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;
  std::unique_ptr<Router> router_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
};

TEST_F(RouterTest, CollocatedStreamsDeltasAndCompletesTheFinal) {
  StartRouter({.mode = RouterMode::kCollocated});
  FakeDecode* d = AddDecode();
  v1::GenerateRequest request = Tokens(20, 5);
  request.set_request_id("client-7");
  Result r = Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAreArray(Expected(20, 5)));
  EXPECT_EQ(r.text, "<1020><1021><1022><1023><1024>");
  ASSERT_TRUE(r.final.has_value());
  const v1::GenerateFinal& f = *r.final;
  EXPECT_EQ(f.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(f.prompt_tokens(), 20);
  EXPECT_EQ(f.completion_tokens(), 5);
  EXPECT_EQ(f.request_id(), "client-7");
  EXPECT_EQ(f.decode_worker(), "decode-1");
  EXPECT_EQ(f.prefill_worker(), "");
  EXPECT_EQ(f.prefill_location(), v1::PREFILL_LOCATION_LOCAL);
  EXPECT_EQ(f.prefill_retries(), 0);
  EXPECT_DOUBLE_EQ(f.timings().prefill(), 0.25);  // the decode worker's local prefill
  EXPECT_GT(f.timings().first_token(), 0);
  EXPECT_GE(f.timings().total(), f.timings().first_token());
  EXPECT_GE(f.timings().first_token(), f.timings().queued());
  EXPECT_GT(f.timings().decode(), 0);

  ASSERT_EQ(d->reserves().size(), 1u);
  const v1::ReserveRequest reserve = d->reserves()[0];
  EXPECT_TRUE(reserve.prefill_locally());
  EXPECT_EQ(reserve.prompt_token_ids_size(), 20);
  EXPECT_EQ(reserve.sampling().max_tokens(), 5);
  EXPECT_DOUBLE_EQ(reserve.deadline_s(), 30.0);
  EXPECT_FALSE(reserve.request_id().empty());
  EXPECT_NE(reserve.request_id(), "client-7");  // the workers see the router's own id

  // Without a client id, the final carries the router's.
  Result r2 = Generate(Tokens(3, 1));
  ASSERT_TRUE(r2.final.has_value());
  EXPECT_EQ(r2.final->request_id(), d->reserves()[1].request_id());
  EXPECT_NE(r2.final->request_id(), reserve.request_id());
}

TEST_F(RouterTest, DisaggregatedPrefillsRemotelyAndRetriesAnotherPrefillWorker) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  FakePrefill* bad = AddPrefill({.fail_calls = 100});  // prefill-1: least loaded on ties
  FakePrefill* good = AddPrefill();                    // prefill-2
  FakeDecode* d = AddDecode();
  Result r = Generate(Tokens(40, 4));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAreArray(Expected(40, 4)));
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->prefill_location(), v1::PREFILL_LOCATION_REMOTE);
  EXPECT_EQ(r.final->prefill_worker(), "prefill-2");
  EXPECT_EQ(r.final->decode_worker(), "decode-3");
  EXPECT_EQ(r.final->prefill_retries(), 1);
  EXPECT_EQ(r.final->cached_prompt_tokens(), 16);
  EXPECT_DOUBLE_EQ(r.final->timings().prefill(), 0.5);
  EXPECT_DOUBLE_EQ(r.final->timings().kv_transfer(), 0.125);
  EXPECT_EQ(bad->calls(), 1);
  EXPECT_EQ(good->calls(), 1);
  ASSERT_EQ(d->reserves().size(), 1u);
  EXPECT_FALSE(d->reserves()[0].prefill_locally());
  // Both prefill attempts carried the reservation's request id.
  EXPECT_EQ(bad->request_ids()[0], d->reserves()[0].request_id());
  EXPECT_EQ(good->request_ids()[0], d->reserves()[0].request_id());
  EXPECT_TRUE(d->cancels().empty());
}

TEST_F(RouterTest, PrefillThatFailsForGoodCancelsTheTicketAndEndsWithItsStatus) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  FakePrefill* p = AddPrefill({.fail_calls = 100, .failure = grpc::StatusCode::INTERNAL});
  FakeDecode* d = AddDecode();
  Result r = Generate(Tokens(40, 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INTERNAL) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("injected prefill failure"));
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(p->calls(), 3);  // at most 3 tries (the same worker: there is no other)
  EXPECT_EQ(d->cancels().size(), 1u);
}

TEST_F(RouterTest, PrefillFailingAfterTheHandOffDoesNotKillTheRequest) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  AddPrefill({.fail_after_delivery = true});
  FakeDecode* d = AddDecode({.token_interval = absl::Milliseconds(20)});
  Result r = Generate(Tokens(40, 6));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAreArray(Expected(40, 6)));
  EXPECT_TRUE(d->cancels().empty());
}

TEST_F(RouterTest, InvalidArgumentFromPrefillIsNotRetried) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  FakePrefill* p1 = AddPrefill({.fail_calls = 100, .failure = grpc::StatusCode::INVALID_ARGUMENT});
  FakePrefill* p2 = AddPrefill();
  AddDecode();
  Result r = Generate(Tokens(40, 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(p1->calls(), 1);
  EXPECT_EQ(p2->calls(), 0);
}

TEST_F(RouterTest, DecodeFailureResumesOnAnotherDecodeWorker) {
  StartRouter({.mode = RouterMode::kCollocated});
  FakeDecode* d1 = AddDecode({.fail_after_tokens = 3});
  FakeDecode* d2 = AddDecode();
  Result r = Generate(Tokens(10, 8));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_THAT(r.tokens, ElementsAreArray(Expected(10, 8)));
  ASSERT_TRUE(r.final.has_value());
  EXPECT_EQ(r.final->prompt_tokens(), 10);
  EXPECT_EQ(r.final->completion_tokens(), 8);
  EXPECT_EQ(r.final->decode_worker(), "decode-2");
  ASSERT_EQ(d1->reserves().size(), 1u);
  ASSERT_EQ(d2->reserves().size(), 1u);
  // The resumed request: the prompt plus the 3 tokens generated, 5 tokens to go.
  const v1::ReserveRequest resumed = d2->reserves()[0];
  std::vector<int32_t> prompt(resumed.prompt_token_ids().begin(), resumed.prompt_token_ids().end());
  ASSERT_EQ(prompt.size(), 13u);
  EXPECT_THAT(std::vector<int32_t>(prompt.begin() + 10, prompt.end()),
              ElementsAreArray(Expected(10, 3)));
  EXPECT_EQ(resumed.sampling().max_tokens(), 5);
}

TEST_F(RouterTest, DecodeFailureWithNoOtherDecodeWorkerIsUnavailable) {
  StartRouter({.mode = RouterMode::kCollocated});
  AddDecode({.fail_after_tokens = 2});
  Result r = Generate(Tokens(10, 8));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("decode worker decode-1"));
  EXPECT_THAT(r.status.error_message(), HasSubstr("injected decode failure"));
  EXPECT_EQ(r.tokens.size(), 2u);
}

TEST_F(RouterTest, ClientCancelCancelsBothLegs) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  FakePrefill* p = AddPrefill({.hang = true});
  FakeDecode* d = AddDecode();
  // Cancelled while the prefill runs and the decode stream waits for the KV.
  Result r = Generate(Tokens(40, 4), [&] { return p->calls() == 1; });
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(r.elapsed, absl::Seconds(5));
  // The stream and the prefill call were cancelled, and both workers were told.
  EXPECT_TRUE(WaitFor([&] { return d->streams_cancelled() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return p->calls_cancelled() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return d->cancels().size() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return p->cancels().size() == 1; }));
  ASSERT_EQ(d->reserves().size(), 1u);
  EXPECT_EQ(p->cancels()[0], d->reserves()[0].request_id());
}

TEST_F(RouterTest, ClientDeadlineCancelsTheDecodeStream) {
  StartRouter({.mode = RouterMode::kCollocated});
  FakeDecode* d = AddDecode({.token_interval = absl::Milliseconds(50)});
  Result r = Generate(Tokens(10, 1000), nullptr, absl::Milliseconds(400));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_FALSE(r.tokens.empty());
  EXPECT_TRUE(WaitFor([&] { return d->streams_cancelled() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return d->cancels().size() == 1; }));
}

TEST_F(RouterTest, DisaggregatedWithoutPrefillWorkerIsUnavailable) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  FakeDecode* d = AddDecode();
  Result r = Generate(Tokens(10, 2));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(r.status.error_message(), "no prefill worker registered (mode disaggregated)");
  EXPECT_TRUE(d->reserves().empty());
}

TEST_F(RouterTest, AutoPrefillsShortPromptsLocallyAndLongOnesRemotely) {
  StartRouter({.mode = RouterMode::kAuto, .auto_local_max_tokens = 32});
  FakeDecode* d = AddDecode();
  // No prefill worker: local whatever the length.
  Result r0 = Generate(Tokens(100, 2));
  ASSERT_TRUE(r0.status.ok()) << r0.status.error_message();
  EXPECT_EQ(r0.final->prefill_location(), v1::PREFILL_LOCATION_LOCAL);
  AddPrefill();
  Result r1 = Generate(Tokens(32, 2));
  ASSERT_TRUE(r1.status.ok()) << r1.status.error_message();
  EXPECT_EQ(r1.final->prefill_location(), v1::PREFILL_LOCATION_LOCAL);
  Result r2 = Generate(Tokens(33, 2));
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  EXPECT_EQ(r2.final->prefill_location(), v1::PREFILL_LOCATION_REMOTE);
  // The request's mode overrides the router's.
  v1::GenerateRequest collocated = Tokens(100, 2);
  collocated.set_mode(v1::PREFILL_MODE_COLLOCATED);
  Result r3 = Generate(collocated);
  ASSERT_TRUE(r3.status.ok()) << r3.status.error_message();
  EXPECT_EQ(r3.final->prefill_location(), v1::PREFILL_LOCATION_LOCAL);
  ASSERT_EQ(d->reserves().size(), 4u);
  EXPECT_TRUE(d->reserves()[3].prefill_locally());
}

TEST_F(RouterTest, NoDecodeWorkerIsUnavailable) {
  StartRouter({.mode = RouterMode::kCollocated});
  Result r = Generate(Tokens(10, 2));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(r.status.error_message(), HasSubstr("no decode worker"));
}

TEST_F(RouterTest, FullDecodeWorkersTimeOutWithResourceExhausted) {
  StartRouter({.mode = RouterMode::kCollocated, .queue_timeout = absl::Milliseconds(300)});
  FakeDecode* d1 = AddDecode({.exhausted = true});
  FakeDecode* d2 = AddDecode({.exhausted = true});
  Result r = Generate(Tokens(10, 2));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << r.status.error_message();
  EXPECT_GE(r.elapsed, absl::Milliseconds(300));
  EXPECT_LT(r.elapsed, absl::Seconds(3));
  // Both were tried, more than once (backoff 10 ms doubling to 200 ms).
  EXPECT_GE(d1->reserves().size(), 2u);
  EXPECT_GE(d2->reserves().size(), 2u);
}

// A request behind the prefill gate waits there, holding nothing (no decode reservation),
// until its queue deadline, or until its client leaves.
TEST_F(RouterTest, PrefillGateHoldsRequestsUntilTheirQueueDeadlineOrClientLeaves) {
  StartRouter({.mode = RouterMode::kDisaggregated,
               .queue_timeout = absl::Milliseconds(300),
               .prefill_queue_tokens = 20});
  FakePrefill* p = AddPrefill({.hang = true});
  FakeDecode* d = AddDecode();
  std::atomic<bool> release_first{false};
  Result first_result;
  std::thread first(
      [&] { first_result = Generate(Tokens(20, 2), [&] { return release_first.load(); }); });
  ASSERT_TRUE(WaitFor([&] { return p->calls() == 1; }));  // 20 tokens in flight: full

  Result timed_out = Generate(Tokens(20, 2));
  EXPECT_EQ(timed_out.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(timed_out.status.error_message(),
              HasSubstr("the prefill workers stayed full for 300ms (20 prompt tokens in flight)"));
  EXPECT_GE(timed_out.elapsed, absl::Milliseconds(300));

  const absl::Time start = absl::Now();
  Result left = Generate(
      Tokens(20, 2), [&] { return absl::Now() - start > absl::Milliseconds(50); },
      absl::Seconds(20));
  EXPECT_EQ(left.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(left.elapsed, absl::Milliseconds(300));  // it did not wait out its queue deadline

  EXPECT_EQ(d->reserves().size(), 1u);  // neither queued request reserved anything
  EXPECT_EQ(p->calls(), 1);
  release_first.store(true);
  first.join();
  EXPECT_EQ(first_result.status.error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(RouterTest, QueueFullIsResourceExhausted) {
  StartRouter({.mode = RouterMode::kDisaggregated, .max_queue = 1});
  FakePrefill* p = AddPrefill({.hang = true});
  AddDecode();
  std::atomic<bool> second_done{false};
  Result first_result;
  std::thread first(
      [&] { first_result = Generate(Tokens(20, 2), [&] { return second_done.load(); }); });
  ASSERT_TRUE(WaitFor([&] { return p->calls() == 1; }));  // the first one is in flight
  Result r = Generate(Tokens(20, 2));
  second_done.store(true);
  first.join();
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(r.status.error_message(), "router queue full (1 requests)");
  EXPECT_EQ(first_result.status.error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(RouterTest, ValidationHappensAtTheEdge) {
  StartRouter({.mode = RouterMode::kCollocated});
  Result r = Generate(Tokens(10, 0));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message(), "sampling.max_tokens must be > 0, got 0");
}

TEST_F(RouterTest, HealthAndListModels) {
  StartRouter({.mode = RouterMode::kDisaggregated});
  auto health = [&] {
    grpc::ClientContext context;
    v1::HealthResponse response;
    EXPECT_TRUE(generation_->Health(&context, v1::HealthRequest(), &response).ok());
    return response;
  };
  EXPECT_FALSE(health().serving());
  EXPECT_EQ(health().mode(), "disaggregated");
  AddDecode();
  EXPECT_FALSE(health().serving());  // disaggregated needs a prefill worker too
  AddPrefill();
  v1::HealthResponse h = health();
  EXPECT_TRUE(h.serving());
  EXPECT_EQ(h.prefill_workers(), 1);
  EXPECT_EQ(h.decode_workers(), 1);
  ASSERT_EQ(h.workers_size(), 2);
  EXPECT_EQ(h.workers(0).id(), "decode-1");
  EXPECT_EQ(h.workers(0).role(), "decode");
  EXPECT_EQ(h.workers(0).free_kv_blocks(), 1000);
  EXPECT_EQ(h.workers(1).role(), "prefill");
  ASSERT_TRUE(router_->registry().Deregister("prefill-2").ok());
  h = health();
  EXPECT_FALSE(h.serving());
  EXPECT_EQ(h.prefill_workers(), 0);
  EXPECT_TRUE(h.workers(1).draining());

  grpc::ClientContext context;
  v1::ListModelsResponse models;
  ASSERT_TRUE(generation_->ListModels(&context, v1::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), "SmolLM2-135M-Instruct.Q4_1");
  EXPECT_EQ(models.models(0).context_length(), 8192);
  EXPECT_EQ(models.models(0).fingerprint(), router_->model().fingerprint());
}

// The Registry service over gRPC, with a short heartbeat interval.
TEST_F(RouterTest, MetricsCountRequestsTokensAndLatencies) {
  RouterOptions options;
  options.mode = RouterMode::kDisaggregated;
  StartRouter(options);
  AddPrefill();
  AddDecode();
  for (int i = 0; i < 3; ++i) {
    Result r = Generate(Tokens(40, 4));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  }
  EXPECT_EQ(Generate(Tokens(10, 0)).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  const std::string text = router_->metrics().TextExposition();
  const std::string m = Cat("model_name=\"", router_->model().id(), "\"");
  auto line = [&](const std::string& name, const std::string& labels, const std::string& value) {
    return Cat("\n", name, "{", m, labels.empty() ? "" : ",", labels, "} ", value, "\n");
  };
  EXPECT_THAT(text, HasSubstr(line("tandem:requests_total", "outcome=\"ok\"", "3")));
  EXPECT_THAT(text, HasSubstr(line("tandem:requests_total", "outcome=\"invalid_argument\"", "1")));
  EXPECT_THAT(text, HasSubstr(line("tandem:requests_total", "outcome=\"cancelled\"", "0")));
  EXPECT_THAT(text,
              HasSubstr(line("tandem:request_success_total", "finished_reason=\"length\"", "3")));
  EXPECT_THAT(text, HasSubstr(line("tandem:generation_tokens_total", "", "12")));
  EXPECT_THAT(text, HasSubstr(line("tandem:prompt_tokens_total", "", "120")));
  EXPECT_THAT(text, HasSubstr(line("tandem:time_to_first_token_seconds_count", "", "3")));
  EXPECT_THAT(text,
              HasSubstr(line("tandem:time_to_first_token_seconds_bucket", "le=\"+Inf\"", "3")));
  // 4 deltas a request: 3 gaps each.
  EXPECT_THAT(text, HasSubstr(line("tandem:inter_token_latency_seconds_count", "", "9")));
  EXPECT_THAT(text, HasSubstr(line("tandem:e2e_request_latency_seconds_count", "", "3")));
  EXPECT_THAT(text, HasSubstr(line("tandem:request_queue_time_seconds_count", "", "3")));
  // The fake prefill reports 0.5 s of prefill and 0.125 s of KV transfer.
  EXPECT_THAT(text, HasSubstr(line("tandem:request_prefill_time_seconds_sum", "", "1.5")));
  EXPECT_THAT(text, HasSubstr(line("tandem:kv_transfer_seconds_sum", "", "0.375")));
  EXPECT_THAT(text, HasSubstr(line("tandem:request_generation_tokens_sum", "", "12")));
  EXPECT_THAT(text, HasSubstr(line("tandem:prefills_total", "location=\"remote\"", "3")));
  EXPECT_THAT(text, HasSubstr(line("tandem:prefills_total", "location=\"local\"", "0")));
  EXPECT_THAT(text, HasSubstr(line("tandem:prefill_retries_total", "", "0")));
  EXPECT_THAT(text, HasSubstr(line("tandem:num_requests_running", "", "0")));
  EXPECT_THAT(text, HasSubstr(line("tandem:num_requests_waiting", "", "0")));
  EXPECT_THAT(text, HasSubstr(line("tandem:workers", "role=\"decode\",state=\"serving\"", "1")));
  EXPECT_THAT(text, HasSubstr(line("tandem:workers", "role=\"prefill\",state=\"serving\"", "1")));
  EXPECT_THAT(text, HasSubstr("# TYPE tandem:time_to_first_token_seconds histogram\n"));
}

class RegistryServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RouterOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.model = testing::DefaultModelPath();
    options.heartbeat_interval = absl::Milliseconds(100);
    auto router = Router::Start(options);
    ASSERT_TRUE(router.ok()) << router.status();
    router_ = std::move(*router);
    stub_ = v1::Registry::NewStub(grpc::CreateChannel(Cat("127.0.0.1:", router_->port()),
                                                      grpc::InsecureChannelCredentials()));
  }

  v1::RegisterRequest Request(const std::string& fingerprint) {
    v1::RegisterRequest r;
    r.set_role(v1::WORKER_ROLE_DECODE);
    r.set_address("127.0.0.1:9");
    r.mutable_kv_layout()->set_model_fingerprint(fingerprint);
    return r;
  }

  std::unique_ptr<Router> router_;
  std::unique_ptr<v1::Registry::Stub> stub_;
};

TEST_F(RegistryServiceTest, RegisterBeatAndLeave) {
  grpc::ClientContext register_context;
  v1::RegisterResponse registered;
  ASSERT_TRUE(
      stub_->Register(&register_context, Request(router_->model().fingerprint()), &registered)
          .ok());
  EXPECT_EQ(registered.worker_id(), "decode-1");
  EXPECT_DOUBLE_EQ(registered.heartbeat_interval_s(), 0.1);

  grpc::ClientContext stream_context;
  auto stream = stub_->Heartbeats(&stream_context);
  v1::Heartbeat beat;
  beat.set_worker_id("decode-1");
  beat.mutable_load()->set_free_kv_blocks(77);
  v1::HeartbeatAck ack;
  // Beats for longer than 3 intervals keep the worker.
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(stream->Write(beat));
    ASSERT_TRUE(stream->Read(&ack));
    absl::SleepFor(absl::Milliseconds(50));
  }
  auto view = router_->registry().Find("decode-1");
  ASSERT_TRUE(view.has_value());
  EXPECT_EQ(view->load.free_kv_blocks(), 77);

  grpc::ClientContext deregister_context;
  v1::DeregisterRequest deregister;
  deregister.set_worker_id("decode-1");
  v1::DeregisterResponse ignored;
  ASSERT_TRUE(stub_->Deregister(&deregister_context, deregister, &ignored).ok());
  EXPECT_TRUE(router_->registry().Find("decode-1")->draining);

  // The stream ends: the worker is gone.
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(WaitFor([&] { return router_->registry().Snapshot().empty(); }));
}

TEST_F(RegistryServiceTest, SilentWorkerIsDroppedAndItsStreamEnds) {
  grpc::ClientContext register_context;
  v1::RegisterResponse registered;
  ASSERT_TRUE(
      stub_->Register(&register_context, Request(router_->model().fingerprint()), &registered)
          .ok());
  grpc::ClientContext stream_context;
  auto stream = stub_->Heartbeats(&stream_context);
  v1::Heartbeat beat;
  beat.set_worker_id(registered.worker_id());
  v1::HeartbeatAck ack;
  ASSERT_TRUE(stream->Write(beat));
  ASSERT_TRUE(stream->Read(&ack));
  // No more beats: dropped after 3 intervals (0.3 s), and the stream is cancelled.
  EXPECT_TRUE(WaitFor([&] { return router_->registry().Snapshot().empty(); }, absl::Seconds(2)));
  EXPECT_FALSE(stream->Read(&ack));
  EXPECT_FALSE(stream->Finish().ok());
}

TEST_F(RegistryServiceTest, UnknownWorkerIdIsNotFound) {
  grpc::ClientContext stream_context;
  auto stream = stub_->Heartbeats(&stream_context);
  v1::Heartbeat beat;
  beat.set_worker_id("decode-42");
  stream->Write(beat);
  v1::HeartbeatAck ack;
  EXPECT_FALSE(stream->Read(&ack));
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(RegistryServiceTest, OtherModelIsFailedPrecondition) {
  grpc::ClientContext context;
  v1::RegisterResponse registered;
  grpc::Status s = stub_->Register(&context, Request("not-the-model"), &registered);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("not-the-model"));
  EXPECT_THAT(s.error_message(), HasSubstr(router_->model().fingerprint()));
}

}  // namespace
}  // namespace tandem::router
