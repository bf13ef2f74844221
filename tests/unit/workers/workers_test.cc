// The prefill and decode workers in one process, talking over real gRPC and TCP on
// loopback, without a router: the test plays the router's part of docs/SERVING.md.
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "decode_worker/decode_worker.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kvtransfer/data_path.h"
#include "prefill_worker/prefill_worker.h"
#include "service/convert.h"
#include "service/grpc_status.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

EngineOptions SmallOptions() {
  EngineOptions options;
  options.num_threads = 1;
  options.kv_cache_bytes = 32ll << 20;
  return options;
}

struct Served {
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

Served Serve(const std::vector<grpc::Service*>& services) {
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  Served served;
  served.server = builder.BuildAndStart();
  served.address = "127.0.0.1:" + std::to_string(port);
  return served;
}

// Reserve on a decode worker for `n` made-up prompt tokens (100, 101, ...), generating up
// to 8, with a `lease_s` lease: the router's step 2 alone.
grpc::Status ReserveTokens(v1::Decode::Stub& stub, const std::string& request_id, int n,
                           double lease_s, v1::ReserveResponse* reserved) {
  v1::ReserveRequest reserve;
  reserve.set_request_id(request_id);
  for (int i = 0; i < n; ++i) reserve.add_prompt_token_ids(100 + i);
  reserve.mutable_sampling()->set_max_tokens(8);
  reserve.set_deadline_s(lease_s);
  grpc::ClientContext context;
  return stub.Reserve(&context, reserve, reserved);
}

class WorkersTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto reference = Engine::FromModelPath(testing::DefaultModelPath(), SmallOptions());
    ASSERT_TRUE(reference.ok()) << reference.status();
    reference_ = reference->release();
  }
  static void TearDownTestSuite() {
    delete reference_;
    reference_ = nullptr;
  }

  void SetUp() override {
    auto decode_engine = Engine::FromModelPath(testing::DefaultModelPath(), SmallOptions());
    ASSERT_TRUE(decode_engine.ok()) << decode_engine.status();
    DecodeWorkerOptions decode_options;
    decode_options.listen_host = "127.0.0.1";
    decode_options.advertise_host = "127.0.0.1";
    decode_ = std::make_unique<DecodeWorker>(std::move(*decode_engine), decode_options);
    decode_server_ = Serve({static_cast<v1::Decode::Service*>(decode_.get()),
                            static_cast<v1::KvChannel::Service*>(decode_.get())});
    decode_->SetAddress(decode_server_.address);
    decode_->Start();

    auto prefill_engine = Engine::FromModelPath(testing::DefaultModelPath(), SmallOptions());
    ASSERT_TRUE(prefill_engine.ok()) << prefill_engine.status();
    prefill_ = std::make_unique<PrefillWorker>(std::move(*prefill_engine), PrefillWorkerOptions{});
    prefill_server_ = Serve({prefill_.get()});
    prefill_->Start();

    decode_stub_ = v1::Decode::NewStub(
        grpc::CreateChannel(decode_server_.address, grpc::InsecureChannelCredentials()));
    prefill_stub_ = v1::Prefill::NewStub(
        grpc::CreateChannel(prefill_server_.address, grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    decode_server_.server->Shutdown(std::chrono::system_clock::now());
    prefill_server_.server->Shutdown(std::chrono::system_clock::now());
    decode_->Stop();
    prefill_->Stop();
  }

  std::vector<int32_t> ChatTokens(const std::string& user) {
    std::vector<ChatMessage> messages = {{"user", user}};
    auto text = reference_->chat_template()->Render(messages, /*add_generation_prompt=*/true);
    EXPECT_TRUE(text.ok());
    return reference_->tokenizer()->Encode(*text, /*parse_special=*/true);
  }

  // The single-process engine's greedy continuation: what the workers must reproduce.
  static absl::StatusOr<GenerationResult> ReferenceGreedy(const std::vector<int32_t>& prompt,
                                                          int max_tokens) {
    GenerationRequest request;
    request.prompt_tokens = prompt;
    request.params.max_tokens = max_tokens;
    request.params.sampling.temperature = 0;
    return reference_->Generate(request);
  }

  struct Result {
    std::vector<int32_t> tokens;
    std::string text;
    v1::GenerateFinal final;
    grpc::Status status;
    v1::PrefillResponse prefill;
  };

  // Reserve on D, open its stream, prefill on P: what the router does for one request.
  Result RunDisaggregated(const std::vector<int32_t>& prompt, int max_tokens,
                          int cancel_after_tokens = -1, double lease_s = 30) {
    Result result;
    v1::ReserveRequest reserve;
    reserve.set_request_id("r" + std::to_string(next_request_++));
    reserve.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
    reserve.mutable_sampling()->set_max_tokens(max_tokens);
    reserve.mutable_sampling()->set_temperature(0);
    reserve.set_deadline_s(lease_s);
    v1::ReserveResponse reserved;
    {
      grpc::ClientContext context;
      result.status = decode_stub_->Reserve(&context, reserve, &reserved);
      if (!result.status.ok()) return result;
    }
    grpc::ClientContext stream_context;
    v1::DecodeStreamRequest stream_request;
    stream_request.set_ticket_id(reserved.ticket().ticket_id());
    auto reader = decode_stub_->Stream(&stream_context, stream_request);

    grpc::Status prefill_status;
    std::thread prefill([&] {
      v1::PrefillRequest request;
      request.set_request_id(reserve.request_id());
      *request.mutable_prompt_token_ids() = reserve.prompt_token_ids();
      *request.mutable_sampling() = reserve.sampling();
      *request.mutable_ticket() = reserved.ticket();
      grpc::ClientContext context;
      prefill_status = prefill_stub_->Prefill(&context, request, &result.prefill);
    });
    v1::DecodeEvent event;
    while (reader->Read(&event)) {
      if (event.has_delta()) {
        result.tokens.insert(result.tokens.end(), event.delta().token_ids().begin(),
                             event.delta().token_ids().end());
        result.text += event.delta().text();
        if (cancel_after_tokens >= 0 &&
            static_cast<int>(result.tokens.size()) >= cancel_after_tokens) {
          stream_context.TryCancel();
        }
      }
      if (event.has_final()) result.final = event.final();
    }
    result.status = reader->Finish();
    prefill.join();
    if (result.status.ok() && !prefill_status.ok()) result.status = prefill_status;
    return result;
  }

  v1::WorkerLoad DecodeLoad() { return decode_->CurrentLoad(); }
  v1::WorkerLoad PrefillLoad() { return prefill_->CurrentLoad(); }

  static Engine* reference_;
  std::unique_ptr<DecodeWorker> decode_;
  std::unique_ptr<PrefillWorker> prefill_;
  Served decode_server_;
  Served prefill_server_;
  std::unique_ptr<v1::Decode::Stub> decode_stub_;
  std::unique_ptr<v1::Prefill::Stub> prefill_stub_;
  int next_request_ = 1;
};

Engine* WorkersTest::reference_ = nullptr;

TEST_F(WorkersTest, DisaggregatedGreedyEqualsSingleProcess) {
  for (const char* question :
       {"What is the capital of France?", "Write a haiku about the sea.",
        "Explain photosynthesis to a child in two sentences."}) {
    const std::vector<int32_t> prompt = ChatTokens(question);
    auto expected = ReferenceGreedy(prompt, 24);
    ASSERT_TRUE(expected.ok()) << expected.status();

    Result got = RunDisaggregated(prompt, 24);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.tokens, expected->tokens) << question;
    EXPECT_EQ(got.text, expected->text);
    EXPECT_EQ(got.final.prefill_location(), v1::PREFILL_LOCATION_REMOTE);
    EXPECT_EQ(got.final.prompt_tokens(), static_cast<int>(prompt.size()));
    EXPECT_EQ(got.final.completion_tokens(), static_cast<int>(expected->tokens.size()));
    EXPECT_EQ(got.prefill.first_token(), expected->tokens.front());
  }
}

