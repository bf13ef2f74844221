// Turns a stream of token ids into a stream of valid UTF-8 text. A token may end inside a
// multi-byte character (byte-level BPE splits rare characters across tokens), so the
// bytes of an incomplete trailing sequence are held back until they complete. Bytes that
// can no longer become valid UTF-8 come out as U+FFFD, one per maximal invalid subpart,
// exactly as Tokenizer::Decode() writes them: the concatenation of every Push() and the
// final Flush() equals Decode() of all the ids.
//
// One per sequence; not thread-safe. The Tokenizer must outlive it.
#ifndef TANDEM_ENGINE_INCREMENTAL_DETOKENIZER_H_
#define TANDEM_ENGINE_INCREMENTAL_DETOKENIZER_H_

#include <cstdint>
#include <string>

#include "engine/tokenizer.h"

namespace tandem {

struct IncrementalDetokenizerOptions {
  // Control tokens (<|im_end|>, ...) add no text; as Decode(ids, skip_special).
  bool skip_special = false;
};

class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer,
                                  IncrementalDetokenizerOptions options = {});

  // Adds one token; returns the text it completes (often empty for a partial character).
  std::string Push(int32_t id);
  // Ends the stream: returns what was held back (a truncated sequence becomes U+FFFD)
  // and resets, so the object can start a new stream.
  std::string Flush();

  // Bytes held back, awaiting the rest of a character (at most 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  IncrementalDetokenizerOptions options_;
  std::string pending_;  // a valid prefix of one UTF-8 sequence, possibly empty
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_INCREMENTAL_DETOKENIZER_H_
