#include "engine/gguf_file.h"

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "common/logging.h"
#include "engine/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using V = GgufWriter::Value;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Raw little-endian bytes, for files GgufWriter would refuse to write.
class Bytes {
 public:
  Bytes& U32(uint32_t v) { return Put(v); }
  Bytes& U64(uint64_t v) { return Put(v); }
  Bytes& Str(std::string_view s) {
    U64(s.size());
    out_.append(s);
    return *this;
  }
  Bytes& Raw(std::string_view s) {
    out_.append(s);
    return *this;
  }
  Bytes& PadTo(size_t alignment) {
    out_.resize((out_.size() + alignment - 1) / alignment * alignment, '\0');
    return *this;
  }
  // Key of type uint32.
  Bytes& KvU32(std::string_view key, uint32_t v) { return Str(key).U32(4).U32(v); }
  Bytes& Tensor(std::string_view name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    Str(name).U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    return U32(type).U64(offset);
  }
  const std::string& str() const { return out_; }

 private:
  template <typename T>
  Bytes& Put(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out_.append(b, sizeof(T));
    return *this;
  }
  std::string out_;
};

Bytes Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Bytes b;
  b.Raw("GGUF").U32(version).U64(n_tensors).U64(n_kv);
  return b;
}

absl::Status Parse(const std::string& bytes) { return GgufFile::FromBytes(bytes).status(); }

// A small file with metadata of several types and two tensors.
std::string SmallValidFile() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetUint32("llama.block_count", 2);
  w.Set("tokens", V::StringArray({"a", "bc", ""}));
  w.Set("nested", V::Array(GgufValueType::kArray, {V::Int32Array({1, 2}), V::Int32Array({})}));
  std::vector<float> f(8);
  for (int i = 0; i < 8; ++i) f[i] = 0.5f * i;
  CHECK_OK(w.AddTensor("a", GgmlType::kF32, {8},
                       std::string_view(reinterpret_cast<const char*>(f.data()), 32)));
  CHECK_OK(w.AddTensor("b", GgmlType::kF32, {4, 2},
                       std::string_view(reinterpret_cast<const char*>(f.data()), 32)));
  return w.Serialize();
}