TEST_F(WorkersTest, CancelMidStreamRestoresFreeBlocks) {
  const int64_t decode_free = DecodeLoad().free_kv_blocks();
  const int64_t prefill_free = PrefillLoad().free_kv_blocks();
  Result got = RunDisaggregated(ChatTokens("Tell me a very long story about a dragon."), 200,
                                /*cancel_after_tokens=*/3);
  EXPECT_EQ(got.status.error_code(), grpc::StatusCode::CANCELLED);
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  while ((DecodeLoad().free_kv_blocks() != decode_free ||
          PrefillLoad().free_kv_blocks() != prefill_free) &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(DecodeLoad().free_kv_blocks(), decode_free);
  EXPECT_EQ(PrefillLoad().free_kv_blocks(), prefill_free);
  EXPECT_EQ(decode_->num_requests(), 0);
  EXPECT_EQ(prefill_->num_requests(), 0);
}

TEST_F(WorkersTest, UnusedReservationExpires) {
  const int64_t decode_free = DecodeLoad().free_kv_blocks();
  v1::ReserveResponse reserved;
  ASSERT_TRUE(ReserveTokens(*decode_stub_, "lost", 40, 0.2, &reserved).ok());
  EXPECT_LT(DecodeLoad().free_kv_blocks(), decode_free);
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(DecodeLoad().free_kv_blocks(), decode_free);
  EXPECT_EQ(decode_->num_requests(), 0);
}

// A reservation's lease is shorter than the prefill of its prompt: the prefill worker
// renews it while the prompt waits and computes, and the request completes as usual.
TEST_F(WorkersTest, PrefillWorkerRenewsTheReservationItHolds) {
  std::vector<int32_t> prompt = ChatTokens("Tell me about the river, the stone and the lantern.");
  while (prompt.size() < 700) prompt.push_back(prompt[prompt.size() % 20 + 1]);
  auto expected = ReferenceGreedy(prompt, 8);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const absl::Time start = absl::Now();
  Result result = RunDisaggregated(prompt, 8, -1, /*lease_s=*/0.15);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  // The prefill alone outlasted several leases.
  EXPECT_GT(absl::Now() - start, absl::Milliseconds(450));
  EXPECT_EQ(result.tokens, expected->tokens);
  EXPECT_EQ(decode_->num_requests(), 0);
  EXPECT_EQ(prefill_->num_requests(), 0);
}

// The decode worker dropped the ticket (cancelled here; expired or restarted alike): the
// prefill worker learns it at its first renewal and stops, instead of computing the whole
// prompt to be refused at Begin (which would end FAILED_PRECONDITION).
TEST_F(WorkersTest, PrefillStopsWhenTheDecodeWorkerNoLongerHoldsTheTicket) {
  std::vector<int32_t> prompt = ChatTokens("Tell me about the river, the stone and the lantern.");
  while (prompt.size() < 700) prompt.push_back(prompt[prompt.size() % 20 + 1]);
  const int64_t prefill_free = PrefillLoad().free_kv_blocks();
  v1::ReserveRequest reserve;
  reserve.set_request_id("dropped");
  reserve.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
  reserve.mutable_sampling()->set_max_tokens(4);
  reserve.set_deadline_s(0.3);
  v1::ReserveResponse reserved;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(decode_stub_->Reserve(&context, reserve, &reserved).ok());
  }
  {
    v1::CancelRequest cancel;
    cancel.set_ticket_id(reserved.ticket().ticket_id());
    v1::CancelResponse cancelled;
    grpc::ClientContext context;
    ASSERT_TRUE(decode_stub_->Cancel(&context, cancel, &cancelled).ok());
  }
  v1::PrefillRequest request;
  request.set_request_id("dropped");
  *request.mutable_prompt_token_ids() = reserve.prompt_token_ids();
  *request.mutable_sampling() = reserve.sampling();
  *request.mutable_ticket() = reserved.ticket();
  v1::PrefillResponse response;
  grpc::ClientContext context;
  const grpc::Status status = prefill_stub_->Prefill(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("no longer holds ticket"));
  const absl::Time limit = absl::Now() + absl::Seconds(10);
  while ((prefill_->num_requests() > 0 || PrefillLoad().free_kv_blocks() != prefill_free) &&
         absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(prefill_->num_requests(), 0);
  EXPECT_EQ(PrefillLoad().free_kv_blocks(), prefill_free);
}

TEST_F(WorkersTest, RenewReportsTicketsItNoLongerHolds) {
  v1::ReserveResponse reserved;
  ASSERT_TRUE(ReserveTokens(*decode_stub_, "renewed", 20, 0.2, &reserved).ok());
  EXPECT_DOUBLE_EQ(reserved.ticket().lease_s(), 0.2);
  const uint64_t id = reserved.ticket().ticket_id();
  // Renewed twice across its first deadline: still held.
  for (int i = 0; i < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(120));
    v1::RenewRequest renew;
    renew.add_ticket_ids(id);
    renew.add_ticket_ids(987654);  // never reserved
    v1::RenewResponse renewed;
    grpc::ClientContext context;
    ASSERT_TRUE(decode_stub_->Renew(&context, renew, &renewed).ok());
    ASSERT_EQ(renewed.renewed_size(), 1);
    EXPECT_EQ(renewed.renewed(0).ticket_id(), id);
    EXPECT_GT(renewed.renewed(0).deadline_unix_s(), reserved.ticket().deadline_unix_s());
    ASSERT_EQ(renewed.lost_ticket_ids_size(), 1);
    EXPECT_EQ(renewed.lost_ticket_ids(0), 987654u);
  }
  EXPECT_EQ(decode_->num_requests(), 1);
  // Left alone it expires, and a later renewal reports it lost.
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(decode_->num_requests(), 0);
  v1::RenewRequest renew;
  renew.add_ticket_ids(id);
  v1::RenewResponse renewed;
  grpc::ClientContext context;
  ASSERT_TRUE(decode_stub_->Renew(&context, renew, &renewed).ok());
  EXPECT_EQ(renewed.renewed_size(), 0);
  ASSERT_EQ(renewed.lost_ticket_ids_size(), 1);
  // Two renewals, three lost (the never-reserved one twice, the expired one once).
  const std::string scrape = decode_->metrics()->TextExposition();
  EXPECT_THAT(scrape, ::testing::ContainsRegex(
                          "tandem:reservation_renewals_total\\{[^}]*outcome=\"renewed\"[^}]*\\} 2\n"));
  EXPECT_THAT(scrape, ::testing::ContainsRegex(
                          "tandem:reservation_renewals_total\\{[^}]*outcome=\"lost\"[^}]*\\} 3\n"));
}

