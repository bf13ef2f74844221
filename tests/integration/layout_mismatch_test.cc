// KV layouts must match end to end: the router refuses a worker whose model differs from its
// own (FAILED_PRECONDITION), and a decode worker refuses a KV channel whose layout differs
// from its cache, naming the field.
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/gguf_file.h"
#include "engine/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvtransfer/kv_layout.h"
#include "service/grpc_status.h"
#include "tests/integration/assertions.h"
#include "tests/integration/cluster.h"
#include "tests/testing/test_env.h"

namespace tandem::integration {
namespace {

using tandem::v1::KvFromPrefill;
using tandem::v1::KvLayoutProto;
using tandem::v1::KvToPrefill;

// The layout every worker serving the default model uses (block size 16, f16: the engine's
// defaults, which the workers keep).
absl::StatusOr<KvLayout> DefaultLayout() {
  auto gguf = GgufFile::Open(testing::DefaultModelPath());
  if (!gguf.ok()) return gguf.status();
  auto config = ModelConfigFromGguf(**gguf);
  if (!config.ok()) return config.status();
  return KvLayout::For(*config, 16, KvDtype::kF16);
}

KvLayoutProto ToProto(const KvLayout& layout) {
  KvLayoutProto p;
  p.set_model_fingerprint(layout.model_fingerprint);
  p.set_n_layers(layout.n_layers);
  p.set_n_kv_heads(layout.n_kv_heads);
  p.set_head_dim(layout.head_dim);
  p.set_block_size(layout.block_size);
  p.set_dtype(KvDtypeName(layout.dtype));
  p.set_fingerprint(layout.Fingerprint());
  return p;
}

// A copy of the default model whose general.name differs by one byte: same tensors, same
// tokenizer, a different ModelConfig::Fingerprint().
absl::StatusOr<std::string> WriteRenamedModel(const std::string& dir) {
  std::ifstream in(testing::DefaultModelPath(), std::ios::binary);
  if (!in) return absl::NotFoundError(testing::DefaultModelPath());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string bytes = ss.str();
  // GGUF metadata: u64 key length, key, u32 type (8: string), u64 length, bytes.
  const std::string key = "general.name";
  const size_t pos = bytes.find(key);
  if (pos == std::string::npos || pos < 8 || pos + key.size() + 12 > bytes.size()) {
    return absl::InternalError("general.name not found in the default model");
  }
  uint32_t type = 0;
  uint64_t length = 0;
  std::memcpy(&type, bytes.data() + pos + key.size(), 4);
  std::memcpy(&length, bytes.data() + pos + key.size() + 4, 8);
  if (type != 8 || length == 0) return absl::InternalError("general.name is not a string");
  char& last = bytes[pos + key.size() + 12 + length - 1];
  last = last == 'X' ? 'Y' : 'X';
  const std::string path = dir + "/renamed-model.gguf";
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError("writing " + path);
  return path;
}

TEST(LayoutMismatchTest, RouterRefusesAWorkerWithAnotherModel) {
  ASSERT_OK_AND_ASSIGN(KvLayout layout, DefaultLayout());
  Cluster cluster(WithWorkers(1, 0));
  ASSERT_OK(cluster.Start());

  // Directly: a registration whose model fingerprint differs.
  {
    KvLayout other = layout;
    other.model_fingerprint = layout.model_fingerprint + "-other";
    tandem::v1::RegisterRequest request;
    request.set_role(tandem::v1::WORKER_ROLE_DECODE);
    request.set_address("127.0.0.1:1");
    request.set_model("other-model");
    *request.mutable_kv_layout() = ToProto(other);
    request.add_transports("tcp");
    grpc::ClientContext context;
    SetDeadline(context, absl::Seconds(5));
    tandem::v1::RegisterResponse response;
    grpc::Status status = cluster.registry().Register(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << StatusCodeName(status.error_code()) << ": " << status.error_message();
    EXPECT_NE(absl::AsciiStrToLower(status.error_message()).find("fingerprint"), std::string::npos)
        << status.error_message();
  }

  // A real decode worker with a renamed copy of the model never joins.
  ASSERT_OK_AND_ASSIGN(std::string renamed, WriteRenamedModel(cluster.dir()));
  WorkerOptions stranger_options;
  stranger_options.model = renamed;
  stranger_options.wait_registered = false;
  ASSERT_OK_AND_ASSIGN(Worker * stranger, cluster.AddDecode(stranger_options));
  tandem::v1::HealthResponse health;
  bool joined = false;
  PollUntil(absl::Seconds(6), [&] {
    auto h = cluster.Health();
    if (h.ok()) {
      health = *h;
      joined = joined || h->decode_workers() > 0 || h->workers_size() > 1;
    }
    return joined;
  });
  EXPECT_FALSE(joined) << "the router accepted a worker with another model: "
                       << health.ShortDebugString();
  EXPECT_FALSE(health.serving()) << health.ShortDebugString();
  const std::string log = absl::AsciiStrToLower(stranger->process->Log());
  EXPECT_TRUE(log.find("failed_precondition") != std::string::npos ||
              log.find("fingerprint") != std::string::npos)
      << "the refused worker does not say why:\n"
      << stranger->process->LogTail();

  // With no usable decode worker, disaggregated requests are UNAVAILABLE (never served
  // locally or by the stranger).
  GenerateResult r = cluster.Generate(GreedyPrompt("Hello", 4), WithDeadline(absl::Seconds(20)));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
}

// Opens a KV channel on `address` with `layout`; the first reply, or the stream's status.
struct OpenResult {
  bool replied = false;
  KvToPrefill reply;
  grpc::Status status;
};

OpenResult OpenChannel(Cluster& cluster, const std::string& address, const KvLayoutProto& layout,
                       const std::string& transport = "tcp") {
  auto stub = tandem::v1::KvChannel::NewStub(cluster.ChannelTo(address));
  grpc::ClientContext context;
  SetDeadline(context, absl::Seconds(10));
  auto stream = stub->Transfer(&context);
  KvFromPrefill open;
  *open.mutable_open()->mutable_layout() = layout;
  open.mutable_open()->set_transport(transport);
  OpenResult result;
  if (stream->Write(open)) result.replied = stream->Read(&result.reply);
  if (result.replied) {
    // Accepted: close our side; the worker closes the channel.
    stream->WritesDone();
    context.TryCancel();
  }
  result.status = stream->Finish();
  return result;
}

TEST(LayoutMismatchTest, KvChannelRefusesAMismatchedOpenNamingTheField) {
  ASSERT_OK_AND_ASSIGN(KvLayout layout, DefaultLayout());
  Cluster cluster(WithWorkers(0, 1));
  ASSERT_OK(cluster.Start());
  const std::string decode_address = cluster.decode_workers()[0]->address;
  {
    // Disaggregated with no prefill worker: not serving, and never a silent local prefill.
    auto health = cluster.Health();
    ASSERT_TRUE(health.ok()) << health.status();
    EXPECT_FALSE(health->serving()) << health->ShortDebugString();
    GenerateResult r = cluster.Generate(GreedyPrompt("Hello", 4), WithDeadline(absl::Seconds(20)));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.Describe();
    EXPECT_LT(r.elapsed, absl::Seconds(10)) << r.Describe();
  }

  // The right layout is accepted (the control: the test speaks the protocol).
  {
    OpenResult ok = OpenChannel(cluster, decode_address, ToProto(layout));
    ASSERT_TRUE(ok.replied) << StatusCodeName(ok.status.error_code()) << ": "
                            << ok.status.error_message();
    EXPECT_EQ(ok.reply.accepted_layout().fingerprint(), layout.Fingerprint())
        << ok.reply.ShortDebugString();
    EXPECT_FALSE(ok.reply.data_address().empty()) << ok.reply.ShortDebugString();
  }

  struct Mutation {
    const char* field;
    std::function<void(KvLayout&)> apply;
  };
  const std::vector<Mutation> mutations = {
      {"n_layers", [](KvLayout& l) { l.n_layers += 1; }},
      {"n_kv_heads", [](KvLayout& l) { l.n_kv_heads += 1; }},
      {"head_dim", [](KvLayout& l) { l.head_dim *= 2; }},
      {"block_size", [](KvLayout& l) { l.block_size = 32; }},
      {"dtype", [](KvLayout& l) { l.dtype = KvDtype::kF32; }},
      {"model_fingerprint", [](KvLayout& l) { l.model_fingerprint += "-other"; }},
  };
  for (const Mutation& m : mutations) {
    SCOPED_TRACE(m.field);
    KvLayout wrong = layout;
    m.apply(wrong);
    OpenResult r = OpenChannel(cluster, decode_address, ToProto(wrong));
    EXPECT_FALSE(r.replied) << "accepted: " << r.reply.ShortDebugString();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << StatusCodeName(r.status.error_code()) << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find(m.field), std::string::npos)
        << r.status.error_message();
  }

  // A transport the worker cannot open (a CPU worker has no device memory to move) is
  // UNIMPLEMENTED naming what it offers; an unknown one is INVALID_ARGUMENT.
  for (const char* transport : {"cuda_ipc", "nccl"}) {
    SCOPED_TRACE(transport);
    OpenResult r = OpenChannel(cluster, decode_address, ToProto(layout), transport);
    EXPECT_FALSE(r.replied) << "accepted: " << r.reply.ShortDebugString();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNIMPLEMENTED)
        << StatusCodeName(r.status.error_code()) << ": " << r.status.error_message();
    EXPECT_NE(r.status.error_message().find("it offers: tcp"), std::string::npos)
        << r.status.error_message();
  }
  {
    OpenResult r = OpenChannel(cluster, decode_address, ToProto(layout), "pigeon");
    EXPECT_FALSE(r.replied);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << StatusCodeName(r.status.error_code()) << ": " << r.status.error_message();
  }

