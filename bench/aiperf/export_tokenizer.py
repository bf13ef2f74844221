#!/usr/bin/env python3
"""Exports a GGUF model's tokenizer as a local Hugging Face tokenizer directory
(tokenizer.json, tokenizer_config.json, special tokens, chat template) that aiperf, i.e.
transformers' AutoTokenizer, loads offline with `--tokenizer DIR`.

Usage (in the venv from bench/aiperf/setup.sh, which has transformers, tokenizers and gguf;
no torch):
  ~/.cache/tandem/aiperf-venv/bin/python bench/aiperf/export_tokenizer.py \
      [--gguf PATH] [--out DIR] [--check] [--llama-server URL]

  --gguf   default ~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf (`tandem model pull`)
  --out    default ~/.cache/tandem/tokenizers/<gguf file name without .gguf>
  --check  re-load DIR offline and compare with tests/golden/tokenizer_golden.json (the ids
           tandem's own tokenizer is tested against, tests/unit/engine/tokenizer_test.cc) and
           its chat renderings; exits 1 on a mismatch. Only for the default model.
  --llama-server URL  also compare ids with llama.cpp's tokenizer (POST URL/tokenize).

Idempotent: rewrites DIR each time (a few MB). Prints, last, `TOKENIZER_DIR=<path>`.

The tokenizer is built directly from the GGUF's tokens, merges and token types with the
`tokenizers` library rather than with AutoTokenizer.from_pretrained(gguf_file=...), because
(1) transformers 5.x's GGUF reader imports torch, which this venv does not have (and does
not need), and (2) transformers' GGUF converter builds a plain ByteLevel pre-tokenizer and drops
SmolLM2's digit splitting (GGUF tokenizer.ggml.pre = "smollm"; llama.cpp and tandem split
every digit, as the model's original tokenizer.json does with Digits(individual_digits=True)),
which changes the token count of any text with multi-digit numbers.
"""
import argparse
import json
import os
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GGUF = os.path.expanduser("~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf")
GOLDEN = os.path.join(ROOT, "tests", "golden", "tokenizer_golden.json")


