#include "engine/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace tandem {
namespace {

// Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS): 1/T would overflow
// the exponent and the distribution is a point mass in all but name anyway.
constexpr float kMinTemperature = 1e-5f;

// Top-p histogram: buckets of 1/16 nat of log relative weight, so tokens whose weights
// differ by more than ~6% fall in different buckets; weights below e^-64 share the last.
constexpr int kBucketsPerNat = 16;
constexpr int kNumBuckets = 64 * kBucketsPerNat + 1;

// Within the boundary bucket: ranges longer than kRefineAbove get a second histogram of
// kNumSubBuckets; ranges at most kSortBelow long are sorted instead of bisected.
constexpr size_t kRefineAbove = 1024;
constexpr int kNumSubBuckets = 1024;
constexpr size_t kSortBelow = 32;

struct Candidate {
  float logit;
  int32_t id;
};

// Strict weak order: larger logit first, then lower id (deterministic ties).
inline bool Better(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Scratch buffers reused across calls on the same thread, so that a Sampler per request
// costs no vocabulary-sized memory and Sample() allocates nothing in steady state.
std::vector<float>& WeightScratch(size_t n) {
  thread_local std::vector<float> weights;  // [vocab]
  weights.resize(n);
  return weights;
}

struct WeightedId {
  float weight;
  int32_t id;
};

// Strict weak order: larger weight first, then lower id.
inline bool BetterWeight(const WeightedId& a, const WeightedId& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.id < b.id);
}

// e^x for x <= 0, within ~2 ulp (Cephes' expf polynomial after x = n·ln2 + r); 0 below
// -87 (where expf turns denormal), for -inf and for NaN. Branch-free so that GCC vectorizes
// the loops calling it: glibc's expf is an opaque scalar call without -ffast-math, and the
// exponentials over a 49,152-token vocabulary are most of the cost of a draw.
inline float ExpNonPositive(float x) {
  // Masks instead of branches: GCC (with the default -ftrapping-math) will not if-convert
  // a conditional float operation.
  const uint32_t keep = x >= -87.0f ? 0xffffffffu : 0u;  // 0 for NaN and -inf
  x = std::bit_cast<float>(std::bit_cast<uint32_t>(x) & keep);
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRoundMagic) - kRoundMagic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(y * scale) & keep);
}

// weights[i] = exp((logits[i] - max_logit) / T): softmax numerators relative to the top
// token, in [0, 1]; 0 for NaN and -inf logits.
void ComputeWeights(absl::Span<const float> logits, float max_logit, float inv_temperature,
                    float* weights) {
  const size_t n = logits.size();
  for (size_t i = 0; i < n; ++i) {
    weights[i] = ExpNonPositive((logits[i] - max_logit) * inv_temperature);
  }
}

// Sum in double with eight interleaved accumulators: a fixed order (the same draw for the
// same seed), and not one long chain of dependent adds.
double Sum(const float* values, size_t n) {
  double acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += values[i + j];
  }
  for (; i < n; ++i) acc[0] += values[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Reorders `candidates` (in id order on entry) so that [0, cut) is the smallest prefix,
// best first under BetterWeight, whose mass added to `mass_before` reaches `needed`, and
// returns cut (all of them when rounding leaves the mass a hair short).
size_t NucleusEnd(std::vector<WeightedId>& candidates, double mass_before, double needed) {
  size_t lo = 0;  // [0, lo) is known to be in, with mass `in_mass`; the end is in (lo, hi]
  size_t hi = candidates.size();
  double in_mass = mass_before;
  const auto first = candidates.begin();

  // A nearly flat distribution puts much of the vocabulary in one bucket: split the range
  // again, linearly over its own weights, until it is small or all tied.
  while (hi - lo > kRefineAbove) {
    float w_min = candidates[lo].weight;
    float w_max = candidates[lo].weight;
    for (size_t i = lo; i < hi; ++i) {
      w_min = std::min(w_min, candidates[i].weight);
      w_max = std::max(w_max, candidates[i].weight);
    }
    if (w_min == w_max) {
      // All tied: best first is id order, which stable partitioning has kept.
      for (size_t i = lo; i < hi; ++i) {
        in_mass += candidates[i].weight;
        if (in_mass >= needed) return i + 1;
      }
      return hi;
    }
    const float scale = static_cast<float>(kNumSubBuckets) / (w_max - w_min);
    if (!std::isfinite(scale)) break;
    const auto sub_bucket = [w_max, scale](float w) {  // 0 holds the largest weights
      return std::min(kNumSubBuckets - 1, static_cast<int>((w_max - w) * scale));
    };
    std::array<double, kNumSubBuckets> sub_mass{};
    for (size_t i = lo; i < hi; ++i)
      sub_mass[sub_bucket(candidates[i].weight)] += candidates[i].weight;
    int boundary = 0;
    double better = 0.0;
    for (; boundary < kNumSubBuckets - 1; ++boundary) {
      if (in_mass + better + sub_mass[boundary] >= needed) break;
      better += sub_mass[boundary];
    }
    const auto in = std::stable_partition(first + lo, first + hi, [&](const WeightedId& c) {
      return sub_bucket(c.weight) < boundary;
    });
    const auto undecided_end = std::stable_partition(
        in, first + hi, [&](const WeightedId& c) { return sub_bucket(c.weight) == boundary; });
    in_mass += better;
    lo = static_cast<size_t>(in - first);
    hi = static_cast<size_t>(undecided_end - first);
  }

  // Bisect on position with nth_element (expected O(n)), then sort the last few.
  while (hi - lo > kSortBelow) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(first + lo, first + mid, first + hi, BetterWeight);
    double upper = 0.0;
    for (size_t i = lo; i < mid; ++i) upper += candidates[i].weight;
    if (in_mass + upper >= needed) {
      hi = mid;
    } else {
      in_mass += upper;
      lo = mid;
    }
  }
  std::sort(first + lo, first + hi, BetterWeight);
  for (size_t i = lo; i < hi; ++i) {
    in_mass += candidates[i].weight;
    if (in_mass >= needed) return i + 1;
  }
  return hi;
}

}  // namespace

