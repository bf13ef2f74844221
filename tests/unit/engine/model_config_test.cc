#include "engine/model_config.h"

#include <string>

#include "engine/gguf_file.h"
#include "engine/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/default_model.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;
using V = GgufWriter::Value;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// Metadata of a small llama model; callers adjust it.
GgufWriter TinyLlamaWriter(std::string_view arch = "llama") {
  GgufWriter w;
  const std::string p = std::string(arch) + ".";
  w.SetString("general.architecture", arch);
  w.SetString("general.name", "tiny test");
  w.SetUint32(p + "block_count", 2);
  w.SetUint32(p + "embedding_length", 64);
  w.SetUint32(p + "attention.head_count", 4);
  w.SetUint32(p + "feed_forward_length", 128);
  w.SetUint32(p + "context_length", 256);
  w.Set(p + "vocab_size", V::Uint32(300));
  return w;
}

absl::StatusOr<ModelConfig> ConfigOf(const GgufWriter& w) {
  auto file = GgufFile::FromBytes(w.Serialize());
  if (!file.ok()) return file.status();
  return ModelConfigFromGguf(**file);
}

TEST(ModelConfigTest, ReadsTheDefaultModel) {
  auto file = GgufFile::Open(testing::DefaultModelPath());
  ASSERT_TRUE(file.ok()) << file.status();
  auto c = ModelConfigFromGguf(**file);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->name, "Smollm2 135M 8k Lc100K Mix1 Ep2");
  testing::ExpectDefaultModelShape(*c);
  EXPECT_EQ(c->rope_layout, RopeLayout::kAdjacentPairs);
  EXPECT_TRUE(c->Validate().ok());
  EXPECT_THAT(c->Fingerprint(), HasSubstr("llama-L30-kv3-hd64-"));
  EXPECT_THAT(c->ToString(), HasSubstr("30 layers, hidden 576"));
}

TEST(ModelConfigTest, DefaultsAndAliases) {
  auto c = ConfigOf(TinyLlamaWriter());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_kv_heads, 4);  // head_count_kv defaults to head_count
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 300);  // from llama.vocab_size: no token list
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c->tied_embeddings);  // no output.weight

  GgufWriter w = TinyLlamaWriter("mistral");
  w.SetUint32("mistral.attention.head_count_kv", 2);
  w.SetFloat32("mistral.rope.freq_base", 1e6f);
  w.SetFloat32("mistral.attention.layer_norm_rms_epsilon", 1e-6f);
  w.Set("tokenizer.ggml.tokens", V::StringArray({"a", "b", "c"}));
  ASSERT_TRUE(
      w.AddTensor("output.weight", GgmlType::kF32, {64, 3}, std::string(64 * 3 * 4, '\0')).ok());
  c = ConfigOf(w);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "llama");
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_FLOAT_EQ(c->rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_EQ(c->vocab_size, 3);  // the token list wins
  EXPECT_FALSE(c->tied_embeddings);
}

TEST(ModelConfigTest, ClearErrors) {
  GgufWriter w = TinyLlamaWriter();
  w.SetString("general.architecture", "gpt2");
  absl::Status s = ConfigOf(w).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("general.architecture is 'gpt2'"));

  GgufWriter no_arch;
  s = ConfigOf(no_arch).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Msg(s), HasSubstr("general.architecture"));

  GgufWriter missing = TinyLlamaWriter();
  missing.Set("llama.block_count", V::String("two"));
  s = ConfigOf(missing).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("llama.block_count"));

  GgufWriter kv = TinyLlamaWriter();
  kv.SetUint32("llama.attention.head_count_kv", 3);
  s = ConfigOf(kv).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("n_heads 4 is not a multiple of n_kv_heads 3"));

  GgufWriter zero = TinyLlamaWriter();
  zero.SetUint32("llama.embedding_length", 0);
  EXPECT_THAT(Msg(ConfigOf(zero).status()), HasSubstr("llama.embedding_length"));

  GgufWriter rope = TinyLlamaWriter();
  rope.SetUint32("llama.rope.dimension_count", 8);
  EXPECT_THAT(Msg(ConfigOf(rope).status()), HasSubstr("partial rotary"));
}

TEST(ModelConfigTest, Presets) {
  auto c = ModelConfig::Preset("llama3-8b");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->n_layers, 32);
  EXPECT_EQ(c->hidden, 4096);
  EXPECT_EQ(c->n_heads, 32);
  EXPECT_EQ(c->n_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->ffn_dim, 14336);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->context_length, 8192);
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FALSE(c->tied_embeddings);
  EXPECT_TRUE(c->Validate().ok());

  auto smol = ModelConfig::Preset("smollm2-135m");
  ASSERT_TRUE(smol.ok());
  EXPECT_EQ(smol->n_layers, 30);
  EXPECT_EQ(smol->n_kv_heads, 3);
  EXPECT_TRUE(smol->tied_embeddings);
  EXPECT_TRUE(smol->Validate().ok());
  auto tiny = ModelConfig::Preset("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_TRUE(tiny->Validate().ok());

  absl::Status s = ModelConfig::Preset("gpt5").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("llama3-8b"));
}

TEST(ModelConfigTest, ValidateNamesTheProblem) {
  ModelConfig c = *ModelConfig::Preset("tiny");
  c.head_dim = 16;
  EXPECT_THAT(Msg(c.Validate()), HasSubstr("hidden 128 != n_heads 4 * head_dim 16"));
  c = *ModelConfig::Preset("tiny");
  c.n_layers = 0;
  EXPECT_THAT(Msg(c.Validate()), HasSubstr("n_layers must be positive"));
  c = *ModelConfig::Preset("tiny");
  c.rope_theta = -1;
  EXPECT_THAT(Msg(c.Validate()), HasSubstr("rope_theta"));
}

TEST(ModelConfigTest, FingerprintIsStableAndSensitive) {
  const ModelConfig a = *ModelConfig::Preset("smollm2-135m");
  // A fixed value: the fingerprint must not depend on the process or the machine.
  EXPECT_EQ(a.Fingerprint(), ModelConfig(a).Fingerprint());
  EXPECT_EQ(a.Fingerprint(), "llama-L30-kv3-hd64-38ad0cdfaafbf7f0");
  ModelConfig b = a;
  b.n_kv_heads = 1;
  EXPECT_NE(a.Fingerprint(), b.Fingerprint());
  b = a;
  b.name = "other";
  EXPECT_NE(a.Fingerprint(), b.Fingerprint());
  b = a;
  b.rope_theta = 1.0f;  // not part of the layout
  EXPECT_EQ(a.Fingerprint(), b.Fingerprint());
}

}  // namespace
}  // namespace tandem
