// The weights of a Llama-architecture model: borrowed from a mapped GGUF file or Hugging Face
// safetensors files (kept alive here), or owned synthetic random weights for benchmarks at real sizes. Matrices stay in
// their stored type (WeightView); norm vectors are converted to fp32.
#ifndef TANDEM_ENGINE_MODEL_WEIGHTS_H_
#define TANDEM_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gguf_file.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cpu/matmul.h"

namespace tandem {

// One transformer block. WeightView rows are output features, cols input features.
struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  WeightView wq;                 // [n_heads * head_dim, hidden]
  WeightView wk;                 // [n_kv_heads * head_dim, hidden]
  WeightView wv;                 // [n_kv_heads * head_dim, hidden]
  WeightView wo;                 // [hidden, n_heads * head_dim]
  std::vector<float> ffn_norm;   // [hidden]
  WeightView w_gate;             // [ffn_dim, hidden]
  WeightView w_up;               // [ffn_dim, hidden]
  WeightView w_down;             // [hidden, ffn_dim]
};

// Immutable after construction; safe to read from any thread.
class ModelWeights {
 public:
  // Maps `path`, reads its config, and checks every tensor's presence, shape and type
  // (INVALID_ARGUMENT naming the tensor).
  static absl::StatusOr<std::unique_ptr<ModelWeights>> LoadGguf(const std::string& path);
  // The same over an already-parsed file (tests build one in memory with GgufWriter).
  static absl::StatusOr<std::unique_ptr<ModelWeights>> FromGguf(std::unique_ptr<GgufFile> gguf);

  // Weights viewed inside Hugging Face safetensors files (engine/hf_model.h: names, shapes
  // [out, in], F32/F16/BF16), which are kept alive here; `config` is config.json's.
  // INVALID_ARGUMENT naming a missing or misshapen tensor or an unusable dtype.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> FromSafetensors(
      const ModelConfig& config, std::vector<std::unique_ptr<SafetensorsFile>> files);

  // Seeded random weights: matrices ~ normal(0, 0.02) encoded in `type`, norms ~ 1 + 0.02 *
  // normal. Deterministic for a (config, type, seed) whatever the thread count; generated on
  // every core (Llama-3-8B in Q4_1, ~4.5 GB, takes seconds). CHECK-fails when the config is
  // invalid or a row length is not a multiple of the type's block size: see CheckSynthetic.
  static std::unique_ptr<ModelWeights> Synthetic(const ModelConfig& config, GgmlType type,
                                                 uint64_t seed);
  // Whether Synthetic(config, type, ...) can build the model, with the reason when not.
  static absl::Status CheckSynthetic(const ModelConfig& config, GgmlType type);

  ~ModelWeights();
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const ModelConfig& config() const { return config_; }
  // The file the weights live in (the tokenizer reads it); nullptr for synthetic weights.
  const GgufFile* gguf() const { return gguf_.get(); }

  const WeightView& token_embd() const { return token_embd_; }            // [vocab, hidden]
  const std::vector<float>& output_norm() const { return output_norm_; }  // [hidden]
  const WeightView& output() const { return output_; }  // [vocab, hidden]; token_embd if tied
  const std::vector<LayerWeights>& layers() const { return layers_; }
  const LayerWeights& layer(int i) const { return layers_[i]; }

  // Bytes of all weight matrices (token_embd once when tied), for memory planning and logs.
  int64_t matrix_bytes() const;

 private:
  struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
  };
  ModelWeights() = default;

  ModelConfig config_;
  std::unique_ptr<GgufFile> gguf_;                              // null for synthetic weights
  std::vector<std::unique_ptr<SafetensorsFile>> safetensors_;   // Hugging Face checkpoints
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> buffers_;  // synthetic weights' storage
  WeightView token_embd_;
  std::vector<float> output_norm_;
  WeightView output_;
  std::vector<LayerWeights> layers_;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_MODEL_WEIGHTS_H_