absl::Status SamplingParams::Validate(int32_t vocab_size) const {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size must be > 0, got ", vocab_size));
  }
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be >= 0 (0 disables it), got ", top_k));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  // Every field but top_k's upper end is checked without the vocabulary size.
  const absl::Status status = params.Validate(std::numeric_limits<int32_t>::max());
  CHECK(status.ok()) << "Sampler built from unvalidated SamplingParams: " << status.ToString();
  if (params.seed.has_value()) {
    rng_.seed(*params.seed);
  } else {
    std::random_device device;
    std::seed_seq seq{device(), device(), device(), device()};
    rng_.seed(seq);
  }
}

double Sampler::Uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int32_t ArgMax(absl::Span<const float> logits) {
  // Max first, in eight lanes GCC turns into vmaxps (`x > m ? x : m` skips NaN), then the
  // first index holding it.
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float lane_max[8] = {kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf};
  const size_t n = logits.size();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float x = logits[i + j];
      lane_max[j] = x > lane_max[j] ? x : lane_max[j];
    }
  }
  float max_logit = kNegInf;
  for (; i < n; ++i) max_logit = logits[i] > max_logit ? logits[i] : max_logit;
  for (const float m : lane_max) max_logit = m > max_logit ? m : max_logit;
  for (i = 0; i < n; ++i) {
    if (logits[i] == max_logit) return static_cast<int32_t>(i);
  }
  return 0;  // every logit is NaN
}

bool Sampler::greedy() const { return params_.temperature < kMinTemperature || params_.top_k == 1; }

void Sampler::SkipSample() {
  if (params_.temperature < kMinTemperature || params_.top_k == 1) return;
  rng_();
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  CHECK(!logits.empty()) << "Sample with an empty logits vector";
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (params_.temperature < kMinTemperature || params_.top_k == 1) return ArgMax(logits);
  const int32_t best = ArgMax(logits);
  const float max_logit = logits[best];
  // All NaN / -inf, or a +inf logit: nothing to weigh, the top token is the answer.
  if (!std::isfinite(max_logit)) return best;
  if (params_.top_k > 0 && params_.top_k < vocab) return SampleTopK(logits, max_logit);
  if (params_.top_p < 1.0f) return SampleTopP(logits, max_logit);
  return SampleFull(logits, max_logit);
}

int32_t Sampler::SampleFull(absl::Span<const float> logits, float max_logit) {
  const float inv_t = 1.0f / params_.temperature;
  std::vector<float>& weights = WeightScratch(logits.size());
  ComputeWeights(logits, max_logit, inv_t, weights.data());
  const double total = Sum(weights.data(), weights.size());
  const double target = Uniform() * total;
  double cumulative = 0.0;
  int32_t last_positive = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] <= 0.0f) continue;
    cumulative += weights[i];
    last_positive = static_cast<int32_t>(i);
    if (cumulative > target) return last_positive;
  }
  return last_positive;  // rounding left `target` at the very end of the mass
}

