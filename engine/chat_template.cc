#include "engine/chat_template.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tandem {
namespace {

absl::string_view Av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Rewrites Jinja source into a canonical form that keeps what it renders:
//  - whitespace inside {{ }} and {% %} is dropped, except inside string literals;
//  - string literals are single-quoted with escapes decoded, and adjacent literals joined
//    ('a' + 'b' -> 'ab'); `message.role` is written message['role'];
//  - comments go; whitespace control ({%- -%}) and the trim_blocks/lstrip_blocks options
//    Hugging Face renders with are applied to the text between tags.
// Returns nullopt for a literal it cannot canonicalize (a quote or backslash inside).
std::optional<std::string> Normalize(std::string_view src) {
  std::string out;
  size_t text_start = 0;      // where the text since the last tag begins in `out`
  size_t src_text_start = 0;  // and in `src`
  bool strip_leading = false;
  size_t i = 0;
  while (i < src.size()) {
    const bool tag_open = src[i] == '{' && i + 1 < src.size() &&
                          (src[i + 1] == '{' || src[i + 1] == '%' || src[i + 1] == '#');
    if (!tag_open) {
      if (strip_leading && IsSpace(src[i])) {
        ++i;
        continue;
      }
      strip_leading = false;
      out.push_back(src[i++]);
      continue;
    }
    const char kind = src[i + 1];
    const bool trim_before = i + 2 < src.size() && src[i + 2] == '-';
    // lstrip_blocks: spaces and tabs between a source line start and a block tag go.
    if (kind != '{') {
      size_t j = i;
      while (j > src_text_start && (src[j - 1] == ' ' || src[j - 1] == '\t')) --j;
      if (j == 0 || src[j - 1] == '\n') {
        out.resize(out.size() - std::min(i - j, out.size() - text_start));
      }
    }
    if (trim_before) {
      while (out.size() > text_start && IsSpace(out.back())) out.pop_back();
    }
    const char close = kind == '{' ? '}' : kind;
    i += trim_before ? 3 : 2;
    std::string tag;   // canonical tag body
    std::string code;  // code since the last literal, not yet in `tag`
    // `x.role` and `x['role']` are the same attribute in Jinja.
    const auto flush_code = [&] {
      for (const auto& [from, to] :
           {std::pair{".role", "['role']"}, std::pair{".content", "['content']"}}) {
        for (size_t p = code.find(from); p != std::string::npos; p = code.find(from, p)) {
          code.replace(p, std::string_view(from).size(), to);
        }
      }
      tag.append(code);
      code.clear();
    };
    bool closed = false;
    bool trim_after = false;
    while (i < src.size()) {
      const char c = src[i];
      if (kind != '#' && (c == '\'' || c == '"')) {
        std::string literal;
        ++i;
        while (i < src.size() && src[i] != c) {
          if (src[i] == '\\' && i + 1 < src.size()) {
            const char e = src[i + 1];
            literal.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
            i += 2;
          } else {
            literal.push_back(src[i++]);
          }
        }
        if (i >= src.size()) return std::nullopt;
        ++i;
        if (literal.find_first_of("'\\") != std::string::npos) return std::nullopt;
        flush_code();
        if (tag.size() >= 2 && tag.back() == '+' && tag[tag.size() - 2] == '\'') {
          tag.resize(tag.size() - 2);  // join with the previous literal
          tag.append(literal).push_back('\'');
        } else {
          tag.append("'").append(literal).push_back('\'');
        }
        continue;
      }
      if (c == '-' && i + 2 < src.size() && src[i + 1] == close && src[i + 2] == '}') {
        trim_after = true;
        i += 3;
        closed = true;
        break;
      }
      if (c == close && i + 1 < src.size() && src[i + 1] == '}') {
        i += 2;
        closed = true;
        break;
      }
      if (!IsSpace(c)) code.push_back(c);
      ++i;
    }
    if (!closed) return std::nullopt;
    if (kind != '#') {
      flush_code();
      out.push_back('{');
      out.push_back(kind);
      out.append(tag);
      out.push_back(close);
      out.push_back('}');
    }
    text_start = out.size();
    strip_leading = trim_after;
    // trim_blocks: the first newline after a block tag goes.
    if (!trim_after && kind != '{' && i < src.size() && src[i] == '\n') ++i;
    src_text_start = i;
  }
  return out;
}

constexpr std::string_view kLoop = "{%formessageinmessages%}";
constexpr std::string_view kMessage =
    "{{'<|im_start|>'+message['role']+'\n'+message['content']+'<|im_end|>\n'}}{%endfor%}"
    "{%ifadd_generation_prompt%}{{'<|im_start|>assistant\n'}}{%endif%}";
constexpr std::string_view kDefaultSystemOpen =
    "{%ifloop.firstandmessages[0]['role']!='system'%}{{'<|im_start|>system\n";
constexpr std::string_view kDefaultSystemClose = "<|im_end|>\n'}}{%endif%}";

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromGguf(const GgufFile& gguf) {
  ASSIGN_OR_RETURN(const std::string_view source, gguf.GetString("tokenizer.chat_template"));
  return FromTemplateString(source);
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTemplateString(std::string_view source) {
  const std::string excerpt(source.substr(0, 120));
  if (source.find("<|im_start|>") == std::string_view::npos) {
    return absl::UnimplementedError(absl::StrCat(
        "chat template is not ChatML (no <|im_start|>); tandem renders only ChatML: \"", excerpt,
        "...\""));
  }
  const std::optional<std::string> normalized = Normalize(source);
  if (normalized.has_value()) {
    const std::string_view n = *normalized;
    if (n == absl::StrCat(Av(kLoop), Av(kMessage))) return ChatMl();
    const std::string prefix = absl::StrCat(Av(kLoop), Av(kDefaultSystemOpen));
    const std::string suffix = absl::StrCat(Av(kDefaultSystemClose), Av(kMessage));
    if (n.size() >= prefix.size() + suffix.size() && n.substr(0, prefix.size()) == prefix &&
        n.substr(n.size() - suffix.size()) == suffix) {
      return ChatMl(std::string(n.substr(prefix.size(), n.size() - prefix.size() - suffix.size())));
    }
  }
  return absl::UnimplementedError(absl::StrCat(
      "chat template uses constructs tandem cannot render (known forms: plain ChatML, and "
      "ChatML with a default system message): \"",
      excerpt, "...\""));
}

ChatTemplate ChatTemplate::ChatMl(std::optional<std::string> default_system) {
  return ChatTemplate(std::move(default_system));
}

absl::StatusOr<std::string> ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role '", m.role,
                                                     "'; expected system, user or assistant"));
    }
    if (i == 0 && default_system_.has_value() && m.role != "system") {
      absl::StrAppend(&out, "<|im_start|>system\n", *default_system_, "<|im_end|>\n");
    }
    absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  }
  if (add_generation_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

}  // namespace tandem
