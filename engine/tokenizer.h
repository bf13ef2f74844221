// Byte-level BPE tokenizer (the GPT-2 family: `tokenizer.ggml.model = gpt2`), built from
// GGUF metadata or from plain data. Pre-tokenizers: "smollm" (every \p{N} split off on its
// own, then the GPT-2 pattern; SmolLM2, StarCoder) and "gpt2" (the GPT-2 pattern alone).
//
// A Tokenizer is immutable once built: every method is const and thread-safe.
#ifndef TANDEM_ENGINE_TOKENIZER_H_
#define TANDEM_ENGINE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/gguf_file.h"

namespace tandem {

// Values of `tokenizer.ggml.token_type` (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <|im_start|>, <|endoftext|>: only from text with parse_special
  kUserDefined = 4,  // always matched as a whole in text
  kUnused = 5,
  kByte = 6,  // "<0x0A>"
};

enum class PreTokenizerKind { kSmolLm, kGpt2 };

// Everything a Tokenizer is built from; the GGUF keys are named per field.
struct TokenizerData {
  std::string model = "gpt2";        // tokenizer.ggml.model
  std::string pre = "smollm";        // tokenizer.ggml.pre
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens, byte-level text
  std::vector<std::string> merges;   // tokenizer.ggml.merges, "left right", by rank
  std::vector<int32_t> token_types;  // tokenizer.ggml.token_type; empty: all normal
  int32_t bos_id = -1;               // tokenizer.ggml.bos_token_id (-1: none)
  int32_t eos_id = -1;               // tokenizer.ggml.eos_token_id
  int32_t eot_id = -1;               // tokenizer.ggml.eot_token_id
  int32_t unk_id = -1;               // tokenizer.ggml.unknown_token_id
  int32_t pad_id = -1;               // tokenizer.ggml.padding_token_id
  bool add_bos = false;              // tokenizer.ggml.add_bos_token
};

class Tokenizer {
 public:
  // Reads the tokenizer.ggml.* keys. The model must be "gpt2" and the pre-tokenizer one of
  // the kinds above (or absent, read as "gpt2"); anything else is UNIMPLEMENTED, naming it.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& gguf);
  // The tokenizer.ggml.* keys as data (copies; nothing is validated beyond types).
  static absl::StatusOr<TokenizerData> DataFromGguf(const GgufFile& gguf);
  // INVALID_ARGUMENT for an inconsistent vocabulary (a merge naming unknown tokens, an id
  // out of range, a bad token type) or no tokens at all. Of duplicate texts the first wins.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromData(TokenizerData data);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Never adds BOS/EOS: callers prepend bos_id() when add_bos(). With `parse_special`,
  // control-token texts in `text` (e.g. "<|im_start|>") become their ids; without it they
  // are encoded as plain text. User-defined tokens are always matched. Any bytes are
  // accepted: bytes that are not valid UTF-8 become their byte tokens. NOTE: a byte whose
  // byte token the vocabulary lacks is dropped, as Hugging Face and llama.cpp do (SmolLM2
  // lacks 21, e.g. 0x04 and 0xC0); CanRoundTrip() tells whether that happens.
  std::vector<int32_t> Encode(std::string_view text, bool parse_special) const;

  // The text of `ids` as valid UTF-8: invalid or truncated sequences become U+FFFD (as in
  // Hugging Face's decode). Control tokens are written as their text unless
  // `skip_special`. Ids outside [0, vocab_size()) decode to nothing.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;
  // The raw bytes, without the UTF-8 repair.
  std::string DecodeBytes(absl::Span<const int32_t> ids, bool skip_special = false) const;

  // True when Encode() keeps every byte of `text` (see the note on Encode).
  bool CanRoundTrip(std::string_view text) const;

  // The token's vocabulary text (byte-level form, e.g. "Ġworld"); "" out of range.
  std::string_view TokenText(int32_t id) const;
  // The bytes the token decodes to (e.g. " world"); "" out of range.
  std::string_view TokenBytes(int32_t id) const;
  TokenType token_type(int32_t id) const;
  bool IsControl(int32_t id) const { return token_type(id) == TokenType::kControl; }
  // The id of a vocabulary text (byte-level form), or -1.
  int32_t TokenId(std::string_view text) const;

  // End of generation: eos, eot, and the control tokens <|im_end|>, <|endoftext|>,
  // <|eot_id|>, <|end|>, <end_of_turn> where the vocabulary has them.
  bool IsEog(int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  bool add_bos() const { return add_bos_; }
  PreTokenizerKind pre_tokenizer() const { return pre_; }

 private:
  struct Token {
    std::string text;   // vocabulary form
    std::string bytes;  // decoded form
    TokenType type = TokenType::kNormal;
  };
  struct Merge {
    int32_t rank;
    int32_t result;
  };

  Tokenizer() = default;

  // Appends the ids of `text`, which holds no special tokens.
  void EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const;
  // Appends the BPE ids of one pre-token.
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  PreTokenizerKind pre_ = PreTokenizerKind::kSmolLm;
  std::vector<Token> tokens_;                                  // [vocab_size]
  absl::flat_hash_map<std::string_view, int32_t> text_to_id_;  // keys view tokens_
  absl::flat_hash_map<uint64_t, Merge> merges_;                // PairKey(left, right)
  std::array<int32_t, 256> byte_token_{};                      // -1 where absent
  // Specials matched in text, by first byte, longest first: {id, parse_special only}.
  std::array<std::vector<std::pair<int32_t, bool>>, 256> specials_by_first_byte_;
  std::vector<bool> is_eog_;  // [vocab_size]
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = -1;
  int32_t pad_id_ = -1;
  bool add_bos_ = false;
};

}  // namespace tandem

#endif  // TANDEM_ENGINE_TOKENIZER_H_