TEST(GgufFileTest, ReadsTheDefaultModel) {
  auto file = GgufFile::Open(testing::DefaultModelPath());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.file_size(), 98362432);
  EXPECT_EQ(f.data_offset(), 1785664u);  // gguf-py: token_embd.weight's absolute offset
  EXPECT_EQ(f.Keys().size(), 33u);
  EXPECT_EQ(f.Keys()[0], "general.architecture");
  EXPECT_EQ(*f.GetString("general.architecture"), "llama");
  EXPECT_EQ(*f.GetString("general.name"), "Smollm2 135M 8k Lc100K Mix1 Ep2");
  EXPECT_EQ(*f.GetInt("llama.block_count"), 30);
  EXPECT_EQ(*f.TypeOf("llama.block_count"), GgufValueType::kUint32);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.GetFloat("llama.rope.freq_base")), 100000.0f);
  EXPECT_FALSE(*f.GetBool("tokenizer.ggml.add_bos_token"));

  auto tokens = f.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 49152u);
  EXPECT_EQ((*tokens)[0], "<|endoftext|>");
  EXPECT_EQ((*tokens)[2], "<|im_end|>");
  EXPECT_EQ(tokens->back(), "ectable");
  auto merges = f.GetStringArray("tokenizer.ggml.merges");
  ASSERT_TRUE(merges.ok());
  ASSERT_EQ(merges->size(), 48900u);
  EXPECT_EQ((*merges)[0], "\xC4\xA0 t");  // "Ġ t"
  auto types = f.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok());
  EXPECT_EQ(types->size(), 49152u);
  EXPECT_THAT(f.DescribeValue("tokenizer.ggml.tokens"),
              HasSubstr("[string x 49152: \"<|endoftext|>\", \"<|im_start|>\""));
  EXPECT_EQ(f.DescribeValue("llama.block_count"), "30");

  ASSERT_EQ(f.tensors().size(), 272u);
  const GgufTensorInfo* embd = f.FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_THAT(embd->dims, ElementsAre(576, 49152));
  EXPECT_EQ(embd->offset, 0u);
  EXPECT_EQ(embd->num_bytes, 30081024);
  const GgufTensorInfo* k = f.FindTensor("blk.0.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->type, GgmlType::kQ4_1);
  EXPECT_THAT(k->dims, ElementsAre(576, 192));
  EXPECT_EQ(k->num_bytes, 69120);
  EXPECT_EQ(k->offset, 33530176u - 1785664u);
  const GgufTensorInfo* norm = f.FindTensor("blk.0.attn_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, GgmlType::kF32);
  float first[2];
  std::memcpy(first, norm->data, sizeof(first));
  EXPECT_FLOAT_EQ(first[0], 0.01397705078125f);  // gguf-py
  EXPECT_FLOAT_EQ(first[1], 0.0238037109375f);
  EXPECT_EQ(f.FindTensor("output.weight"), nullptr);  // tied
  EXPECT_EQ(reinterpret_cast<uintptr_t>(embd->data) % 32, 0u);
}

TEST(GgufFileTest, RoundTripsEveryValueType) {
  GgufWriter w;
  w.Set("u8", V::Uint8(200));
  w.Set("i8", V::Int8(-100));
  w.Set("u16", V::Uint16(60000));
  w.Set("i16", V::Int16(-30000));
  w.Set("u32", V::Uint32(4000000000u));
  w.Set("i32", V::Int32(-2000000000));
  w.Set("u64", V::Uint64(uint64_t{1} << 62));
  w.Set("u64big", V::Uint64(~uint64_t{0}));
  w.Set("i64", V::Int64(-(int64_t{1} << 60)));
  w.Set("f32", V::Float32(1.5f));
  w.Set("f64", V::Float64(-2.25));
  w.Set("bool", V::Bool(true));
  w.Set("str", V::String("hé\n"));
  w.Set("empty", V::String(""));
  w.Set("strs", V::StringArray({"x", "", "yz"}));
  w.Set("ints", V::Array(GgufValueType::kUint16, {V::Uint16(1), V::Uint16(65535)}));
  w.Set("i64s", V::Array(GgufValueType::kInt64, {V::Int64(-5)}));
  w.Set("floats", V::Float32Array({0.25f, -1.0f}));
  w.Set("doubles", V::Array(GgufValueType::kFloat64, {V::Float64(3.5)}));
  w.Set("bools", V::Array(GgufValueType::kBool, {V::Bool(false), V::Bool(true)}));
  w.Set("nested", V::Array(GgufValueType::kArray,
                           {V::StringArray({"a", "b"}), V::Int32Array({7, 8, 9}),
                            V::Array(GgufValueType::kArray, {V::Float32Array({2.0f})})}));
  w.Set("u64s", V::Array(GgufValueType::kUint64, {V::Uint64(1), V::Uint64(~uint64_t{0})}));
  w.Set("empty_array", V::Array(GgufValueType::kString, {}));
  auto file = GgufFile::FromBytes(w.Serialize());
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;

  EXPECT_EQ(*f.GetInt("u8"), 200);
  EXPECT_EQ(*f.GetInt("i8"), -100);
  EXPECT_EQ(*f.GetInt("u16"), 60000);
  EXPECT_EQ(*f.GetInt("i16"), -30000);
  EXPECT_EQ(*f.GetInt("u32"), 4000000000);
  EXPECT_EQ(*f.GetInt("i32"), -2000000000);
  EXPECT_EQ(*f.GetInt("u64"), int64_t{1} << 62);
  EXPECT_EQ(*f.GetInt("i64"), -(int64_t{1} << 60));
  EXPECT_EQ(f.GetInt("u64big").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(f.GetInt("u64big").status()), HasSubstr("u64big"));
  EXPECT_EQ(*f.GetFloat("f32"), 1.5);
  EXPECT_EQ(*f.GetFloat("f64"), -2.25);
  EXPECT_TRUE(*f.GetBool("bool"));
  EXPECT_EQ(*f.GetString("str"), "hé\n");
  EXPECT_EQ(*f.GetString("empty"), "");
  EXPECT_THAT(*f.GetStringArray("strs"), ElementsAre("x", "", "yz"));
  EXPECT_THAT(*f.GetIntArray("ints"), ElementsAre(1, 65535));
  EXPECT_THAT(*f.GetIntArray("i64s"), ElementsAre(-5));
  EXPECT_THAT(*f.GetFloatArray("floats"), ElementsAre(0.25, -1.0));
  EXPECT_THAT(*f.GetFloatArray("doubles"), ElementsAre(3.5));
  EXPECT_TRUE(f.GetStringArray("empty_array")->empty());
  EXPECT_THAT(Msg(f.GetIntArray("u64s").status()), HasSubstr("'u64s': element 1"));

  auto bools = f.GetValue("bools");
  ASSERT_TRUE(bools.ok());
  EXPECT_EQ(bools->element_type(), GgufValueType::kBool);
  std::vector<GgufValue> b = bools->Elements();
  ASSERT_EQ(b.size(), 2u);
  EXPECT_FALSE(*b[0].AsBool());
  EXPECT_TRUE(*b[1].AsBool());

  auto nested = f.GetValue("nested");
  ASSERT_TRUE(nested.ok());
  EXPECT_EQ(nested->type(), GgufValueType::kArray);
  EXPECT_EQ(nested->element_type(), GgufValueType::kArray);
  std::vector<GgufValue> inner = nested->Elements();
  ASSERT_EQ(inner.size(), 3u);
  EXPECT_EQ(inner[0].element_type(), GgufValueType::kString);
  std::vector<GgufValue> strs = inner[0].Elements();
  ASSERT_EQ(strs.size(), 2u);
  EXPECT_EQ(*strs[1].AsString(), "b");
  std::vector<GgufValue> ints = inner[1].Elements();
  ASSERT_EQ(ints.size(), 3u);
  EXPECT_EQ(*ints[2].AsInt(), 9);
  std::vector<GgufValue> deep = inner[2].Elements();
  ASSERT_EQ(deep.size(), 1u);
  EXPECT_EQ(*deep[0].Elements()[0].AsFloat(), 2.0);
  EXPECT_EQ(f.DescribeValue("nested"),
            "[array x 3: [string x 2: \"a\", \"b\"], [int32 x 3: 7, 8, 9], "
            "[array x 1: [float32 x 1: 2]]]");
  EXPECT_EQ(f.GetIntArray("nested").status().code(), absl::StatusCode::kInvalidArgument);

  // Keys keep file order; types are reported.
  EXPECT_EQ(f.Keys().front(), "u8");
  EXPECT_EQ(f.Keys().back(), "empty_array");
  EXPECT_EQ(*f.TypeOf("f64"), GgufValueType::kFloat64);
  EXPECT_EQ(GgufValueTypeName(GgufValueType::kFloat64), "float64");
}

TEST(GgufFileTest, GettersReportMissingAndWrongTypes) {
  auto file = GgufFile::FromBytes(SmallValidFile());
  ASSERT_TRUE(file.ok()) << file.status();
  absl::Status missing = (*file)->GetInt("nope").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(missing), HasSubstr("'nope'"));
  absl::Status wrong = (*file)->GetString("llama.block_count").status();
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(wrong), HasSubstr("llama.block_count"));
  EXPECT_THAT(Msg(wrong), HasSubstr("uint32"));
  EXPECT_EQ((*file)->GetFloat("llama.block_count").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*file)->GetIntArray("tokens").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*file)->GetStringArray("general.architecture").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*file)->Has("nope"));
  EXPECT_EQ((*file)->DescribeValue("nope"), "<missing>");
}

