#include "engine/model_weights.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/logging.h"
#include "engine/gguf_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quant.h"
#include "tests/testing/test_env.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

std::vector<float> Row(const WeightView& w, int64_t r) {
  std::vector<float> out(w.cols);
  const auto* base = static_cast<const uint8_t*>(w.data) + r * RowBytes(w.type, w.cols);
  DequantizeRow(w.type, base, out.data(), w.cols);
  return out;
}

bool SameBytes(const WeightView& a, const WeightView& b) {
  return a.type == b.type && a.rows == b.rows && a.cols == b.cols &&
         std::memcmp(a.data, b.data, a.rows * RowBytes(a.type, a.cols)) == 0;
}

TEST(ModelWeightsTest, LoadsTheDefaultModel) {
  auto w = ModelWeights::LoadGguf(testing::DefaultModelPath());
  ASSERT_TRUE(w.ok()) << w.status();
  const ModelWeights& m = **w;
  ASSERT_NE(m.gguf(), nullptr);
  EXPECT_EQ(m.config().n_layers, 30);
  EXPECT_EQ(m.token_embd().type, GgmlType::kQ8_0);
  EXPECT_EQ(m.token_embd().rows, 49152);
  EXPECT_EQ(m.token_embd().cols, 576);
  EXPECT_EQ(m.output().data, m.token_embd().data);  // tied
  ASSERT_EQ(m.layers().size(), 30u);
  const LayerWeights& l0 = m.layer(0);
  EXPECT_EQ(l0.wq.type, GgmlType::kQ4_1);
  EXPECT_EQ(l0.wq.rows, 576);
  EXPECT_EQ(l0.wk.rows, 192);
  EXPECT_EQ(l0.wk.cols, 576);
  EXPECT_EQ(l0.wv.rows, 192);
  EXPECT_EQ(l0.wo.rows, 576);
  EXPECT_EQ(l0.wo.cols, 576);
  EXPECT_EQ(l0.w_gate.rows, 1536);
  EXPECT_EQ(l0.w_up.rows, 1536);
  EXPECT_EQ(m.layer(29).w_down.rows, 576);
  EXPECT_EQ(m.layer(29).w_down.cols, 1536);
  ASSERT_EQ(m.output_norm().size(), 576u);
  ASSERT_EQ(l0.attn_norm.size(), 576u);

  // Reference values from gguf-py (gguf.quants.dequantize), an independent reader.
  EXPECT_FLOAT_EQ(m.output_norm()[0], 1.7578125f);
  EXPECT_FLOAT_EQ(m.output_norm()[3], 1.6015625f);
  EXPECT_FLOAT_EQ(l0.attn_norm[2], -0.019775390625f);
  EXPECT_FLOAT_EQ(m.layer(29).ffn_norm[575], 0.3359375f);
  std::vector<float> e1 = Row(m.token_embd(), 1);
  EXPECT_NEAR(e1[0], -0.0238037109375f, 1e-6);
  EXPECT_NEAR(e1[2], -0.0396728515625f, 1e-6);
  EXPECT_NEAR(Row(m.token_embd(), 49151)[575], -0.0417022705078125f, 1e-6);
  std::vector<float> k0 = Row(l0.wk, 0);
  EXPECT_NEAR(k0[0], -0.1552734375f, 1e-6);
  EXPECT_NEAR(k0[1], 0.3402099609375f, 1e-6);
  EXPECT_NEAR(Row(l0.wk, 191)[575], 0.3636474609375f, 1e-6);
  EXPECT_NEAR(Row(m.layer(29).w_down, 575)[2], -0.276702880859375f, 1e-6);

  // 30 layers of Q4_1 (3,538,944 weights, 2,211,840 bytes each) plus the Q8_0 embedding.
  EXPECT_EQ(m.matrix_bytes(), 30 * 2211840 + 30081024);
}

