#!/usr/bin/env python3
"""Make tests/golden/logits_golden.json: reference logits and greedy continuations
for the default model, computed by Hugging Face transformers from the SAME GGUF file
that tandem loads (transformers dequantizes it to float32 and un-permutes the Q/K rows
that GGUF's llama converter permuted, so its logits are a valid reference).

Usage (see tests/golden/README.md):
    python tests/golden/make_logits_golden.py \
        [--gguf ~/.cache/tandem/models/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/golden/logits_golden.json] [--threads 2]

Needs: torch (CPU is enough), transformers (with GGUF support), gguf, numpy.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import gguf as gguf_pkg
    from importlib.metadata import version as _pkg_version
    GGUF_VERSION = _pkg_version("gguf")
except Exception:  # pragma: no cover
    GGUF_VERSION = "unknown"

TOP_K = 20
MAX_NEW_TOKENS = 32

LONG_TEXT = (
    "The history of computing stretches back thousands of years, long before the first "
    "electronic machines. Early people counted with pebbles, knotted cords and tally sticks. "
    "The abacus, used in Mesopotamia, China and Rome, let merchants add and subtract large "
    "numbers quickly. In the seventeenth century, Blaise Pascal built a mechanical calculator "
    "to help his father with tax accounts, and Gottfried Leibniz designed a machine that could "
    "also multiply. Two centuries later, Charles Babbage planned the Analytical Engine, a "
    "general-purpose mechanical computer with a memory, a processing unit and punched-card "
    "input. Ada Lovelace wrote what many consider the first program for it, an algorithm to "
    "compute Bernoulli numbers. The engine was never finished, but its ideas returned in the "
    "twentieth century, when engineers built machines from relays and vacuum tubes. During the "
    "Second World War, Colossus helped break encrypted messages, and after the war ENIAC filled "
    "a large room and used about eighteen thousand tubes. The invention of the transistor in "
    "1947 and of the integrated circuit a decade later made computers smaller, faster and "
    "cheaper, and in the end"
)

# (name, kind, payload). kind "chat": payload is a list of messages rendered with the
# model's chat template (add_generation_prompt=True). kind "text": payload is the raw prompt.
PROMPTS = [
    ("chat_capital_france", "chat",
     [{"role": "user", "content": "What is the capital of France?"}]),
    ("chat_system_haiku", "chat",
     [{"role": "system", "content": "You are a poet. Answer briefly."},
      {"role": "user", "content": "Write a haiku about the ocean."}]),
    ("chat_arithmetic", "chat",
     [{"role": "user", "content": "What is 12 + 30? Answer with a number."}]),
    ("text_quick_brown_fox", "text", "The quick brown fox"),
    ("code_fibonacci", "text", "def fibonacci(n):"),
    ("text_digits", "text",
     "In 1969, Apollo 11 landed on the Moon. 2 + 2 = 4, 10 * 12 = 120, and 3.14159 is"),
    ("text_unicode", "text", "Café, naïve, jalapeño — 日本語 and emoji 🙂 are"),
    ("text_long_history", "text", LONG_TEXT),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def r5(x):
    return float(round(float(x), 5))


@torch.no_grad()
def last_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0, -1].to(torch.float64)


@torch.no_grad()
def manual_greedy(model, prompt_ids, eos_ids, n):
    """Argmax stepping with a full recompute each step (no KV cache): independent of
    generate()'s cache path. Returns ids, per-step top1-top2 gaps, top1 values, top2 ids."""
    ids = list(prompt_ids)
    out_ids, gaps, top1_vals, top2_ids = [], [], [], []
    for _ in range(n):
        lg = last_logits(model, ids)
        v, i = torch.topk(lg, 2)
        tok = int(i[0])
        out_ids.append(tok)
        gaps.append(r5(v[0] - v[1]))
        top1_vals.append(r5(v[0]))
        top2_ids.append(int(i[1]))
        ids.append(tok)
        if tok in eos_ids:
            break
    return out_ids, gaps, top1_vals, top2_ids


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    tandem_home = os.environ.get("TANDEM_HOME", os.path.expanduser("~/.cache/tandem"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.join(tandem_home, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(here, "logits_golden.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gguf_path = os.path.abspath(os.path.expanduser(args.gguf))
    gdir, gfile = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    t0 = time.time()
    print(f"sha256 of {gguf_path} ...", file=sys.stderr)
    digest = sha256_file(gguf_path)

    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    # `dtype` is the newer name of `torch_dtype` (transformers >= 4.56).
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    print(f"loaded in {time.time() - t0:.1f}s", file=sys.stderr)

    eos_id = tok.eos_token_id
    eos_ids = {eos_id}
    gen_eos = model.generation_config.eos_token_id
    if gen_eos is not None:
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])

    # The chat special tokens must encode to single special ids, not to their text bytes.
    special = {}
    for s in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        enc = tok.encode(s, add_special_tokens=False)
        assert len(enc) == 1, (s, enc)
        special[s] = enc[0]

    records = []
    for name, kind, payload in PROMPTS:
        if kind == "chat":
            prompt = tok.apply_chat_template(payload, add_generation_prompt=True, tokenize=False)
        else:
            prompt = payload
        ids = tok.encode(prompt, add_special_tokens=False)
        assert tok.decode(ids) == prompt, f"{name}: decode(encode(prompt)) != prompt"
        if kind == "chat":
            assert ids[0] == special["<|im_start|>"], (name, ids[:3])
            assert ids.count(special["<|im_start|>"]) == prompt.count("<|im_start|>")
            assert ids.count(special["<|im_end|>"]) == prompt.count("<|im_end|>")

        lg = last_logits(model, ids)
        lse = float(torch.logsumexp(lg, dim=0))
        topv, topi = torch.topk(lg, TOP_K)

        with torch.no_grad():
            g = model.generate(
                torch.tensor([ids], dtype=torch.long),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS,
                repetition_penalty=1.0, temperature=None, top_p=None, top_k=None,
                eos_token_id=sorted(eos_ids), pad_token_id=eos_id,
            )
        gen_ids = [int(x) for x in g[0, len(ids):]]
        # generate() pads nothing for batch 1, but cut anything after the first eos anyway.
        for k, t in enumerate(gen_ids):
            if t in eos_ids:
                gen_ids = gen_ids[: k + 1]
                break

        man_ids, gaps, top1_vals, top2_ids = manual_greedy(model, ids, eos_ids, MAX_NEW_TOKENS)
        agree = man_ids == gen_ids
        first_diff = None
        if not agree:
            first_diff = next((k for k in range(min(len(man_ids), len(gen_ids))) if man_ids[k] != gen_ids[k]),
                              min(len(man_ids), len(gen_ids)))
            print(f"WARNING {name}: generate() and manual argmax differ at step {first_diff} "
                  f"(gap there {gaps[first_diff] if first_diff < len(gaps) else 'n/a'})", file=sys.stderr)

        text = tok.decode(man_ids, skip_special_tokens=False)
        print(f"--- {name} ({len(ids)} prompt tokens, lse {lse:.4f}, top1 {int(topi[0])} {float(topv[0]):.4f})\n"
              f"    continuation: {text!r}\n    min gap {min(gaps):.5f} at step {gaps.index(min(gaps))}",
              file=sys.stderr)

        rec = {
            "name": name,
            "kind": kind,
            "prompt": prompt,
            "prompt_ids": ids,
            "n_prompt": len(ids),
            "last_logits": {
                "top_ids": [int(x) for x in topi],
                "top_values": [r5(x) for x in topv],
                "logsumexp": r5(lse),
            },
            "greedy": {
                "ids": man_ids,
                "text": text,
                "stopped_on_eos": bool(man_ids and man_ids[-1] in eos_ids),
                "top1_top2_gap": gaps,
                "top1_value": top1_vals,
                "top2_id": top2_ids,
                "generate_agrees": agree,
            },
        }
        if kind == "chat":
            rec["messages"] = payload
        if not agree:
            rec["greedy"]["generate_ids"] = gen_ids
            rec["greedy"]["first_difference"] = first_diff
        records.append(rec)

    cfg = model.config
    out = {
        "description": "Reference last-position logits and greedy continuations from Hugging Face "
                       "transformers (float32, dequantized from the GGUF below). See tests/golden/README.md.",
        "generator": "tests/golden/make_logits_golden.py",
        "model": {
            "gguf_file": gfile,
            "gguf_sha256": digest,
            "gguf_bytes": os.path.getsize(gguf_path),
            "architecture": cfg.model_type,
            "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "rope_theta": float(getattr(cfg, "rope_theta", None) or
                                (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 0.0)),
            "rms_norm_eps": cfg.rms_norm_eps,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        },
        "tokenizer": {
            "add_special_tokens": False,
            "special_ids": special,
            "eos_ids": sorted(eos_ids),
        },
        "settings": {
            "dtype": "float32",
            "top_k": TOP_K,
            "max_new_tokens": MAX_NEW_TOKENS,
            "greedy": "argmax each step, full recompute without KV cache; cross-checked with "
                      "model.generate(do_sample=False, repetition_penalty=1.0)",
            "gap": "top1_top2_gap[k] = logit(top1) - logit(top2) at greedy step k (step 0 is the last "
                   "prompt position); a divergence at a step with a gap below the comparison tolerance "
                   "is a near-tie, not a bug",
            "values_rounded_to": 5,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": GGUF_VERSION,
            "numpy": np.__version__,
        },
        "prompts": records,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time() - t0:.1f}s", file=sys.stderr)
    bad = [r["name"] for r in records if not r["greedy"]["generate_agrees"]]
    if bad:
        print(f"NOTE: generate() differs from manual argmax for: {bad}", file=sys.stderr)


if __name__ == "__main__":
    main()
