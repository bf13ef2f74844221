// Hugging Face checkpoints: a directory with config.json, model.safetensors (or the shards
// model.safetensors.index.json names), tokenizer.json and tokenizer_config.json, as
// `save_pretrained` writes them for a LlamaForCausalLM (or Mistral) model.
//
// Weights stay in their stored dtype (F32, F16 or BF16; the CPU runner computes with them as
// they are, the CUDA runner uploads them as bf16) and are memory-mapped. Q and K keep Hugging
// Face's row order, so RoPE rotates halves (ModelConfig::rope_layout = kHalfSplit) where a
// GGUF conversion rotates adjacent pairs; the KV layout differs accordingly and the model
// fingerprint says so. What the engine cannot run is refused naming it: rope_scaling, biases,
// activations other than silu, tokenizers other than byte-level BPE with a GPT-2 or
// SmolLM-style pre-tokenizer.
#ifndef TANDEM_ENGINE_HF_MODEL_H_
#define TANDEM_ENGINE_HF_MODEL_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/chat_template.h"
#include "engine/model_config.h"
#include "engine/model_store.h"
#include "engine/model_weights.h"
#include "engine/tokenizer.h"

namespace tandem {

// A directory holding config.json.
bool IsHfModelDir(const std::string& path);

// config.json's text; `fallback_name` when it has no _name_or_path.
absl::StatusOr<ModelConfig> ModelConfigFromHfConfig(std::string_view config_json,
                                                    std::string_view fallback_name);
// tokenizer.json's and tokenizer_config.json's texts (the latter may be empty); config.json's
// bos/eos ids fill in what tokenizer_config.json does not name.
absl::StatusOr<TokenizerData> TokenizerDataFromHf(std::string_view tokenizer_json,
                                                  std::string_view tokenizer_config_json,
                                                  std::string_view config_json = "");

// Reads `dir` (LoadModel's Hugging Face branch, engine/model_store.h); with `with_weights`
// false only the config, tokenizer and chat template. INVALID_ARGUMENT / UNIMPLEMENTED naming
// the file and what is wrong.
absl::StatusOr<LoadedModel> LoadHfModel(const std::string& dir, bool with_weights);

}  // namespace tandem

#endif  // TANDEM_ENGINE_HF_MODEL_H_
