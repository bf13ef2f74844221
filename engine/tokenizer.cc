#include "engine/tokenizer.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/unicode.h"

namespace tandem {
namespace {

// One decoded character of a text segment; invalid UTF-8 bytes are kOther characters.
struct Char {
  uint32_t pos;  // byte offset in the segment
  uint32_t len;  // bytes
  char32_t cp;   // 0xFFFFFFFF for invalid bytes
  CodepointClass cls;
};

constexpr char32_t kNoCodepoint = 0xFFFFFFFF;

// NOTE: Debian's abseil is built with its own string_view (ABSL_OPTION_USE_STD_STRING_VIEW
// is 0), so std::string_view must be converted for StrCat.
absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::vector<Char> DecodeChars(std::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Step step = DecodeUtf8Step(text.substr(pos));
    if (step.kind == Utf8Step::Kind::kValid) {
      chars.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(step.length),
                       step.codepoint, ClassifyCodepoint(step.codepoint)});
    } else {
      chars.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(step.length), kNoCodepoint,
                       CodepointClass::kOther});
    }
    pos += step.length;
  }
  return chars;
}

// Splits chars[begin, end) with the GPT-2 pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// calling emit(first_char, end_char) for every match, in order.
template <typename Emit>
void SplitGpt2(const std::vector<Char>& chars, size_t begin, size_t end, Emit&& emit) {
  size_t i = begin;
  const auto run_of = [&](size_t from, CodepointClass cls) {
    while (from < end && chars[from].cls == cls) ++from;
    return from;
  };
  while (i < end) {
    const Char& c = chars[i];
    if (c.cp == '\'' && i + 1 < end) {
      const char32_t n1 = chars[i + 1].cp;
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        emit(i, i + 2);
        i += 2;
        continue;
      }
      if (i + 2 < end) {
        const char32_t n2 = chars[i + 2].cp;
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          emit(i, i + 3);
          i += 3;
          continue;
        }
      }
    }
    const size_t after_space = (c.cp == ' ' && i + 1 < end) ? i + 1 : i;
    const CodepointClass cls = chars[after_space].cls;
    if (cls != CodepointClass::kWhitespace) {
      // ` ?\p{L}+`, ` ?\p{N}+` or ` ?[^\s\p{L}\p{N}]+`.
      const size_t j = run_of(after_space, cls);
      emit(i, j);
      i = j;
      continue;
    }
    const size_t j = run_of(i, CodepointClass::kWhitespace);
    // `\s+(?!\S)` leaves the last whitespace character to prefix the next word; a single
    // whitespace character before a word falls to `\s+`.
    const size_t stop = (j == end || j - i == 1) ? j : j - 1;
    emit(i, stop);
    i = stop;
  }
}

absl::StatusOr<int32_t> OptionalId(const GgufFile& gguf, std::string_view key) {
  absl::StatusOr<int64_t> value = gguf.GetInt(key);
  if (absl::IsNotFound(value.status())) return -1;
  if (!value.ok()) return value.status();
  if (*value < -1 || *value > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(Av(key), " = ", *value, " is out of range"));
  }
  return static_cast<int32_t>(*value);
}

bool ParseByteToken(std::string_view text, std::string* out) {
  // "<0xAB>"
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return false;
  int value = 0;
  for (const char c : text.substr(3, 2)) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return false;
    }
    value = value * 16 + digit;
  }
  out->push_back(static_cast<char>(value));
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& gguf) {
  ASSIGN_OR_RETURN(TokenizerData data, DataFromGguf(gguf));
  return FromData(std::move(data));
}

