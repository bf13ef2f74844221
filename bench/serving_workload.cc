#include "bench/serving_workload.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "absl/strings/str_format.h"

namespace tandem::bench {
namespace {

// Plain English prose (written for this benchmark), the source of every prompt token.
constexpr std::string_view kText = R"(The river town woke slowly on market days. Before the
sun cleared the hills, the baker had already pulled the first loaves from the oven, and the
smell of warm bread drifted down the narrow street toward the water. Fishermen coiled their
ropes and argued about the weather, as they did every morning, though none of them had ever
changed the weather by arguing. A boy on a bicycle carried newspapers from door to door,
folding each one with a quick turn of the wrist before tossing it onto a step.

By eight o'clock the square was full. Farmers set out baskets of apples, pears and late
plums; a woman from the valley sold honey in small glass jars, each labelled by hand with
the name of the field where the bees had worked. An old man repaired clocks at a folding
table, his tools laid out in a careful row, and a small crowd always gathered to watch him
open the back of a watch and coax its tiny wheels into motion again.

The teacher at the village school liked to say that a town is a kind of machine. Every
person has a part to play, she told her students, and when one part stops, the others must
work a little harder until it starts again. The children did not always believe her, but
they remembered the idea years later, when they had moved to cities and found themselves
waiting for trains that were late because somewhere, far away, a single signal had failed.

In the afternoon the wind usually turned and came from the sea. It carried salt and the cry
of gulls, and it rattled the shutters of the houses along the harbour. Sailors checked their
moorings, and the harbour master walked the length of the pier with his hands behind his
back, counting boats the way a shepherd counts sheep. If a storm was coming, he raised a red
flag on the tall white pole by the office, and everyone knew to bring their washing in.

Evenings belonged to conversation. People sat outside on wooden chairs, talking about prices
at the market, the health of their neighbours, the new road the council had promised for ten
years and never built. Someone would bring out a guitar, and someone else would complain that
he only knew three songs, and then everyone would sing all three of them anyway. The light
faded from orange to violet over the water, and one by one the windows of the town turned
gold.

Winter changed the rhythm but not the spirit of the place. The boats stayed in the harbour
for weeks at a time, and the men who sailed them mended nets in a long shed that smelled of
tar and rope. The library, a single room above the post office, became the busiest building
in town. Readers borrowed books about distant countries, about engines and gardens and the
history of the stars, and returned them with notes tucked between the pages for the next
reader to find.

Scientists who study small communities often describe them in terms of networks: who talks
to whom, who lends tools, who looks after whose children when a parent is ill. In such a
network information moves quickly, sometimes faster than any official notice could travel.
A rumour that the bridge needed repairs would reach every kitchen before the engineer had
finished writing his report. Yet the same network also absorbs shocks. When the mill closed,
families shared work and food until new jobs appeared, and the town survived a decade that
emptied many of its neighbours.

Visitors who came in summer rarely noticed any of this. They saw the painted doors, the
flowers in the window boxes, the calm water under the morning mist, and they took photographs
to show their friends at home. Some of them returned year after year, renting the same room
above the same shop, until the shopkeeper greeted them by name and asked after their
parents. A few stayed for good, learned to mend nets and bake bread, and in time became the
people that the next visitors photographed on their way to the harbour.)";

constexpr int kMinTextTokens = 256;
// The request's own part starts with this many tokens drawn from the text's vocabulary, so
// that no two requests share a KV block beyond the common prefix by chance.
constexpr int kUniqueLeadTokens = 8;

std::mt19937_64 RngFor(uint64_t seed, int64_t index, uint64_t stream) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                    static_cast<uint32_t>(static_cast<uint64_t>(index)),
                    static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32),
                    static_cast<uint32_t>(stream)};
  return std::mt19937_64(seq);
}

}  // namespace

absl::StatusOr<ServingWorkload> ServingWorkload::Create(const Tokenizer& tokenizer,
                                                        const WorkloadOptions& options) {
  if (options.prompt_tokens_min < 1 || options.prompt_tokens_min > options.prompt_tokens_max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("prompt tokens: need 1 <= min (%d) <= max (%d)", options.prompt_tokens_min,
                        options.prompt_tokens_max));
  }
  if (options.output_tokens_min < 1 || options.output_tokens_min > options.output_tokens_max) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output tokens: need 1 <= min (%d) <= max (%d)", options.output_tokens_min,
                        options.output_tokens_max));
  }
  if (!(options.shared_prefix_ratio >= 0.0 && options.shared_prefix_ratio <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--shared-prefix-ratio %g is not in [0, 1]", options.shared_prefix_ratio));
  }
  ServingWorkload workload;
  workload.options_ = options;
  for (int32_t id : tokenizer.Encode(kText, /*parse_special=*/false)) {
    if (tokenizer.token_type(id) == TokenType::kNormal) workload.text_.push_back(id);
  }
  if (workload.text_.size() < kMinTextTokens) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the built-in text gave only %d normal tokens with this tokenizer", workload.text_.size()));
  }
  workload.vocab_ = workload.text_;
  std::sort(workload.vocab_.begin(), workload.vocab_.end());
  workload.vocab_.erase(std::unique(workload.vocab_.begin(), workload.vocab_.end()),
                        workload.vocab_.end());
  const int prefix_max =
      static_cast<int>(std::lround(options.shared_prefix_ratio * options.prompt_tokens_max));
  std::mt19937_64 rng = RngFor(options.seed, 0, /*stream=*/1);
  workload.AppendText(prefix_max, rng, &workload.shared_prefix_);
  return workload;
}

void ServingWorkload::AppendText(int n, std::mt19937_64& rng, std::vector<int32_t>* out) const {
  std::uniform_int_distribution<size_t> offset(0, text_.size() - 1);
  std::uniform_int_distribution<int> run(16, 128);
  while (n > 0) {
    const size_t begin = offset(rng);
    const int take = std::min({n, run(rng), static_cast<int>(text_.size() - begin)});
    out->insert(out->end(), text_.begin() + begin, text_.begin() + begin + take);
    n -= take;
  }
}

RequestSpec ServingWorkload::Make(int64_t index) const {
  std::mt19937_64 rng = RngFor(options_.seed, index, /*stream=*/2);
  RequestSpec spec;
  spec.index = index;
  const int prompt_tokens = std::uniform_int_distribution<int>(options_.prompt_tokens_min,
                                                               options_.prompt_tokens_max)(rng);
  spec.output_tokens = std::uniform_int_distribution<int>(options_.output_tokens_min,
                                                          options_.output_tokens_max)(rng);
  spec.shared_prefix_tokens = std::min(
      prompt_tokens, static_cast<int>(std::lround(options_.shared_prefix_ratio * prompt_tokens)));
  spec.prompt.reserve(prompt_tokens);
  spec.prompt.assign(shared_prefix_.begin(), shared_prefix_.begin() + spec.shared_prefix_tokens);
  std::uniform_int_distribution<size_t> pick(0, vocab_.size() - 1);
  const int own = prompt_tokens - spec.shared_prefix_tokens;
  for (int i = 0; i < std::min(own, kUniqueLeadTokens); ++i)
    spec.prompt.push_back(vocab_[pick(rng)]);
  AppendText(own - std::min(own, kUniqueLeadTokens), rng, &spec.prompt);
  return spec;
}

PoissonArrivals::PoissonArrivals(double rate, uint64_t seed)
    : rng_(RngFor(seed, 0, /*stream=*/3)), gap_(rate) {}

double PoissonArrivals::Next() {
  const double t = next_;
  next_ += gap_(rng_);
  return t;
}

}  // namespace tandem::bench
