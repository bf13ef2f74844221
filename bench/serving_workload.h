// The requests of `tandem bench serve`: prompts of exact token counts built from ordinary
// text tokens, output lengths, and the arrival schedule. Everything is a function of the
// seed and the request's index, so two runs (say collocated and disaggregated) with the same
// flags send the same requests.
#ifndef TANDEM_BENCH_SERVING_WORKLOAD_H_
#define TANDEM_BENCH_SERVING_WORKLOAD_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace tandem::bench {

struct WorkloadOptions {
  // Uniform in [min, max], both ends included.
  int prompt_tokens_min = 512;
  int prompt_tokens_max = 512;
  int output_tokens_min = 128;
  int output_tokens_max = 128;
  // The first round(ratio * prompt_tokens) tokens of every prompt are a prefix of one common
  // sequence; the rest is the request's own.
  double shared_prefix_ratio = 0.0;
  uint64_t seed = 1;
};

struct RequestSpec {
  int64_t index = 0;             // >= 0 measured, < 0 warmup
  std::vector<int32_t> prompt;   // [prompt_tokens]
  int output_tokens = 0;         // max_tokens, with ignore_eos: the exact output length
  int shared_prefix_tokens = 0;  // how many of prompt's first tokens are the common prefix
};

class ServingWorkload {
 public:
  // Tokenizes the built-in English text; INVALID_ARGUMENT for inconsistent options.
  static absl::StatusOr<ServingWorkload> Create(const Tokenizer& tokenizer,
                                                const WorkloadOptions& options);

  // Deterministic in (seed, index); const, so any thread may call it.
  RequestSpec Make(int64_t index) const;

  const WorkloadOptions& options() const { return options_; }
  int text_tokens() const { return static_cast<int>(text_.size()); }

 private:
  ServingWorkload() = default;

  // Appends `n` tokens: the built-in text from random offsets, in runs of 16-128 tokens.
  void AppendText(int n, std::mt19937_64& rng, std::vector<int32_t>* out) const;

  WorkloadOptions options_;
  std::vector<int32_t> text_;           // the built-in text, tokenized, normal tokens only
  std::vector<int32_t> vocab_;          // text_'s distinct tokens
  std::vector<int32_t> shared_prefix_;  // [round(ratio * prompt_tokens_max)]
};

// Poisson arrivals: the first at 0, then exponential gaps of mean 1/rate (seconds).
class PoissonArrivals {
 public:
  PoissonArrivals(double rate, uint64_t seed);
  // The next arrival time in seconds from the start.
  double Next();

 private:
  std::mt19937_64 rng_;
  std::exponential_distribution<double> gap_;
  double next_ = 0.0;
};

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_SERVING_WORKLOAD_H_