absl::StatusOr<TokenizerData> Tokenizer::DataFromGguf(const GgufFile& gguf) {
  TokenizerData data;
  ASSIGN_OR_RETURN(const std::string_view model, gguf.GetString("tokenizer.ggml.model"));
  data.model = std::string(model);
  if (data.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer.ggml.model '", Av(model), "' is not supported: only byte-level BPE ('gpt2')"));
  }
  absl::StatusOr<std::string_view> pre = gguf.GetString("tokenizer.ggml.pre");
  if (!pre.ok() && !absl::IsNotFound(pre.status())) return pre.status();
  data.pre = pre.ok() ? std::string(*pre) : std::string();
  ASSIGN_OR_RETURN(const std::vector<std::string_view> tokens,
                   gguf.GetStringArray("tokenizer.ggml.tokens"));
  data.tokens.assign(tokens.begin(), tokens.end());
  ASSIGN_OR_RETURN(const std::vector<std::string_view> merges,
                   gguf.GetStringArray("tokenizer.ggml.merges"));
  data.merges.assign(merges.begin(), merges.end());
  if (gguf.Has("tokenizer.ggml.token_type")) {
    ASSIGN_OR_RETURN(const std::vector<int64_t> types,
                     gguf.GetIntArray("tokenizer.ggml.token_type"));
    data.token_types.reserve(types.size());
    for (const int64_t type : types) data.token_types.push_back(static_cast<int32_t>(type));
  }
  ASSIGN_OR_RETURN(data.bos_id, OptionalId(gguf, "tokenizer.ggml.bos_token_id"));
  ASSIGN_OR_RETURN(data.eos_id, OptionalId(gguf, "tokenizer.ggml.eos_token_id"));
  ASSIGN_OR_RETURN(data.eot_id, OptionalId(gguf, "tokenizer.ggml.eot_token_id"));
  ASSIGN_OR_RETURN(data.unk_id, OptionalId(gguf, "tokenizer.ggml.unknown_token_id"));
  ASSIGN_OR_RETURN(data.pad_id, OptionalId(gguf, "tokenizer.ggml.padding_token_id"));
  if (gguf.Has("tokenizer.ggml.add_bos_token")) {
    ASSIGN_OR_RETURN(data.add_bos, gguf.GetBool("tokenizer.ggml.add_bos_token"));
  }
  return data;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromData(TokenizerData data) {
  if (data.model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat(
        "tokenizer model '", data.model, "' is not supported: only byte-level BPE ('gpt2')"));
  }
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  if (data.pre == "smollm") {
    tok->pre_ = PreTokenizerKind::kSmolLm;
  } else if (data.pre == "gpt2") {
    tok->pre_ = PreTokenizerKind::kGpt2;
  } else {
    return absl::UnimplementedError(
        absl::StrCat("tokenizer.ggml.pre '", data.pre,
                     "' is not supported: known pre-tokenizers are 'smollm' and 'gpt2'"));
  }
  const int64_t n = static_cast<int64_t>(data.tokens.size());
  if (n == 0 || n > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("bad vocabulary size ", n));
  }
  if (!data.token_types.empty() && static_cast<int64_t>(data.token_types.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer.ggml.token_type has ", data.token_types.size(), " entries for ", n, " tokens"));
  }
  for (const auto& [name, id] :
       {std::pair{"bos", data.bos_id}, std::pair{"eos", data.eos_id}, std::pair{"eot", data.eot_id},
        std::pair{"unk", data.unk_id}, std::pair{"pad", data.pad_id}}) {
    if (id < -1 || id >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " token id ", id, " is outside the vocabulary of ", n));
    }
  }

  tok->tokens_.resize(n);
  tok->text_to_id_.reserve(n);
  for (int32_t id = 0; id < n; ++id) {
    Token& token = tok->tokens_[id];
    token.text = std::move(data.tokens[id]);
    const int32_t type = data.token_types.empty() ? 1 : data.token_types[id];
    if (type < 0 || type > 6) {
      return absl::InvalidArgumentError(absl::StrCat("token ", id, " has unknown type ", type));
    }
    token.type = static_cast<TokenType>(type);
    bool decoded = false;
    if (token.type == TokenType::kControl || token.type == TokenType::kUserDefined) {
      token.bytes = token.text;  // added tokens are stored verbatim
      decoded = true;
    } else if (token.type == TokenType::kByte) {
      decoded = ParseByteToken(token.text, &token.bytes);
    }
    if (!decoded && !ByteLevelDecode(token.text, &token.bytes)) token.bytes = token.text;
  }
  // Keys view the strings in tokens_, which no longer move. The first of duplicates wins.
  for (int32_t id = 0; id < n; ++id) tok->text_to_id_.emplace(tok->tokens_[id].text, id);

  for (int b = 0; b < 256; ++b) {
    std::string text;
    AppendUtf8(ByteToUnicode(static_cast<uint8_t>(b)), &text);
    tok->byte_token_[b] = tok->TokenId(text);
  }

  tok->merges_.reserve(data.merges.size());
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string_view merge = data.merges[rank];
    const size_t space = merge.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == merge.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " '", Av(merge), "' is not 'left right'"));
    }
    const std::string_view left = merge.substr(0, space);
    const std::string_view right = merge.substr(space + 1);
    const int32_t left_id = tok->TokenId(left);
    const int32_t right_id = tok->TokenId(right);
    const int32_t result_id = tok->TokenId(absl::StrCat(Av(left), Av(right)));
    if (left_id < 0 || right_id < 0 || result_id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge ", rank, " '", Av(merge), "' names a token not in the vocabulary"));
    }
    tok->merges_.emplace(PairKey(left_id, right_id), Merge{static_cast<int32_t>(rank), result_id});
  }

  tok->is_eog_.assign(n, false);
  for (const int32_t id : {data.eos_id, data.eot_id}) {
    if (id >= 0) tok->is_eog_[id] = true;
  }
  for (const char* text :
       {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"}) {
    const int32_t id = tok->TokenId(text);
    if (id >= 0 && tok->tokens_[id].type == TokenType::kControl) tok->is_eog_[id] = true;
  }

  for (int32_t id = 0; id < n; ++id) {
    const Token& token = tok->tokens_[id];
    const bool control = token.type == TokenType::kControl;
    if ((!control && token.type != TokenType::kUserDefined) || token.bytes.empty()) continue;
    tok->specials_by_first_byte_[static_cast<uint8_t>(token.bytes[0])].push_back({id, control});
  }
  for (auto& bucket : tok->specials_by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](const auto& a, const auto& b) {
      return tok->tokens_[a.first].bytes.size() > tok->tokens_[b.first].bytes.size();
    });
  }

  tok->bos_id_ = data.bos_id;
  tok->eos_id_ = data.eos_id;
  tok->unk_id_ = data.unk_id;
  tok->pad_id_ = data.pad_id;
  tok->add_bos_ = data.add_bos;
  return tok;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  size_t segment_start = 0;
  size_t i = 0;
  while (i < text.size()) {
    size_t matched = 0;
    for (const auto& [id, control] : specials_by_first_byte_[static_cast<uint8_t>(text[i])]) {
      if (control && !parse_special) continue;
      const std::string& bytes = tokens_[id].bytes;
      if (text.compare(i, bytes.size(), bytes) == 0) {
        EncodeSegment(text.substr(segment_start, i - segment_start), &ids);
        ids.push_back(id);
        matched = bytes.size();
        break;
      }
    }
    if (matched > 0) {
      i += matched;
      segment_start = i;
    } else {
      ++i;
    }
  }
  EncodeSegment(text.substr(segment_start), &ids);
  return ids;
}