TEST(GgufFileTest, TensorsRoundTripWithAlignment) {
  for (uint64_t alignment : {uint64_t{32}, uint64_t{64}, uint64_t{256}}) {
    GgufWriter w(alignment);
    std::string q8(34 * 2, '\0');  // two Q8_0 blocks
    for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<char>(i * 7);
    ASSERT_TRUE(w.AddTensor("q", GgmlType::kQ8_0, {64}, q8).ok());
    std::string f32(4 * 3 * 5, '\x01');
    ASSERT_TRUE(w.AddTensor("m", GgmlType::kF32, {3, 5}, f32).ok());
    EXPECT_EQ(w.AddTensor("m", GgmlType::kF32, {3, 5}, f32).code(),
              absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(w.AddTensor("bad", GgmlType::kF32, {3, 5}, "abc").code(),
              absl::StatusCode::kInvalidArgument);
    auto file = GgufFile::FromBytes(w.Serialize());
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_EQ((*file)->alignment(), alignment);
    const GgufTensorInfo* q = (*file)->FindTensor("q");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->type, GgmlType::kQ8_0);
    EXPECT_EQ(q->num_elements, 64);
    EXPECT_EQ(q->num_bytes, 68);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(q->data), 68), q8);
    const GgufTensorInfo* m = (*file)->FindTensor("m");
    ASSERT_NE(m, nullptr);
    EXPECT_THAT(m->dims, ElementsAre(3, 5));
    EXPECT_EQ(m->offset % alignment, 0u);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data), 60), f32);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(m->data) % std::min<uint64_t>(alignment, 64), 0u);
  }
}

