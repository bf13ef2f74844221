#include "kernels/cpu/ops.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/logging.h"
#include "kernels/cpu/simd_math.h"

namespace tandem {

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= dim; i += 16) {
      const __m256 a = _mm256_loadu_ps(xr + i), b = _mm256_loadu_ps(xr + i + 8);
      acc0 = _mm256_fmadd_ps(a, a, acc0);
      acc1 = _mm256_fmadd_ps(b, b, acc1);
    }
    float ss = simd::HorizontalSum(_mm256_add_ps(acc0, acc1));
    for (; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    i = 0;
    for (; i + 8 <= dim; i += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv);
      _mm256_storeu_ps(o + i, _mm256_mul_ps(v, _mm256_loadu_ps(weight + i)));
    }
    for (; i < dim; ++i) o[i] = xr[i] * inv * weight[i];
  }
}

namespace {

// cos/sin tables of the last positions Rope saw, per thread. A forward pass calls Rope twice
// per layer (q and k) with the same positions, so the tables are built once per pass;
// building them (double-precision sin/cos of every (token, pair)) costs more than rotating.
struct RopeTables {
  std::vector<int32_t> positions;  // [n_tokens]
  float theta = 0.0f;
  int head_dim = 0;
  std::vector<float> cos;  // [n_tokens, head_dim / 2]
  std::vector<float> sin;  // [n_tokens, head_dim / 2]
};

const RopeTables& GetRopeTables(const int32_t* positions, int64_t n_tokens, int head_dim,
                                float theta) {
  thread_local RopeTables t;
  if (t.theta == theta && t.head_dim == head_dim &&
      t.positions.size() == static_cast<size_t>(n_tokens) &&
      std::equal(positions, positions + n_tokens, t.positions.begin())) {
    return t;
  }
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);  // [half]
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
  }
  t.positions.assign(positions, positions + n_tokens);
  t.theta = theta;
  t.head_dim = head_dim;
  t.cos.resize(n_tokens * half);
  t.sin.resize(n_tokens * half);
  for (int64_t k = 0; k < n_tokens; ++k) {
    for (int i = 0; i < half; ++i) {
      // The angle in double keeps large positions accurate to fp32.
      const double angle = static_cast<double>(positions[k]) * inv_freq[i];
      t.cos[k * half + i] = static_cast<float>(std::cos(angle));
      t.sin[k * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return t;
}

}  // namespace

void Rope(float* x, const int32_t* positions, int64_t n_tokens, int n_heads, int head_dim,
          float theta, RopeLayout layout) {
  CHECK_EQ(head_dim % 2, 0) << "head_dim " << head_dim;
  const int half = head_dim / 2;
  const RopeTables& tables = GetRopeTables(positions, n_tokens, head_dim, theta);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* cs = tables.cos.data() + t * half;
    const float* sn = tables.sin.data() + t * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      if (layout == RopeLayout::kAdjacentPairs) {
        for (int i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * cs[i] - b * sn[i];
          v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
      } else {
        int i = 0;
        for (; i + 8 <= half; i += 8) {
          const __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + half);
          const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
          _mm256_storeu_ps(v + i, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
          _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
        }
        for (; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = a * sn[i] + b * cs[i];
        }
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = simd::Exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void AddInPlace(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) x[i] += y[i];
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float max = x[0];
  int64_t i = 0;
  if (n >= 8) {
    __m256 vmax = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    max = simd::HorizontalMax(vmax);
  }
  for (; i < n; ++i) max = std::max(max, x[i]);

  const __m256 vm = _mm256_set1_ps(max);
  __m256 vsum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = simd::Exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = simd::HorizontalSum(vsum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
  for (; i < n; ++i) x[i] *= inv;
}

}  // namespace tandem
