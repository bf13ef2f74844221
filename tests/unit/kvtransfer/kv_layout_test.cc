#include "kvtransfer/kv_layout.h"

#include <functional>
#include <string>
#include <vector>

#include "engine/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tandem {
namespace {

using ::testing::HasSubstr;

KvLayout SmolLayout() {
  return KvLayout::For(*ModelConfig::Preset("smollm2-135m"), 16, KvDtype::kF16);
}

TEST(KvLayoutTest, ForTakesTheModelShape) {
  const ModelConfig config = *ModelConfig::Preset("smollm2-135m");
  const KvLayout layout = KvLayout::For(config, 32, KvDtype::kF32);
  EXPECT_EQ(layout.model_fingerprint, config.Fingerprint());
  EXPECT_EQ(layout.n_layers, 30);
  EXPECT_EQ(layout.n_kv_heads, 3);
  EXPECT_EQ(layout.head_dim, 64);
  EXPECT_EQ(layout.block_size, 32);
  EXPECT_EQ(layout.dtype, KvDtype::kF32);
  EXPECT_EQ(layout.ElementBytes(), 4);
  // K and V of 32 tokens: 2 * 32 * 3 * 64 * 4 bytes.
  EXPECT_EQ(layout.LayerBlockBytes(), 49152);
  EXPECT_EQ(SmolLayout().LayerBlockBytes(), 12288);
}

TEST(KvLayoutTest, FingerprintIsStableHex) {
  const std::string fp = SmolLayout().Fingerprint();
  EXPECT_EQ(fp.size(), 64u);
  EXPECT_EQ(fp.find_first_not_of("0123456789abcdef"), std::string::npos) << fp;
  EXPECT_EQ(SmolLayout().Fingerprint(), fp);
  // Pinned: the digest must not depend on the process, the build or the machine.
  EXPECT_EQ(fp, "1fb2be8415a166a410b92ca67fe43e2806dd7848bb383d5b437cd0b67ca11a1c");
}

TEST(KvLayoutTest, FingerprintDiffersOnEveryField) {
  const KvLayout base = SmolLayout();
  const std::vector<std::function<void(KvLayout&)>> mutations = {
      [](KvLayout& l) { l.model_fingerprint += "x"; }, [](KvLayout& l) { l.n_layers += 1; },
      [](KvLayout& l) { l.n_kv_heads += 1; },          [](KvLayout& l) { l.head_dim *= 2; },
      [](KvLayout& l) { l.block_size = 32; },          [](KvLayout& l) { l.dtype = KvDtype::kF32; },
  };
  std::vector<std::string> seen = {base.Fingerprint()};
  for (size_t i = 0; i < mutations.size(); ++i) {
    KvLayout changed = base;
    mutations[i](changed);
    const std::string fp = changed.Fingerprint();
    for (const std::string& other : seen) EXPECT_NE(fp, other) << "mutation " << i;
    seen.push_back(fp);
    EXPECT_EQ(changed.CheckCompatible(base).code(), absl::StatusCode::kFailedPrecondition)
        << "mutation " << i;
  }
}

TEST(KvLayoutTest, CheckCompatibleNamesTheFirstDifferingField) {
  const KvLayout here = SmolLayout();
  EXPECT_TRUE(here.CheckCompatible(SmolLayout()).ok());

  KvLayout peer = here;
  peer.n_kv_heads = 8;
  absl::Status s = here.CheckCompatible(peer);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "KV layout mismatch: n_kv_heads 3 here, 8 at the peer");

  peer = here;
  peer.dtype = KvDtype::kF32;
  peer.block_size = 32;  // block_size is checked before dtype
  s = here.CheckCompatible(peer);
  EXPECT_EQ(s.message(), "KV layout mismatch: block_size 16 here, 32 at the peer");

  peer = here;
  peer.dtype = KvDtype::kF32;
  EXPECT_EQ(here.CheckCompatible(peer).message(),
            "KV layout mismatch: dtype f16 here, f32 at the peer");

  peer = here;
  peer.n_layers = 32;
  EXPECT_EQ(here.CheckCompatible(peer).message(),
            "KV layout mismatch: n_layers 30 here, 32 at the peer");

  peer = here;
  peer.head_dim = 128;
  EXPECT_EQ(here.CheckCompatible(peer).message(),
            "KV layout mismatch: head_dim 64 here, 128 at the peer");

  // Same shape, another model (e.g. other weights' names): the fingerprint catches it.
  peer = KvLayout::For(*ModelConfig::Preset("llama3-8b"), 16, KvDtype::kF16);
  peer.n_layers = here.n_layers;
  peer.n_kv_heads = here.n_kv_heads;
  peer.head_dim = here.head_dim;
  s = here.CheckCompatible(peer);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model_fingerprint " + here.model_fingerprint));
}

TEST(KvLayoutTest, ToStringShowsEveryField) {
  const std::string s = SmolLayout().ToString();
  EXPECT_THAT(s, HasSubstr(SmolLayout().model_fingerprint));
  EXPECT_THAT(s, HasSubstr("30 layers"));
  EXPECT_THAT(s, HasSubstr("3 kv heads"));
  EXPECT_THAT(s, HasSubstr("head dim 64"));
  EXPECT_THAT(s, HasSubstr("block size 16"));
  EXPECT_THAT(s, HasSubstr("f16"));
}

}  // namespace
}  // namespace tandem
