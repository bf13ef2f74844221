// Hugging Face checkpoints: the safetensors reader (every malformed header refused, named),
// config.json and tokenizer.json parsing, a synthetic model whose safetensors directory runs
// exactly like the same weights in memory, and — with $TANDEM_TEST_HF_MODEL, the default
// model converted by tools/gguf_to_hf.py (tests/run.sh makes it) — the real model from its
// Hugging Face directory against the GGUF it came from: same tokens, same greedy output.
#include "engine/hf_model.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/default_model.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
namespace fs = std::filesystem;

struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A safetensors file: header length, JSON header (padded to 8), data.
std::string WriteSafetensors(const std::vector<RawTensor>& tensors) {
  json h = json::object();
  h["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const RawTensor& t : tensors) {
    h[t.name] = {{"dtype", t.dtype},
                 {"shape", t.shape},
                 {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string header = h.dump();
  while ((8 + header.size()) % 8 != 0) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string Bytes(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

TEST(SafetensorsTest, ReadsTensorsAndMetadata) {
  const float f[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[2] = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  auto file = SafetensorsFile::FromBytes(WriteSafetensors(
      {{"a", "F32", {2, 3}, Bytes(f, sizeof f)}, {"b", "BF16", {2}, Bytes(b, sizeof b)},
       {"c", "I64", {0}, ""}}));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const SafetensorsTensor* a = (*file)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, SafetensorsDtype::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->num_elements, 6);
  EXPECT_EQ(std::memcmp(a->data, f, sizeof f), 0);
  EXPECT_EQ((*file)->Find("b")->dtype, SafetensorsDtype::kBF16);
  EXPECT_EQ((*file)->Find("c")->dtype, SafetensorsDtype::kOther);
  EXPECT_EQ((*file)->Find("d"), nullptr);
}

TEST(SafetensorsTest, RefusesMalformedFiles) {
  const float f[4] = {1, 2, 3, 4};
  const std::string good = WriteSafetensors({{"a", "F32", {4}, Bytes(f, sizeof f)}});
  auto with_header = [](const std::string& header, const std::string& data = "") {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
  };
  const std::string sixteen(16, 'x');
  struct Case {
    const char* label;
    std::string bytes;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"empty", "", "shorter than"},
      {"truncated data", good.substr(0, good.size() - 1), "outside the"},
      {"header beyond file", good.substr(0, 12), "beyond the file"},
      {"huge header length", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "outside [2"},
      {"not json", with_header("{nope"), "not JSON"},
      {"array header", with_header("[1, 2]"), "not a JSON object"},
      {"no dtype", with_header(R"({"a": {"shape": [4], "data_offsets": [0, 16]}})", sixteen), "no dtype"},
      {"unknown dtype", with_header(R"({"a": {"dtype": "F12", "shape": [4], "data_offsets": [0, 16]}})", sixteen), "unknown dtype"},
      {"negative dim", with_header(R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", sixteen), "bad dimension"},
      {"size mismatch", with_header(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", sixteen), "need 12"},
      {"reversed offsets", with_header(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", sixteen), "outside"},
      {"overlap", with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", sixteen), "overlap"},
      {"huge shape", with_header(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})", sixteen), "too large"},
      {"bad metadata", with_header(R"({"__metadata__": {"k": 1}})"), "not a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    auto file = SafetensorsFile::FromBytes(c.bytes, "x.safetensors");
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(file.status().message(), HasSubstr("x.safetensors"));
    EXPECT_THAT(file.status().message(), HasSubstr(c.says));
  }
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

json SmolConfig() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
    "num_key_value_heads": 3, "num_hidden_layers": 30, "vocab_size": 49152,
    "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-05,
    "tie_word_embeddings": true, "rope_scaling": null, "hidden_act": "silu",
    "_name_or_path": "SmolLM2 135M Instruct"})");
}

TEST(HfConfigTest, ReadsALlamaConfig) {
  absl::StatusOr<ModelConfig> c = ModelConfigFromHfConfig(SmolConfig().dump(), "dir");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "SmolLM2 135M Instruct");
  testing::ExpectDefaultModelShape(*c);
  EXPECT_EQ(c->rope_layout, RopeLayout::kHalfSplit);
  // The same shape with GGUF's row order is another model as far as KV goes.
  ModelConfig gguf_order = *c;
  gguf_order.rope_layout = RopeLayout::kAdjacentPairs;
  EXPECT_NE(c->Fingerprint(), gguf_order.Fingerprint());
  // Defaults: kv heads = heads, head_dim = hidden / heads, name from the directory.
  json j = SmolConfig();
  j.erase("num_key_value_heads");
  j.erase("_name_or_path");
  c = ModelConfigFromHfConfig(j.dump(), "my-model");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_kv_heads, 9);
  EXPECT_EQ(c->name, "my-model");
}

TEST(HfConfigTest, RefusesWhatTheEngineCannotRun) {
  struct Case {
    const char* key;
    json value;
    absl::StatusCode code;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"rope_scaling", json::parse(R"({"rope_type": "llama3", "factor": 8.0})"),
       absl::StatusCode::kUnimplemented, "rope_scaling"},
      {"attention_bias", true, absl::StatusCode::kUnimplemented, "attention_bias"},
      {"hidden_act", "gelu", absl::StatusCode::kUnimplemented, "gelu"},
      {"architectures", json::parse(R"(["GPT2LMHeadModel"])"), absl::StatusCode::kUnimplemented,
       "not supported"},
      {"num_hidden_layers", "thirty", absl::StatusCode::kInvalidArgument, "num_hidden_layers"},
      {"num_attention_heads", 7, absl::StatusCode::kInvalidArgument, "config.json"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    json j = SmolConfig();
    j[c.key] = c.value;
    if (std::string(c.key) == "architectures") j["model_type"] = "gpt2";
    absl::StatusOr<ModelConfig> got = ModelConfigFromHfConfig(j.dump(), "dir");
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), c.code) << got.status();
    EXPECT_THAT(got.status().message(), HasSubstr(c.says));
  }
  json j = SmolConfig();
  j.erase("hidden_size");
  EXPECT_THAT(ModelConfigFromHfConfig(j.dump(), "d").status().message(), HasSubstr("hidden_size"));
  EXPECT_FALSE(ModelConfigFromHfConfig("not json", "d").ok());
}

// A byte-level BPE vocabulary in tokenizer.json's shape: the 256 byte tokens, a few merges
// (both spellings), added special tokens.
json TinyTokenizerJson(const json& pre) {
  // GPT-2's byte-to-unicode map for the printable ASCII range is the identity.
  json vocab = json::object();
  int id = 0;
  vocab["<|endoftext|>"] = id++;
  for (int c = 33; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = id++;
  vocab["\xC4\xA0"] = id++;  // "Ġ": the space byte
  vocab["he"] = id++;
  vocab["ll"] = id++;
  vocab["hell"] = id++;
  vocab["\xC4\xA0w"] = id++;
  json t;
  t["version"] = "1.0";
  t["normalizer"] = nullptr;
  t["pre_tokenizer"] = pre;
  t["decoder"] = {{"type", "ByteLevel"}};
  t["added_tokens"] = json::array({{{"id", 0}, {"content", "<|endoftext|>"}, {"special", true}},
                                   {{"id", id}, {"content", "<|im_start|>"}, {"special", true}},
                                   {{"id", id + 1}, {"content", "<tool>"}, {"special", false}}});
  t["model"] = {{"type", "BPE"},
                {"vocab", vocab},
                {"merges", json::array({"h e", json::array({"l", "l"}), "he ll",
                                        json::array({"\xC4\xA0", "w"})})}};
  return t;
}

TEST(HfTokenizerTest, BuildsTheTokenizerFromTokenizerJson) {
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  const json smollm = {{"type", "Sequence"},
                       {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                                      byte_level})}};
  const json tokenizer_config = {{"bos_token", "<|im_start|>"},
                                 {"eos_token", {{"content", "<|endoftext|>"}}}};
  for (const auto& [pre, name] : {std::pair{byte_level, "gpt2"}, std::pair{smollm, "smollm"}}) {
    absl::StatusOr<TokenizerData> data =
        TokenizerDataFromHf(TinyTokenizerJson(pre).dump(), tokenizer_config.dump());
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_EQ(data->pre, name);
    EXPECT_EQ(data->tokens.size(), 102u);
    EXPECT_EQ(data->merges, (std::vector<std::string>{"h e", "l l", "he ll", "\xC4\xA0 w"}));
    EXPECT_EQ(data->token_types[0], static_cast<int32_t>(TokenType::kControl));
    EXPECT_EQ(data->token_types[100], static_cast<int32_t>(TokenType::kControl));
    EXPECT_EQ(data->token_types[101], static_cast<int32_t>(TokenType::kUserDefined));
    EXPECT_EQ(data->token_types[50], static_cast<int32_t>(TokenType::kNormal));
    EXPECT_EQ(data->bos_id, 100);
    EXPECT_EQ(data->eos_id, 0);
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromData(*data);
    ASSERT_TRUE(tok.ok()) << tok.status();
    const std::vector<int32_t> ids = (*tok)->Encode("hello world", false);
    EXPECT_EQ((*tok)->Decode(ids), "hello world");
    EXPECT_EQ(ids.front(), 98) << "'hell' is one token: " << ::testing::PrintToString(ids);
  }
  // What the Tokenizer does not implement is refused, named.
  json t = TinyTokenizerJson(nullptr);
  t["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_EQ(TokenizerDataFromHf(t.dump(), "").status().code(), absl::StatusCode::kUnimplemented);
  t = TinyTokenizerJson(nullptr);
  t["normalizer"] = {{"type", "NFC"}};
  EXPECT_THAT(TokenizerDataFromHf(t.dump(), "").status().message(), HasSubstr("normalizer"));
  t = TinyTokenizerJson(nullptr);
  t["model"]["type"] = "Unigram";
  EXPECT_EQ(TokenizerDataFromHf(t.dump(), "").status().code(), absl::StatusCode::kUnimplemented);
  t = TinyTokenizerJson(nullptr);
  t["model"]["vocab"]["gap"] = 500;
  EXPECT_THAT(TokenizerDataFromHf(t.dump(), "").status().message(), HasSubstr("contiguous"));
}

// A synthetic model written as a Hugging Face directory runs exactly as the same weights do
// in memory (same dtype, same layout: the directory only changes where the bytes live).
TEST(HfModelTest, SyntheticDirectoryRunsLikeTheWeightsInMemory) {
  ModelConfig c = *ModelConfig::Preset("tiny");
  c.name = "tiny-hf";
  c.vocab_size = 102;  // the tiny tokenizer's
  c.rope_layout = RopeLayout::kHalfSplit;
  const std::string dir = (fs::temp_directory_path() / ("tandem-hf-" + std::to_string(getpid()))).string();
  fs::create_directories(dir);
  for (const GgmlType type : {GgmlType::kF32, GgmlType::kBF16, GgmlType::kF16}) {
    SCOPED_TRACE(GgmlTypeName(type));
    std::unique_ptr<ModelWeights> mem = ModelWeights::Synthetic(c, type, 5);
    const char* dtype = type == GgmlType::kF32 ? "F32" : type == GgmlType::kBF16 ? "BF16" : "F16";
    const int elem = type == GgmlType::kF32 ? 4 : 2;
    std::vector<RawTensor> tensors;
    auto matrix = [&](const std::string& name, const WeightView& w) {
      tensors.push_back({name, dtype, {w.rows, w.cols}, Bytes(w.data, w.rows * w.cols * elem)});
    };
    // Norms are F32 in memory; store them F32 too (a checkpoint may mix dtypes).
    auto vec = [&](const std::string& name, const std::vector<float>& v) {
      tensors.push_back({name, "F32", {static_cast<int64_t>(v.size())},
                         Bytes(v.data(), v.size() * 4)});
    };
    matrix("model.embed_tokens.weight", mem->token_embd());
    matrix("lm_head.weight", mem->output());
    vec("model.norm.weight", mem->output_norm());
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& L = mem->layer(l);
      const std::string p = "model.layers." + std::to_string(l) + ".";
      vec(p + "input_layernorm.weight", L.attn_norm);
      vec(p + "post_attention_layernorm.weight", L.ffn_norm);
      matrix(p + "self_attn.q_proj.weight", L.wq);
      matrix(p + "self_attn.k_proj.weight", L.wk);
      matrix(p + "self_attn.v_proj.weight", L.wv);
      matrix(p + "self_attn.o_proj.weight", L.wo);
      matrix(p + "mlp.gate_proj.weight", L.w_gate);
      matrix(p + "mlp.up_proj.weight", L.w_up);
      matrix(p + "mlp.down_proj.weight", L.w_down);
    }
    std::ofstream(dir + "/model.safetensors", std::ios::binary) << WriteSafetensors(tensors);
    json config = SmolConfig();
    config["hidden_size"] = c.hidden;
    config["intermediate_size"] = c.ffn_dim;
    config["num_attention_heads"] = c.n_heads;
    config["num_key_value_heads"] = c.n_kv_heads;
    config["num_hidden_layers"] = c.n_layers;
    config["vocab_size"] = c.vocab_size;
    config["max_position_embeddings"] = c.context_length;
    config["rope_theta"] = c.rope_theta;
    config["tie_word_embeddings"] = false;
    config["_name_or_path"] = c.name;
    std::ofstream(dir + "/config.json") << config.dump();
    std::ofstream(dir + "/tokenizer.json") << TinyTokenizerJson(nullptr).dump();

    EngineOptions options;
    options.num_threads = 1;
    options.num_kv_blocks = 32;
    options.kv_dtype = KvDtype::kF32;
    auto a = Engine::Create(std::move(mem), nullptr, nullptr, options);
    ASSERT_TRUE(a.ok()) << a.status();
    auto b = Engine::FromModelPath(dir, options);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->config().Fingerprint(), (*a)->config().Fingerprint());
    GenerationRequest r;
    r.prompt_tokens = {5, 17, 42, 8, 99, 3};
    r.params.max_tokens = 10;
    r.params.sampling.temperature = 0;
    r.params.ignore_eos = true;
    auto ra = (*a)->Generate(r);
    auto rb = (*b)->Generate(r);
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ(rb->tokens, ra->tokens);
    auto la = (*a)->PromptLogits(r.prompt_tokens);
    auto lb = (*b)->PromptLogits(r.prompt_tokens);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_EQ(*la, *lb) << "same bytes, same kernels: bit-identical logits";
  }
  // A missing tensor and a misshapen one are named.
  std::ofstream(dir + "/model.safetensors", std::ios::binary)
      << WriteSafetensors({{"model.embed_tokens.weight", "F32", {3, 3}, std::string(36, '\0')}});
  auto bad = Engine::FromModelPath(dir, EngineOptions{});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(bad.status().message(), HasSubstr("[3, 3]"));
  fs::remove_all(dir);
}

// The default model from its Hugging Face conversion (tools/gguf_to_hf.py --dtype f32) and
// from the GGUF: the converter undid llama.cpp's Q/K row permutation, so the HF directory
// runs with half-split RoPE where the GGUF runs with adjacent pairs; with fp32 weights on
// both sides (the exact path) the logits agree to float rounding and the greedy tokens match.
TEST(HfModelTest, DefaultModelFromItsHuggingFaceConversion) {
  const char* hf_dir = std::getenv("TANDEM_TEST_HF_MODEL");
  if (hf_dir == nullptr || *hf_dir == '\0') {
    GTEST_SKIP() << "TANDEM_TEST_HF_MODEL is not set (tests/run.sh converts the default model "
                    "with tools/gguf_to_hf.py --dtype f32 and sets it)";
  }
  EngineOptions options;
  options.num_threads = 2;
  options.exact_matmul = true;
  options.kv_dtype = KvDtype::kF32;
  options.num_kv_blocks = 256;
  auto gguf = Engine::FromModelPath(testing::DefaultModelPath(), options);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto hf = Engine::FromModelPath(hf_dir, options);
  ASSERT_TRUE(hf.ok()) << hf.status();
  const ModelConfig& a = (*gguf)->config();
  const ModelConfig& b = (*hf)->config();
  EXPECT_EQ(b.rope_layout, RopeLayout::kHalfSplit);
  EXPECT_EQ(std::tie(a.name, a.n_layers, a.hidden, a.n_heads, a.n_kv_heads, a.head_dim, a.ffn_dim,
                     a.vocab_size, a.context_length, a.tied_embeddings),
            std::tie(b.name, b.n_layers, b.hidden, b.n_heads, b.n_kv_heads, b.head_dim, b.ffn_dim,
                     b.vocab_size, b.context_length, b.tied_embeddings));
  EXPECT_FLOAT_EQ(a.rope_theta, b.rope_theta);

  // The tokenizer from tokenizer.json encodes the golden strings as the GGUF's does.
  std::ifstream golden_in(testing::SourceDir() + "/tests/golden/tokenizer_golden.json");
  const json golden = json::parse(golden_in);
  const Tokenizer& ta = *(*gguf)->tokenizer();
  const Tokenizer& tb = *(*hf)->tokenizer();
  EXPECT_EQ(ta.vocab_size(), tb.vocab_size());
  EXPECT_EQ(ta.bos_id(), tb.bos_id());
  EXPECT_EQ(ta.eos_id(), tb.eos_id());
  for (size_t i = 0; i < golden["strings"].size(); ++i) {
    const std::string s = golden["strings"][i].get<std::string>();
    EXPECT_EQ(tb.Encode(s, true), golden["ids"][i].get<std::vector<int32_t>>()) << s;
  }
  ASSERT_NE((*hf)->chat_template(), nullptr);
  const std::vector<ChatMessage> chat = {{"user", "What is the capital of France?"}};
  EXPECT_EQ(*(*hf)->chat_template()->Render(chat, true), *(*gguf)->chat_template()->Render(chat, true));

  const std::vector<std::string> prompts = {
      "The capital of France is", "def fibonacci(n):", "Once upon a time, in a land far away,",
      "1, 2, 3, 4, 5,", "Water boils at"};
  for (const std::string& p : prompts) {
    SCOPED_TRACE(p);
    std::vector<int32_t> ids = ta.Encode(p, false);
    auto la = (*gguf)->PromptLogits(ids);
    auto lb = (*hf)->PromptLogits(ids);
    ASSERT_TRUE(la.ok() && lb.ok());
    double worst = 0;
    for (size_t i = 0; i < la->size(); ++i) worst = std::max(worst, double(std::abs((*la)[i] - (*lb)[i])));
    EXPECT_LT(worst, 5e-4) << "last-position logits";
    std::printf("[ hf       ] %-40s worst |logit diff| %.2e\n", p.c_str(), worst);
    GenerationRequest r;
    r.prompt_tokens = ids;
    r.params.max_tokens = 32;
    r.params.sampling.temperature = 0;
    auto ra = (*gguf)->Generate(r);
    auto rb = (*hf)->Generate(r);
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ(rb->tokens, ra->tokens) << "GGUF: " << ra->text << "\nHF:   " << rb->text;
  }
}

}  // namespace
}  // namespace tandem