TEST(ModelWeightsTest, LoadsTheFuzzSeedModel) {
  // tests/fuzz/corpus/gguf/tiny_llama.gguf: a complete 1-layer model; keeps the seed valid.
  auto w = ModelWeights::LoadGguf(testing::SourceDir() + "/tests/fuzz/corpus/gguf/tiny_llama.gguf");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->config().name, "fuzz-tiny");
  EXPECT_EQ((*w)->config().vocab_size, 4);
  EXPECT_EQ((*w)->config().n_kv_heads, 1);
  EXPECT_TRUE((*w)->config().tied_embeddings);
  EXPECT_EQ((*w)->layer(0).w_down.rows, 8);
  EXPECT_EQ((*w)->layer(0).w_down.cols, 16);
  EXPECT_FLOAT_EQ((*w)->output_norm()[1], 1.0f * ((37 % 11) - 5));
}

// Writes `m` as a GGUF in memory (what synthetic-model tooling does).
std::string ToGguf(const ModelWeights& m, bool drop_attn_k = false, bool bad_shape = false) {
  const ModelConfig& c = m.config();
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetString("general.name", c.name);
  w.SetUint32("llama.block_count", c.n_layers);
  w.SetUint32("llama.embedding_length", c.hidden);
  w.SetUint32("llama.attention.head_count", c.n_heads);
  w.SetUint32("llama.attention.head_count_kv", c.n_kv_heads);
  w.SetUint32("llama.feed_forward_length", c.ffn_dim);
  w.SetUint32("llama.context_length", c.context_length);
  w.SetUint32("llama.vocab_size", c.vocab_size);
  auto mat = [&](const std::string& name, const WeightView& v) {
    CHECK_OK(w.AddTensorView(name, v.type, {v.cols, v.rows}, v.data));
  };
  auto vec = [&](const std::string& name, const std::vector<float>& v) {
    CHECK_OK(w.AddTensorView(name, GgmlType::kF32, {static_cast<int64_t>(v.size())}, v.data()));
  };
  mat("token_embd.weight", m.token_embd());
  vec("output_norm.weight", m.output_norm());
  if (!c.tied_embeddings) mat("output.weight", m.output());
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = m.layer(l);
    const std::string p = "blk." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", L.attn_norm);
    mat(p + "attn_q.weight", L.wq);
    if (!drop_attn_k) {
      WeightView k = L.wk;
      if (bad_shape && l == 1) k.rows /= 2;
      mat(p + "attn_k.weight", k);
    }
    mat(p + "attn_v.weight", L.wv);
    mat(p + "attn_output.weight", L.wo);
    vec(p + "ffn_norm.weight", L.ffn_norm);
    mat(p + "ffn_gate.weight", L.w_gate);
    mat(p + "ffn_up.weight", L.w_up);
    mat(p + "ffn_down.weight", L.w_down);
  }
  return w.Serialize();
}

TEST(ModelWeightsTest, SyntheticIsDeterministicWithSensibleScale) {
  const ModelConfig c = *ModelConfig::Preset("tiny");
  auto a = ModelWeights::Synthetic(c, GgmlType::kF32, 7);
  auto b = ModelWeights::Synthetic(c, GgmlType::kF32, 7);
  auto other = ModelWeights::Synthetic(c, GgmlType::kF32, 8);
  EXPECT_EQ(a->gguf(), nullptr);
  EXPECT_EQ(a->config().Fingerprint(), c.Fingerprint());
  ASSERT_EQ(a->layers().size(), 2u);
  EXPECT_TRUE(SameBytes(a->token_embd(), b->token_embd()));
  EXPECT_TRUE(SameBytes(a->layer(1).w_down, b->layer(1).w_down));
  EXPECT_EQ(a->layer(1).ffn_norm, b->layer(1).ffn_norm);
  EXPECT_FALSE(SameBytes(a->token_embd(), other->token_embd()));
  EXPECT_FALSE(SameBytes(a->layer(0).wq, a->layer(1).wq));  // tensors differ from each other
  EXPECT_NE(a->output().data, a->token_embd().data);        // tiny is untied

  const LayerWeights& L = a->layer(0);
  EXPECT_EQ(L.wq.rows, 128);
  EXPECT_EQ(L.wq.cols, 128);
  EXPECT_EQ(L.wk.rows, 64);
  EXPECT_EQ(L.wv.rows, 64);
  EXPECT_EQ(L.wo.cols, 128);
  EXPECT_EQ(L.w_gate.rows, 256);
  EXPECT_EQ(L.w_down.cols, 256);
  EXPECT_EQ(a->token_embd().rows, 512);
  EXPECT_EQ(a->output().rows, 512);

  // normal(0, 0.02) matrices, norms around 1.
  const float* x = static_cast<const float*>(a->token_embd().data);
  const int64_t n = a->token_embd().rows * a->token_embd().cols;
  double sum = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(std::isfinite(x[i]));
    sum += x[i];
    sq += double{x[i]} * x[i];
  }
  const double mean = sum / n, stddev = std::sqrt(sq / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(stddev, 0.02, 0.001);
  for (float v : L.attn_norm) EXPECT_NEAR(v, 1.0f, 0.15f);
}