TEST_F(WorkersTest, BadReservationIsInvalidArgument) {
  v1::ReserveRequest reserve;
  reserve.set_request_id("bad");
  reserve.add_prompt_token_ids(1);
  reserve.mutable_sampling()->set_max_tokens(0);
  v1::ReserveResponse reserved;
  grpc::ClientContext context;
  grpc::Status status = decode_stub_->Reserve(&context, reserve, &reserved);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("max_tokens"));
}

TEST_F(WorkersTest, KvChannelRefusesAnotherLayout) {
  auto stub = v1::KvChannel::NewStub(
      grpc::CreateChannel(decode_server_.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->Transfer(&context);
  KvLayout other = decode_->layout();
  other.n_kv_heads = 8;
  v1::KvFromPrefill open;
  *open.mutable_open()->mutable_layout() = KvLayoutToProto(other);
  open.mutable_open()->set_transport("tcp");
  ASSERT_TRUE(stream->Write(open));
  v1::KvToPrefill reply;
  EXPECT_FALSE(stream->Read(&reply));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), ::testing::HasSubstr("n_kv_heads"));
}

// A prefill side that begins a transfer and then goes quiet, its stream still open: the
// decode worker ends the channel after transfer_timeout with DEADLINE_EXCEEDED, and the
// reservation expires as one whose KV never came (before: the ticket stayed "receiving",
// its blocks held until the engine's safety net a minute past the deadline).
TEST_F(WorkersTest, PrefillSideStalledMidTransferIsCutOff) {
  auto engine = Engine::FromModelPath(testing::DefaultModelPath(), SmallOptions());
  ASSERT_TRUE(engine.ok()) << engine.status();
  DecodeWorkerOptions options;
  options.listen_host = "127.0.0.1";
  options.advertise_host = "127.0.0.1";
  options.transfer_timeout = absl::Milliseconds(300);
  DecodeWorker decode(std::move(*engine), options);
  Served served = Serve({static_cast<v1::Decode::Service*>(&decode),
                         static_cast<v1::KvChannel::Service*>(&decode)});
  decode.SetAddress(served.address);
  decode.Start();
  auto channel = grpc::CreateChannel(served.address, grpc::InsecureChannelCredentials());
  const int64_t free_before = decode.CurrentLoad().free_kv_blocks();

  v1::ReserveResponse reserved;
  ASSERT_TRUE(
      ReserveTokens(*v1::Decode::NewStub(channel), "stalled", 40, 1.0, &reserved).ok());
  EXPECT_LT(decode.CurrentLoad().free_kv_blocks(), free_before);

  auto stub = v1::KvChannel::NewStub(channel);
  grpc::ClientContext context;
  auto stream = stub->Transfer(&context);
  v1::KvFromPrefill message;
  *message.mutable_open()->mutable_layout() = KvLayoutToProto(decode.layout());
  message.mutable_open()->set_transport("tcp");
  ASSERT_TRUE(stream->Write(message));
  v1::KvToPrefill reply;
  ASSERT_TRUE(stream->Read(&reply));
  absl::StatusOr<std::unique_ptr<Transport>> data =
      ConnectDataPath(TransportKind::kTcp, reply.data_address(), reply.data_token(),
                      DataPathOptions{}, absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(data.ok()) << data.status();
  // A begin that names another request (a ticket id from the worker's earlier life) is
  // refused, and the channel stays usable.
  message.Clear();
  message.mutable_begin()->set_ticket_id(reserved.ticket().ticket_id());
  message.mutable_begin()->set_num_tokens(40);
  message.mutable_begin()->set_request_id("someone-else");
  ASSERT_TRUE(stream->Write(message));
  ASSERT_TRUE(stream->Read(&reply));
  EXPECT_EQ(reply.begun_ticket_id(), 0u);
  EXPECT_THAT(reply.error(), ::testing::HasSubstr("is request stalled's, not someone-else"));
  message.mutable_begin()->set_request_id("stalled");
  ASSERT_TRUE(stream->Write(message));
  ASSERT_TRUE(stream->Read(&reply));
  ASSERT_EQ(reply.begun_ticket_id(), reserved.ticket().ticket_id()) << reply.error();

  // Silence. The decode worker closes the channel on its own.
  const absl::Time quiet = absl::Now();
  EXPECT_FALSE(stream->Read(&reply));
  const grpc::Status status = stream->Finish();
  EXPECT_LT(absl::Now() - quiet, absl::Seconds(10));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  // The ticket waits for a retry until its deadline, then frees its blocks.
  const absl::Time limit = absl::Now() + absl::Seconds(10);
  while (decode.num_requests() > 0 && absl::Now() < limit) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(decode.num_requests(), 0);
  EXPECT_EQ(decode.CurrentLoad().free_kv_blocks(), free_before);
  served.server->Shutdown(std::chrono::system_clock::now());
  decode.Stop();
}

}  // namespace
}  // namespace tandem