int32_t Sampler::SampleTopK(absl::Span<const float> logits, float max_logit) {
  const size_t k = static_cast<size_t>(params_.top_k);
  // Keep the k best in a heap whose front is the worst of them: one pass, O(V log k).
  // Once the heap is full, a group of 8 tokens whose best is below the front is skipped
  // with one comparison (the group max vectorizes), so most of the vocabulary costs little.
  thread_local std::vector<Candidate> heap;  // [top_k]
  heap.clear();
  const auto offer = [&](size_t i) {
    const Candidate c{logits[i], static_cast<int32_t>(i)};
    if (std::isnan(c.logit)) return;
    if (heap.size() < k) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), Better);
    } else if (Better(c, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), Better);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), Better);
    }
  };
  const size_t n = logits.size();
  size_t group = 0;
  for (; group + 8 <= n; group += 8) {
    float group_max = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < 8; ++j) {
      const float x = logits[group + j];
      group_max = x > group_max ? x : group_max;  // skips NaN
    }
    if (heap.size() == k && group_max < heap.front().logit) continue;
    for (int j = 0; j < 8; ++j) offer(group + j);
  }
  for (; group < n; ++group) offer(group);
  std::sort_heap(heap.begin(), heap.end(), Better);  // best first

  const float inv_t = 1.0f / params_.temperature;
  std::vector<float>& weights = WeightScratch(heap.size());
  double total = 0.0;
  for (size_t i = 0; i < heap.size(); ++i) {
    weights[i] = ExpNonPositive((heap[i].logit - max_logit) * inv_t);
    total += weights[i];
  }
  // Top-p over the renormalized top-k distribution: the smallest best-first prefix whose
  // mass reaches top_p, at least one token.
  size_t kept = heap.size();
  double kept_mass = total;
  if (params_.top_p < 1.0f) {
    const double needed = static_cast<double>(params_.top_p) * total;
    double cumulative = 0.0;
    for (size_t i = 0; i < heap.size(); ++i) {
      cumulative += weights[i];
      if (cumulative >= needed) {
        kept = i + 1;
        kept_mass = cumulative;
        break;
      }
    }
  }
  const double target = Uniform() * kept_mass;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += weights[i];
    if (cumulative > target) return heap[i].id;
  }
  return heap[0].id;  // only reached through rounding with zero weights at the end
}

int32_t Sampler::SampleTopP(absl::Span<const float> logits, float max_logit) {
  // The weights and a histogram of their mass over log-weight buckets (1/16 nat wide): the
  // bucket where the best-first mass crosses top_p is the only one that needs
  // ordering. Everything above it is in the nucleus, everything below is out. O(vocab)
  // and no vocabulary-sized sort, whatever the shape of the distribution.
  const float inv_t = 1.0f / params_.temperature;
  std::vector<float>& weights = WeightScratch(logits.size());
  thread_local std::vector<uint16_t> bucket_of;  // [vocab]
  bucket_of.resize(logits.size());
  ComputeWeights(logits, max_logit, inv_t, weights.data());
  const double total = Sum(weights.data(), weights.size());
  std::array<double, kNumBuckets> bucket_mass{};
  for (size_t i = 0; i < logits.size(); ++i) {
    const float x = (logits[i] - max_logit) * inv_t;  // log of the relative weight, <= 0
    // NOTE: `x > bound` is false for NaN, so NaN logits (weight 0) go to the last bucket.
    const int bucket = x > -static_cast<float>(kNumBuckets - 1) / kBucketsPerNat
                           ? std::min(kNumBuckets - 1, static_cast<int>(-x * kBucketsPerNat))
                           : kNumBuckets - 1;
    bucket_of[i] = static_cast<uint16_t>(bucket);
    bucket_mass[bucket] += weights[i];
  }
  const double needed = static_cast<double>(params_.top_p) * total;

  int boundary = 0;
  double above = 0.0;  // mass of the buckets before `boundary`
  for (; boundary < kNumBuckets - 1; ++boundary) {
    if (above + bucket_mass[boundary] >= needed) break;
    above += bucket_mass[boundary];
  }

  thread_local std::vector<WeightedId> candidates;  // [tokens in the boundary bucket]
  candidates.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (bucket_of[i] == boundary && weights[i] > 0.0f) {
      candidates.push_back({weights[i], static_cast<int32_t>(i)});
    }
  }

  const size_t cut = NucleusEnd(candidates, above, needed);

  // Draw over the nucleus: the buckets above the boundary in id order, then the kept
  // part of the boundary bucket.
  double kept_mass = above;
  for (size_t i = 0; i < cut; ++i) kept_mass += candidates[i].weight;
  const double target = Uniform() * kept_mass;
  double cumulative = 0.0;
  int32_t last = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (bucket_of[i] < boundary && weights[i] > 0.0f) {
      cumulative += weights[i];
      last = static_cast<int32_t>(i);
      if (cumulative > target) return last;
    }
  }
  for (size_t i = 0; i < cut; ++i) {
    cumulative += candidates[i].weight;
    last = candidates[i].id;
    if (cumulative > target) return last;
  }
  CHECK_GE(last, 0) << "empty nucleus (max logit " << max_logit << ")";
  return last;  // rounding left `target` at the very end of the mass
}

}  // namespace tandem
