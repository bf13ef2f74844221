#include "engine/model_weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/quant.h"
#include "common/strings.h"

namespace tandem {
namespace {

std::string DimsString(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += Cat(i == 0 ? "" : ", ", dims[i]);
  return s + "]";
}

absl::StatusOr<const GgufTensorInfo*> Find(const GgufFile& gguf, const std::string& name,
                                           const std::vector<int64_t>& dims) {
  const GgufTensorInfo* t = gguf.FindTensor(name);
  if (t == nullptr) return absl::InvalidArgumentError(Cat("GGUF tensor '", name, "' is missing"));
  if (t->dims != dims) {
    return absl::InvalidArgumentError(Cat("GGUF tensor '", name, "' has shape ",
                                          DimsString(t->dims), "; the model config needs ",
                                          DimsString(dims), " (GGUF order)"));
  }
  return t;
}

// A matrix of `rows` output features by `cols` input features (GGUF dims {cols, rows}).
absl::StatusOr<WeightView> Matrix(const GgufFile& gguf, const std::string& name, int64_t rows,
                                  int64_t cols) {
  ASSIGN_OR_RETURN(const GgufTensorInfo* t, Find(gguf, name, {cols, rows}));
  return WeightView{t->type, rows, cols, t->data};
}

absl::StatusOr<std::vector<float>> Vector(const GgufFile& gguf, const std::string& name,
                                          int64_t n) {
  ASSIGN_OR_RETURN(const GgufTensorInfo* t, Find(gguf, name, {n}));
  std::vector<float> out(n);
  if (t->type == GgmlType::kF32) {
    std::memcpy(out.data(), t->data, n * sizeof(float));
  } else {
    DequantizeRow(t->type, t->data, out.data(), n);
  }
  for (float v : out) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(Cat("GGUF tensor '", name, "' holds a non-finite value"));
    }
  }
  return out;
}

// ---- Synthetic weights --------------------------------------------------------------------

// SplitMix64's output function: a strong 64-bit mix of a counter.
inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Approximately standard normal from one 64-bit draw: the Irwin-Hall sum of four 16-bit
// uniforms (mean 2, variance 1/3), recentred and scaled. Cheap enough for 8e9 draws.
inline float NormalFrom(uint64_t bits) {
  constexpr float kInv = 1.0f / 65536.0f;
  const float s = static_cast<float>(bits & 0xffff) + static_cast<float>((bits >> 16) & 0xffff) +
                  static_cast<float>((bits >> 32) & 0xffff) + static_cast<float>(bits >> 48);
  return (s * kInv + 2.0f * kInv - 2.0f) * 1.7320508f;
}

// Fills `n` floats with mean + std * normal, from a stream fixed by (seed, tensor, row). Each
// element is a pure function of its index (a counter-based generator), so the loop vectorizes.
void FillRow(uint64_t seed, uint64_t tensor_id, int64_t row, float mean, float std, float* out,
             int64_t n) {
  const uint64_t base = Mix64(seed ^ (tensor_id * 0xd1342543de82ef95ull) ^
                              (static_cast<uint64_t>(row) * 0x2545f4914f6cdd1dull));
  for (int64_t i = 0; i < n; ++i) {
    out[i] =
        mean + std * NormalFrom(Mix64(base + static_cast<uint64_t>(i + 1) * 0x9e3779b97f4a7c15ull));
  }
}

// Runs fn(begin, end) over [0, n) on every core.
template <typename Fn>
void ParallelRows(int64_t n, const Fn& fn) {
  const int64_t threads =
      std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), n / 16));
  if (threads == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int64_t t = 0; t < threads; ++t) {
    pool.emplace_back([&fn, n, t, threads] { fn(n * t / threads, n * (t + 1) / threads); });
  }
  for (std::thread& th : pool) th.join();
}

}  // namespace

