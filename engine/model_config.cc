#include "engine/model_config.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace tandem {
namespace {

// A positive int from `key`; NOT_FOUND passes through so callers can default.
absl::StatusOr<int> PositiveInt(const GgufFile& gguf, const std::string& key) {
  ASSIGN_OR_RETURN(const int64_t v, gguf.GetInt(key));
  if (v <= 0 || v > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        Cat("GGUF metadata key '", key, "' = ", v, ": expected a positive size below 2^30"));
  }
  return static_cast<int>(v);
}

absl::StatusOr<int> OptionalPositiveInt(const GgufFile& gguf, const std::string& key,
                                        int fallback) {
  if (!gguf.Has(key)) return fallback;
  return PositiveInt(gguf, key);
}

// Float or integer (some converters write integral values as integers).
absl::StatusOr<double> OptionalNumber(const GgufFile& gguf, const std::string& key,
                                      double fallback) {
  if (!gguf.Has(key)) return fallback;
  absl::StatusOr<double> f = gguf.GetFloat(key);
  if (f.ok()) return f;
  absl::StatusOr<int64_t> i = gguf.GetInt(key);
  if (i.ok()) return static_cast<double>(*i);
  return f.status();
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::Preset(std::string_view preset) {
  ModelConfig c;
  c.architecture = "llama";
  if (preset == "llama3-8b") {
    c.name = "llama3-8b";
    c.n_layers = 32;
    c.hidden = 4096;
    c.n_heads = 32;
    c.n_kv_heads = 8;
    c.head_dim = 128;
    c.ffn_dim = 14336;
    c.vocab_size = 128256;
    c.context_length = 8192;
    c.rope_theta = 500000.0f;
    c.rms_norm_eps = 1e-5f;
    c.tied_embeddings = false;
  } else if (preset == "smollm2-135m") {
    c.name = "smollm2-135m";
    c.n_layers = 30;
    c.hidden = 576;
    c.n_heads = 9;
    c.n_kv_heads = 3;
    c.head_dim = 64;
    c.ffn_dim = 1536;
    c.vocab_size = 49152;
    c.context_length = 8192;
    c.rope_theta = 100000.0f;
    c.rms_norm_eps = 1e-5f;
    c.tied_embeddings = true;
  } else if (preset == "tiny") {
    c.name = "tiny";
    c.n_layers = 2;
    c.hidden = 128;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 32;
    c.ffn_dim = 256;
    c.vocab_size = 512;
    c.context_length = 512;
    c.rope_theta = 10000.0f;
    c.rms_norm_eps = 1e-5f;
    c.tied_embeddings = false;
  } else {
    return absl::InvalidArgumentError(
        Cat("unknown model preset '", preset, "'; choose llama3-8b, smollm2-135m or tiny"));
  }
  return c;
}

absl::Status ModelConfig::Validate() const {
  auto bad = [this](std::string_view what) {
    return absl::InvalidArgumentError(Cat("model config '", name, "': ", what));
  };
  if (architecture != "llama") {
    return bad(Cat("architecture '", architecture, "' is not supported (llama only)"));
  }
  const std::pair<const char*, int> sizes[] = {
      {"n_layers", n_layers},     {"hidden", hidden},
      {"n_heads", n_heads},       {"n_kv_heads", n_kv_heads},
      {"head_dim", head_dim},     {"ffn_dim", ffn_dim},
      {"vocab_size", vocab_size}, {"context_length", context_length},
  };
  for (const auto& [field, value] : sizes) {
    if (value <= 0) return bad(Cat(field, " must be positive, is ", value));
  }
  if (n_heads % n_kv_heads != 0) {
    return bad(Cat("n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads));
  }
  if (static_cast<int64_t>(n_heads) * head_dim != hidden) {
    return bad(Cat("hidden ", hidden, " != n_heads ", n_heads, " * head_dim ", head_dim));
  }
  if (head_dim % 2 != 0) return bad(Cat("head_dim ", head_dim, " must be even for RoPE"));
  if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta)) {
    return bad(Cat("rope_theta must be positive, is ", rope_theta));
  }
  if (!(rms_norm_eps > 0.0f) || !std::isfinite(rms_norm_eps)) {
    return bad(Cat("rms_norm_eps must be positive, is ", rms_norm_eps));
  }
  return absl::OkStatus();
}

std::string ModelConfig::Fingerprint() const {
  const std::string canonical =
      Cat(name, "|", architecture, "|L", n_layers, "|d", hidden, "|h", n_heads, "|kv", n_kv_heads,
          "|hd", head_dim, "|ffn", ffn_dim, "|v", vocab_size, "|tied", tied_embeddings ? 1 : 0,
          // Q/K rows in Hugging Face order put other values in the KV cache's dimensions.
          rope_layout == RopeLayout::kHalfSplit ? "|rope-half" : "");
  return absl::StrFormat("%s-L%d-kv%d-hd%d-%016x", architecture, n_layers, n_kv_heads, head_dim,
                         Fnv1a64(canonical));
}

std::string ModelConfig::ToString() const {
  return Cat(name, ": ", architecture, ", ", n_layers, " layers, hidden ", hidden, ", ", n_heads,
             " heads, ", n_kv_heads, " kv heads, head dim ", head_dim, ", ffn ", ffn_dim,
             ", vocab ", vocab_size, ", context ", context_length, ", rope theta ", rope_theta,
             ", eps ", rms_norm_eps, tied_embeddings ? ", tied embeddings" : "");
}

absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf) {
  ModelConfig c;
  absl::StatusOr<std::string_view> arch = gguf.GetString("general.architecture");
  if (!arch.ok()) return arch.status();
  if (*arch != "llama" && *arch != "mistral") {
    return absl::InvalidArgumentError(
        Cat("unsupported model: general.architecture is '", *arch,
            "'; tandem runs llama-architecture models (llama, mistral)"));
  }
  const std::string p = std::string(*arch) + ".";
  c.architecture = "llama";
  absl::StatusOr<std::string_view> name = gguf.GetString("general.name");
  c.name = name.ok() ? std::string(*name) : std::string(*arch);

  ASSIGN_OR_RETURN(c.n_layers, PositiveInt(gguf, p + "block_count"));
  ASSIGN_OR_RETURN(c.hidden, PositiveInt(gguf, p + "embedding_length"));
  ASSIGN_OR_RETURN(c.n_heads, PositiveInt(gguf, p + "attention.head_count"));
  ASSIGN_OR_RETURN(c.n_kv_heads,
                   OptionalPositiveInt(gguf, p + "attention.head_count_kv", c.n_heads));
  ASSIGN_OR_RETURN(c.ffn_dim, PositiveInt(gguf, p + "feed_forward_length"));
  ASSIGN_OR_RETURN(c.context_length, OptionalPositiveInt(gguf, p + "context_length", 2048));
  c.head_dim = c.hidden % c.n_heads == 0 ? c.hidden / c.n_heads : 0;
  ASSIGN_OR_RETURN(c.head_dim, OptionalPositiveInt(gguf, p + "attention.key_length", c.head_dim));
  ASSIGN_OR_RETURN(const int rope_dim,
                   OptionalPositiveInt(gguf, p + "rope.dimension_count", c.head_dim));
  if (rope_dim != c.head_dim) {
    return absl::InvalidArgumentError(
        Cat("GGUF metadata key '", p, "rope.dimension_count' = ", rope_dim,
            ": partial rotary embeddings are not supported (head dim ", c.head_dim, ")"));
  }
  ASSIGN_OR_RETURN(const double theta, OptionalNumber(gguf, p + "rope.freq_base", 10000.0));
  c.rope_theta = static_cast<float>(theta);
  ASSIGN_OR_RETURN(const double eps,
                   OptionalNumber(gguf, p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.rms_norm_eps = static_cast<float>(eps);

  if (gguf.Has("tokenizer.ggml.tokens")) {
    ASSIGN_OR_RETURN(const GgufValue tokens, gguf.GetValue("tokenizer.ggml.tokens"));
    if (tokens.type() != GgufValueType::kArray || tokens.size() == 0 ||
        tokens.size() > (uint64_t{1} << 30)) {
      return absl::InvalidArgumentError(
          "GGUF metadata key 'tokenizer.ggml.tokens' must be a non-empty array");
    }
    c.vocab_size = static_cast<int>(tokens.size());
  } else if (gguf.Has(p + "vocab_size")) {
    ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(gguf, p + "vocab_size"));
  } else if (const GgufTensorInfo* embd = gguf.FindTensor("token_embd.weight");
             embd != nullptr && embd->dims.size() == 2 && embd->dims[1] > 0 &&
             embd->dims[1] < (int64_t{1} << 30)) {
    c.vocab_size = static_cast<int>(embd->dims[1]);
  } else {
    return absl::InvalidArgumentError(
        Cat("GGUF has no vocabulary size: neither tokenizer.ggml.tokens nor ", p, "vocab_size"));
  }
  c.tied_embeddings = gguf.FindTensor("output.weight") == nullptr;
  c.rope_layout = RopeLayout::kAdjacentPairs;
  RETURN_IF_ERROR(c.Validate());
  return c;
}

}  // namespace tandem