void Tokenizer::EncodeSegment(std::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  const std::vector<Char> chars = DecodeChars(text);
  const auto emit = [&](size_t first, size_t last) {
    const uint32_t begin = chars[first].pos;
    const uint32_t end = last < chars.size() ? chars[last].pos : text.size();
    EncodeWord(text.substr(begin, end - begin), ids);
  };
  if (pre_ == PreTokenizerKind::kGpt2) {
    SplitGpt2(chars, 0, chars.size(), emit);
    return;
  }
  // smollm: every \p{N} character is a piece of its own; the GPT-2 pattern splits the rest.
  size_t run_start = 0;
  for (size_t i = 0; i < chars.size(); ++i) {
    if (chars[i].cls != CodepointClass::kNumber) continue;
    SplitGpt2(chars, run_start, i, emit);
    emit(i, i + 1);
    run_start = i + 1;
  }
  SplitGpt2(chars, run_start, chars.size(), emit);
}

void Tokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;  // -1: none
    int32_t next;  // -1: none
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (const char c : word) {
    const int32_t id = byte_token_[static_cast<uint8_t>(c)];
    if (id < 0) continue;  // no byte token: dropped (see Encode)
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  }
  if (symbols.size() > 1) {
    struct Candidate {
      int32_t rank;
      int32_t left;  // symbol index
      int32_t right;
      int32_t left_id;
      int32_t right_id;
      int32_t result;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : left > o.left;
      }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    const auto push_pair = [&](int32_t left) {
      if (left < 0) return;
      const int32_t right = symbols[left].next;
      if (right < 0) return;
      const auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
      if (it == merges_.end()) return;
      queue.push(
          {it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.left];
      // Stale when either side was merged away or changed since the pair was queued.
      if (left.id != top.left_id || left.next != top.right ||
          symbols[top.right].id != top.right_id) {
        continue;
      }
      Symbol& right = symbols[top.right];
      left.id = top.result;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      right.id = -1;
      push_pair(left.prev);
      push_pair(top.left);
    }
  }
  // Merges keep the left symbol, so symbol 0 always heads the list.
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    ids->push_back(symbols[i].id);
  }
}

std::string Tokenizer::DecodeBytes(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const Token& token = tokens_[id];
    if (skip_special && token.type == TokenType::kControl) continue;
    out.append(token.bytes);
  }
  return out;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string out;
  AppendUtf8Lossy(DecodeBytes(ids, skip_special), &out);
  return out;
}

bool Tokenizer::CanRoundTrip(std::string_view text) const {
  return std::all_of(text.begin(), text.end(),
                     [&](char c) { return byte_token_[static_cast<uint8_t>(c)] >= 0; });
}

std::string_view Tokenizer::TokenText(int32_t id) const {
  return id >= 0 && id < vocab_size() ? std::string_view(tokens_[id].text) : "";
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  return id >= 0 && id < vocab_size() ? std::string_view(tokens_[id].bytes) : "";
}

TokenType Tokenizer::token_type(int32_t id) const {
  return id >= 0 && id < vocab_size() ? tokens_[id].type : TokenType::kUndefined;
}

int32_t Tokenizer::TokenId(std::string_view text) const {
  const auto it = text_to_id_.find(text);
  return it == text_to_id_.end() ? -1 : it->second;
}

bool Tokenizer::IsEog(int32_t id) const { return id >= 0 && id < vocab_size() && is_eog_[id]; }

}  // namespace tandem
