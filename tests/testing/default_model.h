// What the default model (SmolLM2-135M-Instruct, ../shared/DESIGN.md "Models and numbers")
// looks like, whichever file it was read from: the GGUF (model_config_test) or a Hugging
// Face directory's config.json (hf_model_test). The caller checks what differs between them
// (the name, the RoPE layout).
#ifndef TANDEM_TESTS_TESTING_DEFAULT_MODEL_H_
#define TANDEM_TESTS_TESTING_DEFAULT_MODEL_H_

#include "engine/model_config.h"
#include "gtest/gtest.h"

namespace tandem::testing {

inline void ExpectDefaultModelShape(const ModelConfig& c) {
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.hidden, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.ffn_dim, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.context_length, 8192);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_TRUE(c.tied_embeddings);
}

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_DEFAULT_MODEL_H_
