// The shape of a Llama-architecture model: read from GGUF metadata, or a named preset for
// synthetic benchmarks at real sizes.
#ifndef TANDEM_ENGINE_MODEL_CONFIG_H_
#define TANDEM_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/gguf_file.h"
#include "kernels/cpu/ops.h"

namespace tandem {

struct ModelConfig {
  std::string name;  // general.name, or the preset's name
  std::string architecture = "llama";
  int n_layers = 0;
  int hidden = 0;  // n_embd
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;  // hidden / n_heads
  int ffn_dim = 0;
  int vocab_size = 0;
  int context_length = 0;
  float rope_theta = 10000.0f;  // rope.freq_base
  float rms_norm_eps = 1e-5f;
  bool tied_embeddings = false;  // true when there is no output.weight: output = token_embd
  // GGUF llama weights have Q/K rows permuted for adjacent-pair RoPE; Hugging Face ones do not.
  RopeLayout rope_layout = RopeLayout::kAdjacentPairs;

  // Named shapes for synthetic models: "llama3-8b", "smollm2-135m", "tiny" (2 layers, hidden
  // 128: fast enough for unit tests). INVALID_ARGUMENT naming the choices otherwise.
  static absl::StatusOr<ModelConfig> Preset(std::string_view preset);

  // Checks positivity and divisibility (heads % kv_heads, hidden == heads * head_dim, ...).
  absl::Status Validate() const;

  // A stable (process- and machine-independent) id of everything that fixes the KV layout and
  // the weight shapes: two workers agree on it exactly when they can exchange KV.
  std::string Fingerprint() const;

  // One line for logs: "SmolLM2 135M Instruct: llama, 30 layers, hidden 576, ...".
  std::string ToString() const;
};

// Reads general.architecture ("llama", or the alias "mistral") and `<arch>.*` hyperparameters;
// vocab_size from tokenizer.ggml.tokens' length (or `<arch>.vocab_size`); tied_embeddings from
// the absence of output.weight. The result is validated.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);

}  // namespace tandem

#endif  // TANDEM_ENGINE_MODEL_CONFIG_H_
