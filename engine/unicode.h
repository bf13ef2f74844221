// UTF-8 decoding and the few Unicode properties byte-level BPE tokenizers need: the
// classes behind \p{L}, \p{N} and \s, and GPT-2's byte <-> printable-character mapping.
// All functions are pure and thread-safe.
#ifndef TANDEM_ENGINE_UNICODE_H_
#define TANDEM_ENGINE_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tandem {

inline constexpr char32_t kReplacementCharacter = 0xFFFD;

// The character classes of the GPT-2 pre-tokenizer pattern. kOther is everything else
// (punctuation, symbols, controls, and bytes that are not valid UTF-8).
enum class CodepointClass : uint8_t { kLetter, kNumber, kWhitespace, kOther };

CodepointClass ClassifyCodepoint(char32_t cp);
bool IsLetter(char32_t cp);      // \p{L}
bool IsNumber(char32_t cp);      // \p{N}
bool IsWhitespace(char32_t cp);  // White_Space, which is what \s matches in Oniguruma

// One step of strict UTF-8 decoding (RFC 3629: no overlongs, no surrogates, at most
// U+10FFFF).
struct Utf8Step {
  enum class Kind : uint8_t {
    kValid,       // `length` bytes encode `codepoint`
    kInvalid,     // the first `length` bytes are a maximal invalid subpart (one U+FFFD)
    kIncomplete,  // all `length` remaining bytes are a valid but truncated sequence
  };
  Kind kind;
  int length;          // >= 1
  char32_t codepoint;  // only for kValid
};

// Decodes the sequence at the start of `s` (which must not be empty).
Utf8Step DecodeUtf8Step(std::string_view s);

bool IsValidUtf8(std::string_view s);
void AppendUtf8(char32_t cp, std::string* out);

// Appends `bytes` to `out`, replacing each maximal invalid subpart (and a truncated
// sequence at the end) with U+FFFD, as Python's errors="replace" and Rust's
// from_utf8_lossy do.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

// GPT-2's byte-level mapping: every byte to a printable code point (0x21..0x7E, 0xA1..0xAC
// and 0xAE..0xFF map to themselves; the other 68 bytes to U+0100..U+0143).
char32_t ByteToUnicode(uint8_t byte);
// The inverse; -1 for a code point no byte maps to.
int UnicodeToByte(char32_t cp);
// Decodes a byte-level token text to its bytes; false (out untouched) when `text` is not
// valid UTF-8 or holds a code point outside the mapping.
bool ByteLevelDecode(std::string_view text, std::string* out);
std::string ByteLevelEncode(std::string_view bytes);

namespace unicode_internal {

struct CodepointRange {
  uint32_t first;
  uint32_t last;  // inclusive
};

// Sorted, disjoint; defined in the generated unicode_data.cc.
extern const CodepointRange kLetterRanges[];
extern const int kNumLetterRanges;
extern const CodepointRange kNumberRanges[];
extern const int kNumNumberRanges;
extern const CodepointRange kWhitespaceRanges[];
extern const int kNumWhitespaceRanges;

}  // namespace unicode_internal
}  // namespace tandem

#endif  // TANDEM_ENGINE_UNICODE_H_