def gguf_string(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode()


def gguf_array(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    return [field.parts[i] for i in field.data]


def gguf_int(reader, key):
    field = reader.fields.get(key)
    return None if field is None else int(field.parts[field.data[0]][0])


def build_tokenizer(gguf_path):
    """A `tokenizers.Tokenizer` for a GGUF "gpt2" (byte-level BPE) vocabulary, built from the
    GGUF's own tokens/merges/token types, plus the metadata the HF wrapper needs."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    reader = GGUFReader(gguf_path)
    model = gguf_string(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"export_tokenizer: tokenizer.ggml.model '{model}' is not supported "
                 "(only byte-level BPE, 'gpt2')")
    pre = gguf_string(reader, "tokenizer.ggml.pre")
    tokens = [bytes(p).decode("utf-8") for p in gguf_array(reader, "tokenizer.ggml.tokens")]
    types = [int(p[0]) for p in gguf_array(reader, "tokenizer.ggml.token_type")]
    merges = [tuple(bytes(p).decode("utf-8").split(" ", 1))
              for p in gguf_array(reader, "tokenizer.ggml.merges")]

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, dropout=None,
                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                     byte_fallback=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        if pre not in (None, "gpt2", "default"):
            print(f"export_tokenizer: note: GGUF pre-tokenizer '{pre}' is approximated by GPT-2's "
                  "byte-level split; check the ids (--llama-server)", file=sys.stderr)
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # GGUF token types: 3 = control (special), 4 = user-defined (added, not special).
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(types) if t == 4]
    if user:
        tok.add_tokens(user)

    def tok_name(key):
        i = gguf_int(reader, key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    meta = {
        "pre": pre,
        "bos_token": tok_name("tokenizer.ggml.bos_token_id"),
        "eos_token": tok_name("tokenizer.ggml.eos_token_id"),
        "unk_token": tok_name("tokenizer.ggml.unknown_token_id"),
        "pad_token": tok_name("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(gguf_int(reader, "tokenizer.ggml.add_bos_token") or 0),
        "chat_template": gguf_string(reader, "tokenizer.chat_template"),
        "context_length": None,
    }
    arch = gguf_string(reader, "general.architecture")
    if arch:
        meta["context_length"] = gguf_int(reader, f"{arch}.context_length")
    return tok, meta


def export(gguf_path, out_dir):
    from transformers import PreTrainedTokenizerFast

    backend, meta = build_tokenizer(gguf_path)
    if meta["add_bos_token"] and meta["bos_token"]:
        from tokenizers import processors
        bos = meta["bos_token"]
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, backend.token_to_id(bos))]),
        ])
    kwargs = {k: meta[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if meta[k]}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                  model_max_length=meta["context_length"] or 2048, **kwargs)
    if meta["chat_template"]:
        tok.chat_template = meta["chat_template"]
    os.makedirs(out_dir, exist_ok=True)
    tok.save_pretrained(out_dir)
    # Recent transformers writes the chat template to chat_template.jinja; keep a copy in
    # tokenizer_config.json too, for readers (and older transformers) that only look there.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if meta["chat_template"]:
        cfg["chat_template"] = meta["chat_template"]
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["tandem_source"] = {"gguf": os.path.basename(gguf_path), "ggml_pre": meta["pre"]}
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return tok


def load_offline(out_dir):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(out_dir)


def check_golden(tok):
    with open(GOLDEN) as f:
        golden = json.load(f)
    bad = 0
    for s, want in zip(golden["strings"], golden["ids"]):
        got = tok.encode(s, add_special_tokens=False)
        if got != want:
            bad += 1
            print(f"  ids differ for {s!r}: got {got} want {want}", file=sys.stderr)
        # aiperf counts with the default add_special_tokens=True: must add nothing.
        if tok.encode(s) != got:
            bad += 1
            print(f"  add_special_tokens=True changes {s!r}", file=sys.stderr)
    for chat in golden["chats"]:
        text = tok.apply_chat_template(chat["messages"], tokenize=False,
                                       add_generation_prompt=chat["add_generation_prompt"])
        if text != chat["text"]:
            bad += 1
            print(f"  chat rendering differs: {text!r} vs {chat['text']!r}", file=sys.stderr)
    n = len(golden["strings"]) + len(golden["chats"])
    print(f"golden check (tests/golden/tokenizer_golden.json, the ids tandem's tokenizer is "
          f"tested against): {n - bad}/{n} match", file=sys.stderr)
    return bad == 0, golden["strings"]


def check_llama_server(tok, url, strings):
    bad = 0
    for s in strings:
        req = urllib.request.Request(
            url.rstrip("/") + "/tokenize",
            data=json.dumps({"content": s, "add_special": False, "parse_special": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            want = json.load(r)["tokens"]
        got = tok.encode(s, add_special_tokens=False)
        if got != want:
            bad += 1
            print(f"  llama.cpp ids differ for {s!r}: got {got} llama.cpp {want}", file=sys.stderr)
    print(f"llama-server /tokenize check: {len(strings) - bad}/{len(strings)} match",
          file=sys.stderr)
    return bad == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--out")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--llama-server")
    args = ap.parse_args()
    if not os.path.isfile(args.gguf):
        sys.exit(f"export_tokenizer: no GGUF at {args.gguf} (run `tandem model pull`)")
    name = os.path.basename(args.gguf)
    name = name[:-5] if name.endswith(".gguf") else name
    out = os.path.abspath(args.out or os.path.expanduser(f"~/.cache/tandem/tokenizers/{name}"))

    export(args.gguf, out)
    tok = load_offline(out)
    ok = True
    strings = None
    if args.check:
        ok, strings = check_golden(tok)
    if args.llama_server:
        if strings is None:
            with open(GOLDEN) as f:
                strings = json.load(f)["strings"]
        ok = check_llama_server(tok, args.llama_server, strings) and ok
    print(f"TOKENIZER_DIR={out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