  // The refusals left the decode worker serving.
  ASSERT_OK(cluster.AddPrefill().status());
  GenerateResult r = cluster.Generate(GreedyPrompt("Hello", 4));
  EXPECT_TRUE(r.ok()) << r.Describe();
}

// A worker asked for what it cannot run refuses to start, saying why: --device cuda on a
// machine without a GPU (or a build without CUDA), a prefill --kv-transport that moves
// device memory from a CPU engine, and a transport name nobody knows.
TEST(LayoutMismatchTest, WorkersRefuseDevicesAndTransportsTheyCannotOpen) {
  const std::string dir = MakeTestDir();
  struct Case {
    const char* binary;
    std::vector<std::string> flags;
    std::vector<int> exit_codes;    // 2: refused at the flags; 1: when the engine loads
    std::vector<std::string> says;  // any of these
  };
  // Without CUDA in the build "cuda" is refused with the flags (2); with it, when the engine
  // finds no device (1).
  const std::vector<Case> cases = {
      {"tandem-decode", {"--device", "cuda"}, {1, 2}, {"no CUDA device 0", "no 'cuda' backend"}},
      {"tandem-prefill", {"--device", "cuda:3"}, {1, 2}, {"no CUDA device 3", "no 'cuda' backend"}},
      {"tandem-prefill", {"--kv-transport", "cuda_ipc"}, {2}, {"it offers: tcp"}},
      {"tandem-prefill", {"--kv-transport", "nccl"}, {2}, {"it offers: tcp"}},
      {"tandem-prefill", {"--kv-transport", "pigeon"}, {2}, {"expected tcp, cuda_ipc or nccl"}},
      {"tandem-decode", {"--device", "gpu"}, {2}, {"no 'gpu' backend"}},
      {"tandem-decode", {"--device", "cuda", "--kv-f32"}, {2},
       {"--kv-f32 and --exact are for the cpu", "no 'cuda' backend"}},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.binary, " ", absl::StrJoin(c.flags, " ")));
    std::vector<std::string> argv = {absl::StrCat(TANDEM_BIN_DIR, "/", c.binary), "--model",
                                     testing::DefaultModelPath(), "--router", "127.0.0.1:1",
                                     "--threads", "1"};
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    ASSERT_OK_AND_ASSIGN(auto process,
                         Process::Spawn(c.binary, argv, absl::StrCat(dir, "/refused-", i++, ".log")));
    absl::StatusOr<int> status = process->Wait(absl::Seconds(30));
    if (!status.ok() && absl::StrContains(process->Log(), "serving on")) {
      // Only a machine with that GPU gets here (the flags were valid for it).
      EXPECT_EQ(c.flags[0], "--device") << process->LogTail();
      continue;
    }
    ASSERT_TRUE(status.ok()) << "still running:\n" << process->LogTail();
    ASSERT_TRUE(WIFEXITED(*status)) << process->LogTail();
    EXPECT_THAT(c.exit_codes, ::testing::Contains(WEXITSTATUS(*status))) << process->LogTail();
    const std::string log = process->Log();
    EXPECT_TRUE(std::any_of(c.says.begin(), c.says.end(),
                            [&](const std::string& s) { return absl::StrContains(log, s); }))
        << process->LogTail();
  }
}

}  // namespace
}  // namespace tandem::integration