ModelWeights::~ModelWeights() = default;

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::LoadGguf(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = FromGguf(std::move(gguf));
  if (!w.ok()) {
    return absl::Status(w.status().code(), Cat(path, ": ", w.status().message()));
  }
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::FromGguf(
    std::unique_ptr<GgufFile> gguf) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  ASSIGN_OR_RETURN(w->config_, ModelConfigFromGguf(*gguf));
  const ModelConfig& c = w->config_;
  const GgufFile& f = *gguf;
  const int64_t hidden = c.hidden;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;

  ASSIGN_OR_RETURN(w->token_embd_, Matrix(f, "token_embd.weight", c.vocab_size, hidden));
  ASSIGN_OR_RETURN(w->output_norm_, Vector(f, "output_norm.weight", hidden));
  if (c.tied_embeddings) {
    w->output_ = w->token_embd_;
  } else {
    ASSIGN_OR_RETURN(w->output_, Matrix(f, "output.weight", c.vocab_size, hidden));
  }
  w->layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w->layers_[l];
    const std::string p = Cat("blk.", l, ".");
    ASSIGN_OR_RETURN(L.attn_norm, Vector(f, p + "attn_norm.weight", hidden));
    ASSIGN_OR_RETURN(L.wq, Matrix(f, p + "attn_q.weight", q_dim, hidden));
    ASSIGN_OR_RETURN(L.wk, Matrix(f, p + "attn_k.weight", kv_dim, hidden));
    ASSIGN_OR_RETURN(L.wv, Matrix(f, p + "attn_v.weight", kv_dim, hidden));
    ASSIGN_OR_RETURN(L.wo, Matrix(f, p + "attn_output.weight", hidden, q_dim));
    ASSIGN_OR_RETURN(L.ffn_norm, Vector(f, p + "ffn_norm.weight", hidden));
    ASSIGN_OR_RETURN(L.w_gate, Matrix(f, p + "ffn_gate.weight", c.ffn_dim, hidden));
    ASSIGN_OR_RETURN(L.w_up, Matrix(f, p + "ffn_up.weight", c.ffn_dim, hidden));
    ASSIGN_OR_RETURN(L.w_down, Matrix(f, p + "ffn_down.weight", hidden, c.ffn_dim));
  }
  w->gguf_ = std::move(gguf);
  return w;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::FromSafetensors(
    const ModelConfig& config, std::vector<std::unique_ptr<SafetensorsFile>> files) {
  RETURN_IF_ERROR(config.Validate());
  auto find = [&](const std::string& name,
                  const std::vector<int64_t>& shape) -> absl::StatusOr<const SafetensorsTensor*> {
    for (const auto& f : files) {
      const SafetensorsTensor* t = f->Find(name);
      if (t == nullptr) continue;
      if (t->shape != shape) {
        return absl::InvalidArgumentError(Cat(f->path(), ": tensor '", name, "' has shape ",
                                              DimsString(t->shape), "; config.json needs ",
                                              DimsString(shape)));
      }
      if (t->dtype == SafetensorsDtype::kOther) {
        return absl::InvalidArgumentError(Cat(f->path(), ": tensor '", name, "' is ",
                                              t->dtype_name, "; F32, F16 or BF16 are read"));
      }
      return t;
    }
    return absl::InvalidArgumentError(Cat("safetensors tensor '", name, "' is missing"));
  };
  auto type_of = [](const SafetensorsTensor& t) {
    return t.dtype == SafetensorsDtype::kF32   ? GgmlType::kF32
           : t.dtype == SafetensorsDtype::kF16 ? GgmlType::kF16
                                               : GgmlType::kBF16;
  };
  auto matrix = [&](const std::string& name, int64_t rows,
                    int64_t cols) -> absl::StatusOr<WeightView> {
    ASSIGN_OR_RETURN(const SafetensorsTensor* t, find(name, {rows, cols}));
    return WeightView{type_of(*t), rows, cols, t->data};
  };
  auto vector = [&](const std::string& name, int64_t n) -> absl::StatusOr<std::vector<float>> {
    ASSIGN_OR_RETURN(const SafetensorsTensor* t, find(name, {n}));
    std::vector<float> out(n);
    if (t->dtype == SafetensorsDtype::kF32) {
      std::memcpy(out.data(), t->data, n * sizeof(float));
    } else {
      DequantizeRow(type_of(*t), t->data, out.data(), n);
    }
    for (float v : out) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(Cat("tensor '", name, "' holds a non-finite value"));
      }
    }
    return out;
  };

  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->config_ = config;
  const ModelConfig& c = w->config_;
  const int64_t hidden = c.hidden;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  ASSIGN_OR_RETURN(w->token_embd_, matrix("model.embed_tokens.weight", c.vocab_size, hidden));
  ASSIGN_OR_RETURN(w->output_norm_, vector("model.norm.weight", hidden));
  if (c.tied_embeddings) {
    w->output_ = w->token_embd_;
  } else {
    ASSIGN_OR_RETURN(w->output_, matrix("lm_head.weight", c.vocab_size, hidden));
  }
  w->layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w->layers_[l];
    const std::string p = Cat("model.layers.", l, ".");
    ASSIGN_OR_RETURN(L.attn_norm, vector(p + "input_layernorm.weight", hidden));
    ASSIGN_OR_RETURN(L.wq, matrix(p + "self_attn.q_proj.weight", q_dim, hidden));
    ASSIGN_OR_RETURN(L.wk, matrix(p + "self_attn.k_proj.weight", kv_dim, hidden));
    ASSIGN_OR_RETURN(L.wv, matrix(p + "self_attn.v_proj.weight", kv_dim, hidden));
    ASSIGN_OR_RETURN(L.wo, matrix(p + "self_attn.o_proj.weight", hidden, q_dim));
    ASSIGN_OR_RETURN(L.ffn_norm, vector(p + "post_attention_layernorm.weight", hidden));
    ASSIGN_OR_RETURN(L.w_gate, matrix(p + "mlp.gate_proj.weight", c.ffn_dim, hidden));
    ASSIGN_OR_RETURN(L.w_up, matrix(p + "mlp.up_proj.weight", c.ffn_dim, hidden));
    ASSIGN_OR_RETURN(L.w_down, matrix(p + "mlp.down_proj.weight", hidden, c.ffn_dim));
  }
  w->safetensors_ = std::move(files);
  return w;
}

