// Encodes and decodes arbitrary bytes. Checks: nothing crashes; every id is in the
// vocabulary; DecodeBytes(Encode(x)) == x whenever the vocabulary has a token for every
// byte of x (so Decode(Encode(x)) == x for valid UTF-8 x); Decode() is valid UTF-8; and the
// incremental detokenizer streams exactly Decode() for the same ids, including for
// arbitrary id sequences taken from the input.
//
// The tokenizer is the default model's ($TANDEM_TEST_MODEL, else
// $TANDEM_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf with TANDEM_HOME defaulting to
// ~/.cache/tandem), or a small built-in vocabulary when that file is missing.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/gguf_file.h"
#include "engine/incremental_detokenizer.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"

namespace tandem {
namespace {

std::string ModelPath() {
  if (const char* path = std::getenv("TANDEM_TEST_MODEL"); path != nullptr && *path != '\0') {
    return path;
  }
  std::string home;
  if (const char* env = std::getenv("TANDEM_HOME"); env != nullptr && *env != '\0') {
    home = env;
  } else {
    const char* user_home = std::getenv("HOME");
    home = std::string(user_home != nullptr ? user_home : "") + "/.cache/tandem";
  }
  return home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// Byte tokens (all but 0xFF, to exercise dropped bytes), some merges, control tokens.
TokenizerData SyntheticData() {
  TokenizerData data;
  for (int b = 0; b < 255; ++b) data.tokens.push_back(ByteLevelEncode(std::string(1, b)));
  for (const char* merge : {"Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ Ġ", "ĠĠ Ġ", "Ã ©",
                            "ä ¸", "ä¸ Ń", "ð Ł", "' s", "Ċ Ċ"}) {
    std::string_view m = merge;
    const size_t space = m.find(' ');
    data.tokens.push_back(std::string(m.substr(0, space)) + std::string(m.substr(space + 1)));
    data.merges.push_back(merge);
  }
  data.token_types.assign(data.tokens.size(), 1);
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    data.tokens.push_back(special);
    data.token_types.push_back(3);
  }
  data.eos_id = static_cast<int32_t>(data.tokens.size()) - 1;
  return data;
}

const Tokenizer& GetTokenizer() {
  static const Tokenizer* tokenizer = [] {
    std::unique_ptr<Tokenizer> tok;
    if (auto gguf = GgufFile::Open(ModelPath()); gguf.ok()) {
      if (auto loaded = Tokenizer::FromGguf(**gguf); loaded.ok()) tok = std::move(*loaded);
    }
    if (tok == nullptr) {
      std::fprintf(stderr, "tokenizer_fuzzer: %s unavailable, using a synthetic vocabulary\n",
                   ModelPath().c_str());
      auto synthetic = Tokenizer::FromData(SyntheticData());
      if (!synthetic.ok()) std::abort();
      tok = std::move(*synthetic);
    }
    return tok.release();
  }();
  return *tokenizer;
}

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "tokenizer_fuzzer: check failed: %s\n", what);
    std::abort();
  }
}

void CheckStreaming(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  IncrementalDetokenizer detok(tok, {.skip_special = skip_special});
  std::string streamed;
  for (const int32_t id : ids) {
    const std::string piece = detok.Push(id);
    Check(IsValidUtf8(piece), "a streamed piece is valid UTF-8");
    Check(detok.pending_bytes() <= 3, "at most 3 bytes held back");
    streamed += piece;
  }
  streamed += detok.Flush();
  Check(streamed == tok.Decode(ids, skip_special), "streamed text == Decode(ids)");
}

}  // namespace
}  // namespace tandem

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tandem;  // NOLINT
  const Tokenizer& tok = GetTokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const bool parse_special : {false, true}) {
    const std::vector<int32_t> ids = tok.Encode(text, parse_special);
    for (const int32_t id : ids) Check(id >= 0 && id < tok.vocab_size(), "id in vocabulary");
    if (tok.CanRoundTrip(text)) {
      Check(tok.DecodeBytes(ids) == text, "DecodeBytes(Encode(x)) == x");
      if (IsValidUtf8(text)) Check(tok.Decode(ids) == text, "Decode(Encode(x)) == x");
    }
    const std::string decoded = tok.Decode(ids);
    Check(IsValidUtf8(decoded), "Decode() is valid UTF-8");
    CheckStreaming(tok, ids, /*skip_special=*/false);
    CheckStreaming(tok, ids, /*skip_special=*/true);
  }
  // The input as arbitrary ids (little-endian int16, so some fall outside the vocabulary).
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < size; i += 2) {
    ids.push_back(static_cast<int16_t>(data[i] | (data[i + 1] << 8)) % (tok.vocab_size() + 8));
  }
  CheckStreaming(tok, ids, /*skip_special=*/false);
  return 0;
}
