#!/usr/bin/env python3
"""Writes tests/golden/tokenizer_golden.json: reference token ids and chat renderings from
Hugging Face for the default model's tokenizer (SmolLM2-135M-Instruct, GGUF).

Usage: python3 tests/golden/make_tokenizer_golden.py [path/to/model.gguf]
Needs: transformers, tokenizers, gguf (no torch).

The tokenizer is Hugging Face's, loaded from the same GGUF. NOTE: transformers' GGUF
converter builds a plain ByteLevel pre-tokenizer and drops SmolLM2's digit splitting
(tokenizer.ggml.pre = "smollm"; the model's own tokenizer.json has
Sequence[Digits(individual_digits=True), ByteLevel], and llama.cpp splits \\p{N} first for
"smollm"). So "ids" come from the GGUF-loaded tokenizer with that pre-tokenizer restored,
and "ids_gpt2" from the GGUF-loaded tokenizer as it is (tandem's "gpt2" pre-tokenizer).
They differ only around numbers (e.g. "a  5", "²³ ¼").
"""
import json
import os
import sys

from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

DEFAULT_MODEL = os.path.expanduser("~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_golden.json")

STRINGS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "1234567890",
    "3.14159",
    "In 2024, the price was $1,299.99 (about 15% off).",
    "a  5",
    "x 2024 y",
    "version 1.2.3-rc4",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   internal    spaces",
    "tabs\tand\t\ttabs",
    "\n\n\n",
    "line one\nline two\r\nline three\n",
    " \t \n mixed \u00a0 \u3000 whitespace \u2028\u0085end",
    "!!! ??? ... ---- ;;; :::",
    "(parentheses) [brackets] {braces} <angles>",
    "I'm sure they'll say it's fine, don't you think? We've seen it, I'd say.",
    "'s 't 're 've 'm 'll 'd 'S 'RE",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m",
    "e\u0301 combining accent",
    "Stra\u00dfe, Gr\u00f6\u00dfe, \u00fcber M\u00e4dchen",
    "C'est l'\u00e9t\u00e9, o\u00f9 est le ch\u00e2teau ? \u00ab Voil\u00e0 \u00bb",
    "\u4e2d\u6587\u6d4b\u8bd5\uff1a\u4f60\u597d\uff0c\u4e16\u754c\uff01",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "emoji \U0001F600\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 "
    "\U0001F1EB\U0001F1F7 \u2764\ufe0f",
    "\u00b2\u00b3 \u00bc \u00bd \u0663\u0664 \u0661\u0662 \u2460\u2461 \u216b",
    "control \x01\x04\x1c\x1f\x7f bytes",
    "zero\u200bwidth\ufeffjoiner",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "#include <vector>\n\nint main() {\n  std::vector<int> v{1, 2, 3};\n"
    "  for (auto& x : v) x *= 2;\n  return 0;\n}\n",
    '{"name": "tandem", "version": [0, 1], "ok": true, "nested": {"k": null}}',
    "https://example.com/path?query=1&b=two#frag",
    "user@example.com  +1 (555) 010-9999",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more <|im_end|>",
    "<|im_start|> inside a sentence<|im_start|><|im_end|>",
    "ALL CAPS SHOUTING AND MiXeD cAsE",
    "snake_case camelCase kebab-case PascalCase",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Count to 3.\nThen stop."}],
    [{"role": "user", "content": "A"},
     {"role": "assistant", "content": "B"},
     {"role": "system", "content": "late system"}],
]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_MODEL
    reader = GGUFReader(path)
    field = reader.fields["tokenizer.ggml.pre"]
    pre = bytes(field.parts[field.data[0]]).decode()
    assert pre == "smollm", pre

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    gpt2 = tok.backend_tokenizer
    smollm = type(gpt2).from_str(gpt2.to_str())
    smollm.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    plain = type(gpt2).from_str(smollm.to_str())
    plain.encode_special_tokens = True  # "<|im_start|>" in text stays text

    ids = [smollm.encode(s, add_special_tokens=False).ids for s in STRINGS]
    ids_gpt2 = [gpt2.encode(s, add_special_tokens=False).ids for s in STRINGS]
    ids_no_special = [plain.encode(s, add_special_tokens=False).ids for s in STRINGS]
    for s, a in zip(STRINGS, ids):
        assert smollm.decode(a, skip_special_tokens=False) == s or "\x04" in s, repr(s)

    chats = []
    for messages in CONVERSATIONS:
        for add_generation_prompt in (False, True):
            chats.append({
                "messages": messages,
                "add_generation_prompt": add_generation_prompt,
                "text": tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=add_generation_prompt),
            })
    golden = {
        "source": "make_tokenizer_golden.py; Hugging Face transformers/tokenizers from " +
                  os.path.basename(path),
        "strings": STRINGS,
        "ids": ids,
        "ids_gpt2": ids_gpt2,
        "ids_no_special": ids_no_special,
        "chat_template": tok.chat_template,
        "chats": chats,
    }
    with open(OUT, "w") as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    differ = [s for s, a, b in zip(STRINGS, ids, ids_gpt2) if a != b]
    print(f"wrote {OUT}: {len(STRINGS)} strings; smollm != gpt2 for {differ!r}")


if __name__ == "__main__":
    main()