absl::Status ModelWeights::CheckSynthetic(const ModelConfig& config, GgmlType type) {
  RETURN_IF_ERROR(config.Validate());
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    return absl::InvalidArgumentError(Cat("unsupported weight type ", GgmlTypeName(type)));
  }
  const int64_t q_dim = static_cast<int64_t>(config.n_heads) * config.head_dim;
  for (int64_t cols :
       {static_cast<int64_t>(config.hidden), q_dim, static_cast<int64_t>(config.ffn_dim)}) {
    if (cols % traits->block_size != 0) {
      return absl::InvalidArgumentError(Cat("model '", config.name, "': row length ", cols,
                                            " is not a multiple of the ", traits->name,
                                            " block size ", traits->block_size));
    }
  }
  return absl::OkStatus();
}

std::unique_ptr<ModelWeights> ModelWeights::Synthetic(const ModelConfig& config, GgmlType type,
                                                      uint64_t seed) {
  CHECK_OK(CheckSynthetic(config, type));
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->config_ = config;
  const ModelConfig& c = w->config_;
  constexpr float kStd = 0.02f;

  auto matrix = [&](uint64_t id, int64_t rows, int64_t cols) {
    const int64_t row_bytes = RowBytes(type, cols);
    const size_t bytes = static_cast<size_t>(rows * row_bytes);
    void* mem = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    CHECK(mem != nullptr) << "cannot allocate " << bytes << " bytes of synthetic weights";
    auto* data = static_cast<uint8_t*>(mem);
    w->buffers_.emplace_back(data);
    ParallelRows(rows, [&](int64_t begin, int64_t end) {
      std::vector<float> row(cols);
      for (int64_t r = begin; r < end; ++r) {
        FillRow(seed, id, r, 0.0f, kStd, row.data(), cols);
        uint8_t* dst = data + r * row_bytes;
        if (type == GgmlType::kF32) {
          std::memcpy(dst, row.data(), cols * sizeof(float));
        } else {
          QuantizeRow(type, row.data(), dst, cols);
        }
      }
    });
    return WeightView{type, rows, cols, data};
  };
  auto norm = [&](uint64_t id) {
    std::vector<float> v(c.hidden);
    FillRow(seed, id, 0, 1.0f, kStd, v.data(), c.hidden);
    return v;
  };

  const int64_t hidden = c.hidden;
  const int64_t q_dim = static_cast<int64_t>(c.n_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.n_kv_heads) * c.head_dim;
  w->token_embd_ = matrix(0, c.vocab_size, hidden);
  w->output_norm_ = norm(1);
  w->output_ = c.tied_embeddings ? w->token_embd_ : matrix(2, c.vocab_size, hidden);
  w->layers_.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w->layers_[l];
    const uint64_t id = 16 + 16 * static_cast<uint64_t>(l);
    L.attn_norm = norm(id + 0);
    L.wq = matrix(id + 1, q_dim, hidden);
    L.wk = matrix(id + 2, kv_dim, hidden);
    L.wv = matrix(id + 3, kv_dim, hidden);
    L.wo = matrix(id + 4, hidden, q_dim);
    L.ffn_norm = norm(id + 5);
    L.w_gate = matrix(id + 6, c.ffn_dim, hidden);
    L.w_up = matrix(id + 7, c.ffn_dim, hidden);
    L.w_down = matrix(id + 8, hidden, c.ffn_dim);
  }
  return w;
}

int64_t ModelWeights::matrix_bytes() const {
  auto bytes = [](const WeightView& v) { return v.rows * RowBytes(v.type, v.cols); };
  int64_t total = bytes(token_embd_);
  if (output_.data != token_embd_.data) total += bytes(output_);
  for (const LayerWeights& L : layers_) {
    for (const WeightView* v : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      total += bytes(*v);
    }
  }
  return total;
}

}  // namespace tandem