TEST(GgufFileTest, WriterWritesFilesThatOpenMapped) {
  const std::string path = ::testing::TempDir() + "/gguf_file_test_small.gguf";
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  ASSERT_TRUE(w.AddTensor("t", GgmlType::kF32, {2}, std::string(8, '\x02')).ok());
  ASSERT_TRUE(w.WriteFile(path).ok());
  auto file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->file_size(), static_cast<int64_t>(w.Serialize().size()));
  EXPECT_EQ((*file)->FindTensor("t")->data[7], 2);
  EXPECT_EQ(GgufFile::Open(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

TEST(GgufFileTest, EveryTruncationIsAnError) {
  const std::string full = SmallValidFile();
  auto parsed = GgufFile::FromBytes(full);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  // Past the end of the last tensor's bytes only padding is cut, which is still a valid file.
  uint64_t data_end = 0;
  for (const GgufTensorInfo& t : (*parsed)->tensors()) {
    data_end = std::max<uint64_t>(data_end, (*parsed)->data_offset() + t.offset + t.num_bytes);
  }
  for (size_t n = 0; n < full.size(); ++n) {
    absl::Status s = Parse(full.substr(0, n));
    if (n < data_end) {
      ASSERT_FALSE(s.ok()) << "prefix of " << n << " bytes parsed";
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << n << ": " << s;
    } else {
      EXPECT_TRUE(s.ok()) << n << ": " << s;
    }
  }
}

TEST(GgufFileTest, HugeCountsFailFast) {
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = Parse(Header(uint64_t{1} << 60, 0).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("tensor count 1152921504606846976"));
  EXPECT_THAT(Msg(s), HasSubstr("byte offset 8"));

  s = Parse(Header(0, uint64_t{1} << 60).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("key/value count 1152921504606846976"));

  // Array of 2^62 uint32 (and of strings, and of arrays).
  for (uint32_t elem : {4u, 8u, 9u}) {
    s = Parse(Header(0, 1).Str("arr").U32(9).U32(elem).U64(uint64_t{1} << 62).U64(0).str());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(s), HasSubstr("'arr'"));
    EXPECT_THAT(Msg(s), HasSubstr("array of 4611686018427387904"));
  }

  // String value of 2^63 bytes; a key of 2^63 bytes.
  s = Parse(Header(0, 1).Str("s").U32(8).U64(uint64_t{1} << 63).Raw("abc").str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("string length 9223372036854775808"));
  EXPECT_THAT(Msg(s), HasSubstr("'s'"));
  s = Parse(Header(0, 1).U64(uint64_t{1} << 63).Raw("abcdefghijklmnop").str());
  EXPECT_THAT(Msg(s), HasSubstr("string length 9223372036854775808"));
  // A string element of 2^63 bytes inside an array.
  s = Parse(Header(0, 1).Str("v").U32(9).U32(8).U64(2).Str("ok").U64(uint64_t{1} << 63).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("'v'[1]"));
  // A tensor name of 2^63 bytes.
  s = Parse(Header(1, 0).U64(uint64_t{1} << 63).Raw(std::string(40, 'x')).str());
  EXPECT_THAT(Msg(s), HasSubstr("name of tensor 0"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(GgufFileTest, RejectsBadTensorInfos) {
  const std::string data(64, '\0');
  // Offset past the end.
  absl::Status s = Parse(Header(1, 0).Tensor("w", {8}, 0, 64).PadTo(32).Raw(data).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("tensor 'w'"));
  EXPECT_THAT(Msg(s), HasSubstr("outside"));
  // Huge offset that would wrap offset + size.
  s = Parse(Header(1, 0).Tensor("w", {8}, 0, ~uint64_t{0} - 31).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("outside"));
  // Misaligned offset.
  s = Parse(Header(1, 0).Tensor("w", {8}, 0, 4).PadTo(32).Raw(data).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("not a multiple of the alignment 32"));
  // Dims whose product overflows int64.
  s = Parse(Header(1, 0)
                .Tensor("w", {uint64_t{1} << 40, uint64_t{1} << 40}, 0, 0)
                .PadTo(32)
                .Raw(data)
                .str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("'w': element count overflows"));
  s = Parse(Header(1, 0).Tensor("w", {~uint64_t{0}}, 0, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("overflows"));
  // Byte size overflows although the element count fits.
  s = Parse(Header(1, 0).Tensor("w", {uint64_t{1} << 62}, 0, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("overflows"));
  // Unsupported type: Q5_K is 13.
  s = Parse(Header(1, 0).Tensor("blk.0.attn_q.weight", {256}, 13, 0).PadTo(32).Raw(data).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("blk.0.attn_q.weight"));
  EXPECT_THAT(Msg(s), HasSubstr("Q5_K"));
  s = Parse(Header(1, 0).Tensor("w", {8}, 99, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("type 99"));
  // Too many dims, zero dims.
  s = Parse(Header(1, 0).Tensor("w", {1, 1, 1, 1, 8}, 0, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("5 dimensions"));
  s = Parse(Header(1, 0).Tensor("w", {}, 0, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("0 dimensions"));
  // Row length not a multiple of the block size.
  s = Parse(Header(1, 0).Tensor("w", {16}, 2, 0).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("not a multiple of the Q4_0 block size 32"));
  // Duplicate tensor names.
  s = Parse(Header(2, 0).Tensor("w", {8}, 0, 0).Tensor("w", {8}, 0, 32).PadTo(32).Raw(data).str());
  EXPECT_THAT(Msg(s), HasSubstr("duplicate tensor name 'w'"));
  // The data section itself is missing.
  s = Parse(Header(1, 0).Tensor("w", {8}, 0, 0).str());
  EXPECT_THAT(Msg(s), HasSubstr("past the end"));
  // And the valid version of the same file parses.
  auto ok = GgufFile::FromBytes(Header(1, 0).Tensor("w", {8}, 0, 32).PadTo(32).Raw(data).str());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->FindTensor("w")->offset, 32u);
}

TEST(GgufFileTest, RejectsBadHeadersAndMetadata) {
  absl::Status s = Parse("GGUG" + Header(0, 0).str().substr(4));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("magic"));
  EXPECT_THAT(Msg(Parse("")), HasSubstr("magic"));
  s = Parse(Header(0, 0, 1).str());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("version 1 is not supported"));
  s = Parse(Header(0, 0, 4).str());
  EXPECT_THAT(Msg(s), HasSubstr("unsupported GGUF version 4"));
  EXPECT_TRUE(Parse(Header(0, 0, 2).str()).ok());
  EXPECT_TRUE(Parse(Header(0, 0, 3).str()).ok());

  for (uint32_t bad : {0u, 3u, 48u}) {
    s = Parse(Header(0, 1).KvU32("general.alignment", bad).str());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Msg(s), HasSubstr("power of two"));
  }
  s = Parse(Header(0, 1).Str("general.alignment").U32(8).Str("32").str());
  EXPECT_THAT(Msg(s), HasSubstr("general.alignment"));
  auto aligned = GgufFile::FromBytes(Header(0, 1).KvU32("general.alignment", 4096).str());
  ASSERT_TRUE(aligned.ok());
  EXPECT_EQ((*aligned)->alignment(), 4096u);

  s = Parse(Header(0, 2).KvU32("k", 1).KvU32("k", 2).str());
  EXPECT_THAT(Msg(s), HasSubstr("duplicate metadata key 'k'"));
  s = Parse(Header(0, 1).Str("k").U32(13).U32(0).str());
  EXPECT_THAT(Msg(s), HasSubstr("unknown value type 13"));
  s = Parse(Header(0, 1).Str("k").U32(9).U32(77).U64(0).str());
  EXPECT_THAT(Msg(s), HasSubstr("unknown value type 77"));

  // Arrays nested deeper than the parser allows.
  Bytes deep = Header(0, 1);
  deep.Str("deep").U32(9);
  for (int i = 0; i < 20; ++i) deep.U32(9).U64(1);
  deep.U32(4).U64(0);
  s = Parse(deep.str());
  EXPECT_THAT(Msg(s), HasSubstr("nested deeper"));
}

}  // namespace
}  // namespace tandem