TEST(ModelWeightsTest, SyntheticQuantizedTypes) {
  const ModelConfig c = *ModelConfig::Preset("tiny");
  for (GgmlType t :
       {GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kF16, GgmlType::kBF16}) {
    auto a = ModelWeights::Synthetic(c, t, 3);
    auto f = ModelWeights::Synthetic(c, GgmlType::kF32, 3);
    EXPECT_EQ(a->layer(1).w_up.type, t);
    EXPECT_TRUE(SameBytes(a->layer(1).w_up, ModelWeights::Synthetic(c, t, 3)->layer(1).w_up));
    // The quantized weights encode the same draws as the fp32 ones.
    std::vector<float> q = Row(a->layer(1).w_up, 5);
    std::vector<float> ref = Row(f->layer(1).w_up, 5);
    double err = 0;
    for (size_t i = 0; i < q.size(); ++i) err = std::max(err, double{std::fabs(q[i] - ref[i])});
    EXPECT_LT(err, 0.01) << GgmlTypeName(t);
  }
  EXPECT_THAT(std::string(ModelWeights::CheckSynthetic(c, GgmlType::kQ6_K).message()),
              HasSubstr("not a multiple of the Q6_K block size 256"));
  const ModelConfig smol = *ModelConfig::Preset("smollm2-135m");
  EXPECT_TRUE(ModelWeights::CheckSynthetic(smol, GgmlType::kQ4_1).ok());
  EXPECT_TRUE(
      ModelWeights::CheckSynthetic(*ModelConfig::Preset("llama3-8b"), GgmlType::kQ6_K).ok());
}

TEST(ModelWeightsTest, SyntheticSmolLm2ShapeInQ4_1) {
  auto m = ModelWeights::Synthetic(*ModelConfig::Preset("smollm2-135m"), GgmlType::kQ4_1, 1);
  EXPECT_EQ(m->layers().size(), 30u);
  EXPECT_EQ(m->output().data, m->token_embd().data);  // tied
  EXPECT_EQ(m->token_embd().rows, 49152);
  // Same bytes per layer as the real file's Q4_1 layers; embedding in Q4_1 not Q8_0.
  EXPECT_EQ(m->matrix_bytes(), 30 * 2211840 + 49152 * 576 / 32 * 20);
}

TEST(ModelWeightsTest, RoundTripsThroughGgufAndChecksShapes) {
  auto m = ModelWeights::Synthetic(*ModelConfig::Preset("tiny"), GgmlType::kQ8_0, 11);
  auto file = GgufFile::FromBytes(ToGguf(*m));
  ASSERT_TRUE(file.ok()) << file.status();
  auto loaded = ModelWeights::FromGguf(std::move(*file));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().Fingerprint(), m->config().Fingerprint());
  EXPECT_FALSE((*loaded)->config().tied_embeddings);
  EXPECT_TRUE(SameBytes((*loaded)->layer(1).wk, m->layer(1).wk));
  EXPECT_TRUE(SameBytes((*loaded)->output(), m->output()));
  EXPECT_EQ((*loaded)->layer(1).attn_norm, m->layer(1).attn_norm);
  EXPECT_EQ((*loaded)->matrix_bytes(), m->matrix_bytes());

  auto missing = ModelWeights::FromGguf(*GgufFile::FromBytes(ToGguf(*m, /*drop_attn_k=*/true)));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("'blk.0.attn_k.weight'"));
  auto bad = ModelWeights::FromGguf(*GgufFile::FromBytes(ToGguf(*m, false, /*bad_shape=*/true)));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("'blk.1.attn_k.weight' has shape [128, 32]; the model config needs "
                        "[128, 64]"));
  EXPECT_EQ(ModelWeights::LoadGguf("/nonexistent.gguf").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tandem
