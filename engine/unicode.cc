#include "engine/unicode.h"

#include <array>

namespace tandem {
namespace {

using unicode_internal::CodepointRange;

bool InRanges(char32_t cp, const CodepointRange* ranges, int count) {
  int lo = 0;
  int hi = count - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    if (cp < ranges[mid].first) {
      hi = mid - 1;
    } else if (cp > ranges[mid].last) {
      lo = mid + 1;
    } else {
      return true;
    }
  }
  return false;
}

struct ByteMaps {
  std::array<char32_t, 256> to_unicode;
  std::array<int16_t, 0x144> to_byte;  // indexed by code point; -1 where unmapped
};

const ByteMaps& GetByteMaps() {
  static const ByteMaps maps = [] {
    ByteMaps m;
    m.to_byte.fill(-1);
    int next_extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      m.to_unicode[b] = printable ? static_cast<char32_t>(b) : 0x100 + next_extra++;
      m.to_byte[m.to_unicode[b]] = static_cast<int16_t>(b);
    }
    return m;
  }();
  return maps;
}

}  // namespace

bool IsLetter(char32_t cp) {
  return InRanges(cp, unicode_internal::kLetterRanges, unicode_internal::kNumLetterRanges);
}

bool IsNumber(char32_t cp) {
  return InRanges(cp, unicode_internal::kNumberRanges, unicode_internal::kNumNumberRanges);
}

bool IsWhitespace(char32_t cp) {
  return InRanges(cp, unicode_internal::kWhitespaceRanges, unicode_internal::kNumWhitespaceRanges);
}

CodepointClass ClassifyCodepoint(char32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CodepointClass::kLetter;
    if (cp >= '0' && cp <= '9') return CodepointClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CodepointClass::kWhitespace;
    return CodepointClass::kOther;
  }
  if (IsLetter(cp)) return CodepointClass::kLetter;
  if (IsNumber(cp)) return CodepointClass::kNumber;
  if (IsWhitespace(cp)) return CodepointClass::kWhitespace;
  return CodepointClass::kOther;
}

Utf8Step DecodeUtf8Step(std::string_view s) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(0);
  if (lead < 0x80) return {Utf8Step::Kind::kValid, 1, lead};
  int length = 0;
  uint8_t second_lo = 0x80;
  uint8_t second_hi = 0xBF;
  char32_t cp = 0;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    cp = lead & 0x0F;
    if (lead == 0xE0) second_lo = 0xA0;  // no overlongs
    if (lead == 0xED) second_hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    cp = lead & 0x07;
    if (lead == 0xF0) second_lo = 0x90;  // no overlongs
    if (lead == 0xF4) second_hi = 0x8F;  // at most U+10FFFF
  } else {
    return {Utf8Step::Kind::kInvalid, 1, 0};
  }
  for (int i = 1; i < length; ++i) {
    if (static_cast<size_t>(i) >= s.size()) {
      return {Utf8Step::Kind::kIncomplete, i, 0};
    }
    const uint8_t lo = i == 1 ? second_lo : 0x80;
    const uint8_t hi = i == 1 ? second_hi : 0xBF;
    if (byte(i) < lo || byte(i) > hi) return {Utf8Step::Kind::kInvalid, i, 0};
    cp = (cp << 6) | (byte(i) & 0x3F);
  }
  return {Utf8Step::Kind::kValid, length, cp};
}

bool IsValidUtf8(std::string_view s) {
  while (!s.empty()) {
    const Utf8Step step = DecodeUtf8Step(s);
    if (step.kind != Utf8Step::Kind::kValid) return false;
    s.remove_prefix(step.length);
  }
  return true;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  while (!bytes.empty()) {
    const Utf8Step step = DecodeUtf8Step(bytes);
    if (step.kind == Utf8Step::Kind::kValid) {
      out->append(bytes.substr(0, step.length));
    } else {
      AppendUtf8(kReplacementCharacter, out);
    }
    bytes.remove_prefix(step.length);
  }
}

char32_t ByteToUnicode(uint8_t byte) { return GetByteMaps().to_unicode[byte]; }

int UnicodeToByte(char32_t cp) {
  const ByteMaps& maps = GetByteMaps();
  return cp < maps.to_byte.size() ? maps.to_byte[cp] : -1;
}

bool ByteLevelDecode(std::string_view text, std::string* out) {
  std::string decoded;
  decoded.reserve(text.size());
  while (!text.empty()) {
    const Utf8Step step = DecodeUtf8Step(text);
    if (step.kind != Utf8Step::Kind::kValid) return false;
    const int byte = UnicodeToByte(step.codepoint);
    if (byte < 0) return false;
    decoded.push_back(static_cast<char>(byte));
    text.remove_prefix(step.length);
  }
  out->append(decoded);
  return true;
}

std::string ByteLevelEncode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) AppendUtf8(ByteToUnicode(static_cast<uint8_t>(c)), &out);
  return out;
}

}  // namespace tandem
