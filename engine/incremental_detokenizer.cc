#include "engine/incremental_detokenizer.h"

#include "engine/unicode.h"

namespace tandem {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer,
                                               IncrementalDetokenizerOptions options)
    : tokenizer_(tokenizer), options_(options) {}

std::string IncrementalDetokenizer::Push(int32_t id) {
  if (options_.skip_special && tokenizer_.IsControl(id)) return "";
  pending_.append(tokenizer_.TokenBytes(id));
  std::string out;
  std::string_view rest = pending_;
  while (!rest.empty()) {
    const Utf8Step step = DecodeUtf8Step(rest);
    if (step.kind == Utf8Step::Kind::kIncomplete) break;  // may still complete
    if (step.kind == Utf8Step::Kind::kValid) {
      out.append(rest.substr(0, step.length));
    } else {
      AppendUtf8(kReplacementCharacter, &out);
    }
    rest.remove_prefix(step.length);
  }
  pending_.erase(0, pending_.size() - rest.size());
  return out;
}

std::string IncrementalDetokenizer::Flush() {
  std::string out;
  AppendUtf8Lossy(pending_, &out);
  pending_.clear();
  return out;
}

}  // namespace tandem
