#!/usr/bin/env python3
"""Converts a llama-architecture GGUF into a Hugging Face model directory (what
LlamaForCausalLM.save_pretrained writes: model.safetensors, config.json, generation_config.json,
tokenizer files), so tandem's Hugging Face loader can be tested against the GGUF it came from.

Usage (venv with the packages in tests/hf/requirements.txt; no torch needed):
  ~/.cache/tandem/aiperf-venv/bin/python tools/gguf_to_hf.py GGUF OUT_DIR \
      [--dtype bf16|f16|f32] [--self-check]

Every tensor is dequantized to float32, then written in --dtype (default bf16; 1-D norms too,
as HF does). Q and K rows are un-permuted from llama.cpp's adjacent-pair RoPE layout back to
HF's half-split layout. The tokenizer files come from bench/aiperf/export_tokenizer.py's
export(), byte for byte. --self-check proves the un-permutation numerically (RoPE'd attention
scores agree between layouts) and re-reads model.safetensors against the float32 source;
it exits 1 on a failure. Idempotent: rewrites the files in OUT_DIR.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = {  # --dtype: (safetensors dtype, torch_dtype, relative rounding bound, abs bound)
    "bf16": ("BF16", "bfloat16", 2.0**-8, 2.0**-133),
    "f16": ("F16", "float16", 2.0**-11, 2.0**-25),  # abs: half of f16's smallest subnormal
    "f32": ("F32", "float32", 0.0, 0.0),
}
LAYER_NAMES = {  # GGUF blk.{i}.X -> HF model.layers.{i}.Y
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def load_export_tokenizer():
    """bench/aiperf/export_tokenizer.py, imported by path (it is a script, not a package)."""
    path = os.path.join(ROOT, "bench", "aiperf", "export_tokenizer.py")
    spec = importlib.util.spec_from_file_location("export_tokenizer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf permute (HF -> GGUF), for the self-check."""
    d2 = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, d2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    """Inverse of permute (GGUF -> HF): per head, rows (2i, 2i+1) go back to (i, i + d/2)."""
    d2 = w.shape[0] // n_head // 2
    return w.reshape(n_head, d2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even; NaN stays a quiet NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # + 0x7FFF + lsb, then truncate: ties go to even. Only NaNs can wrap; they are replaced.
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (bits >> 16) | np.uint32(0x0040), rounded).astype(np.uint16)


def encode(x, st_dtype):
    if st_dtype == "BF16":
        return to_bf16_bits(x).astype("<u2").tobytes()
    return np.ascontiguousarray(x, dtype="<f2" if st_dtype == "F16" else "<f4").tobytes()


def decode(buf, st_dtype, shape):
    if st_dtype == "BF16":
        return (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    x = np.frombuffer(buf, "<f2" if st_dtype == "F16" else "<f4")
    return x.astype(np.float32).reshape(shape)


class Model:
    """The GGUF's hyperparameters and its tensors, dequantized and renamed to HF's layout."""

    def __init__(self, path):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self.str("general.architecture")
        if arch not in ("llama", "mistral"):
            sys.exit(f"gguf_to_hf: general.architecture '{arch}' is not supported "
                     "(only llama, mistral)")
        k = lambda key: f"{arch}.{key}"  # noqa: E731
        self.n_layer = self.int(k("block_count"))
        self.hidden = self.int(k("embedding_length"))
        self.ffn = self.int(k("feed_forward_length"))
        self.n_head = self.int(k("attention.head_count"))
        self.n_kv = self.int(k("attention.head_count_kv"), self.n_head)
        self.head_dim = self.int(k("attention.key_length"), self.hidden // self.n_head)
        self.ctx = self.int(k("context_length"))
        self.rope_theta = self.float(k("rope.freq_base"), 10000.0)
        self.eps = self.float(k("attention.layer_norm_rms_epsilon"))
        if self.int(k("rope.dimension_count"), self.head_dim) != self.head_dim:
            sys.exit("gguf_to_hf: rope.dimension_count != head_dim (partial RoPE) is not supported")
        self.vocab = int(self.tensors["token_embd.weight"].shape[1])  # GGUF dims: innermost first
        self.tied = "output.weight" not in self.tensors
        # HF name -> (GGUF name, expected HF shape, RoPE heads to un-permute or 0)
        H, q, kv = self.hidden, self.n_head * self.head_dim, self.n_kv * self.head_dim
        self.plan = {"model.embed_tokens.weight": ("token_embd.weight", (self.vocab, H), 0)}
        for i in range(self.n_layer):
            shapes = {"attn_norm": (H,), "attn_q": (q, H), "attn_k": (kv, H), "attn_v": (kv, H),
                      "attn_output": (H, q), "ffn_norm": (H,), "ffn_gate": (self.ffn, H),
                      "ffn_up": (self.ffn, H), "ffn_down": (H, self.ffn)}
            heads = {"attn_q": self.n_head, "attn_k": self.n_kv}
            for g, hf in LAYER_NAMES.items():
                self.plan[f"model.layers.{i}.{hf}.weight"] = (
                    f"blk.{i}.{g}.weight", shapes[g], heads.get(g, 0))
        self.plan["model.norm.weight"] = ("output_norm.weight", (H,), 0)
        if not self.tied:
            self.plan["lm_head.weight"] = ("output.weight", (self.vocab, H), 0)

    def field(self, key):
        f = self.reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    def str(self, key):
        return None if (v := self.field(key)) is None else bytes(v).decode()

    def int(self, key, default=None):
        v = self.field(key)
        if v is None and default is None:
            sys.exit(f"gguf_to_hf: GGUF has no '{key}'")
        return default if v is None else int(v[0])

    def float(self, key, default=None):  # float32's shortest repr: 1e-05, not 9.99999974e-06
        return default if (v := self.field(key)) is None else float(str(np.float32(v[0])))

    def gguf_f32(self, gguf_name):
        """A GGUF tensor as float32, numpy shape = GGUF dims reversed (HF's [out, in])."""
        t = self.tensors.get(gguf_name)
        if t is None:
            sys.exit(f"gguf_to_hf: GGUF has no tensor '{gguf_name}'")
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)

    def hf_f32(self, hf_name):
        gguf_name, shape, heads = self.plan[hf_name]
        w = self.gguf_f32(gguf_name)
        if w.shape != shape:
            sys.exit(f"gguf_to_hf: {gguf_name} has shape {w.shape}, {hf_name} needs {shape}")
        return unpermute(w, heads) if heads else w


def write_safetensors(model, path, st_dtype):
    size = {"BF16": 2, "F16": 2, "F32": 4}[st_dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (_, shape, _) in model.plan.items():
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": st_dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts at 8 + len(blob), a multiple of 8
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name in model.plan:
            f.write(encode(model.hf_f32(name), st_dtype))
    os.replace(tmp, path)
    return 8 + len(blob) + offset


def rope(x, pos, theta, pairs):
    """RoPE on one head's vector x (float64): pairs (2i, 2i+1) if pairs else (i, i + d/2)."""
    d = x.shape[0]
    ang = pos * theta ** (-2.0 * np.arange(d // 2) / d)
    a, b = (x[0::2], x[1::2]) if pairs else (x[: d // 2], x[d // 2:])
    ra, rb = a * np.cos(ang) - b * np.sin(ang), a * np.sin(ang) + b * np.cos(ang)
    return np.stack([ra, rb], 1).reshape(d) if pairs else np.concatenate([ra, rb])


def scores(wq, wk, m, hq, hk, pairs, pos_q=7, pos_k=2):
    """Per query head: RoPE(Wq·hq, pos_q) · RoPE(Wk·hk, pos_k) with its grouped KV head, in
    float64 (h is). The positions must differ: at equal ones the rotations cancel in q·k."""
    q = [rope(v, pos_q, m.rope_theta, pairs) for v in (wq @ hq).reshape(m.n_head, -1)]
    k = [rope(v, pos_k, m.rope_theta, pairs) for v in (wk @ hk).reshape(m.n_kv, -1)]
    return np.array([q[j] @ k[j // (m.n_head // m.n_kv)] for j in range(m.n_head)])


def self_check(model, path, dtype):
    ok = True
    rng = np.random.default_rng(0)
    x = rng.standard_normal((model.n_head * model.head_dim, 5))
    ok &= np.array_equal(unpermute(permute(x, model.n_head), model.n_head), x)
    print(f"self-check: unpermute(permute(x)) == x: {ok}")
    wq_g, wk_g = model.gguf_f32("blk.0.attn_q.weight"), model.gguf_f32("blk.0.attn_k.weight")
    wq_h = model.hf_f32("model.layers.0.self_attn.q_proj.weight")
    wk_h = model.hf_f32("model.layers.0.self_attn.k_proj.weight")
    hq, hk = rng.standard_normal(model.hidden), rng.standard_normal(model.hidden)
    ref = scores(wq_g, wk_g, model, hq, hk, pairs=True)  # llama.cpp: GGUF rows, adjacent pairs
    rel = np.abs(scores(wq_h, wk_h, model, hq, hk, pairs=False) - ref).max() / np.abs(ref).max()
    bad = np.abs(scores(wq_g, wk_g, model, hq, hk, pairs=False) - ref).max() / np.abs(ref).max()
    print(f"self-check: layer 0 RoPE'd q(pos 7).k(pos 2), {model.n_head} heads: HF half-split vs "
          f"GGUF adjacent pairs: max rel diff {rel:.2e} (< 1e-9); without un-permuting: {bad:.2e}")
    ok &= rel < 1e-9 and bad > 1e-3
    st_dtype, _, rtol, atol = DTYPES[dtype]
    worst, n_bad = 0.0, 0
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            f.seek(base + b)
            got = decode(f.read(e - b), info["dtype"], info["shape"])
            src = model.hf_f32(name)
            err = np.abs(got.astype(np.float64) - src)
            tol = rtol * np.abs(src) + atol
            n_bad += int(not (got.shape == src.shape and (err <= tol).all()))
            worst = max(worst, float((err / np.maximum(np.abs(src), 1e-30)).max()))
    n_tensors = len(header) - 1
    print(f"self-check: {n_tensors} tensors re-read from {os.path.basename(path)} ({st_dtype}): "
          f"{n_tensors - n_bad} within rounding (rel {rtol:.1e}), worst rel err {worst:.2e}")
    ok &= n_bad == 0 and n_tensors == len(model.plan)
    return bool(ok)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--self-check", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    if not os.path.isfile(args.gguf):
        sys.exit(f"gguf_to_hf: no GGUF at {args.gguf}")
    model = Model(args.gguf)
    os.makedirs(args.out_dir, exist_ok=True)
    st_path = os.path.join(args.out_dir, "model.safetensors")
    st_dtype, torch_dtype, _, _ = DTYPES[args.dtype]
    st_bytes = write_safetensors(model, st_path, st_dtype)

    # Tokenizer files exactly as bench/aiperf/export_tokenizer.py writes them.
    tok = load_export_tokenizer().export(args.gguf, args.out_dir)
    if len(tok) != model.vocab:
        print(f"gguf_to_hf: note: {len(tok)} tokenizer tokens, {model.vocab} embedding rows",
              file=sys.stderr)
    bos, eos = (model.int(f"tokenizer.ggml.{t}_token_id", -1) for t in ("bos", "eos"))
    bos, eos = (None if bos < 0 else bos), (None if eos < 0 else eos)
    config = {
        "_name_or_path": model.str("general.name") or "", "architectures": ["LlamaForCausalLM"],
        "model_type": "llama", "hidden_size": model.hidden, "intermediate_size": model.ffn,
        "num_attention_heads": model.n_head, "num_key_value_heads": model.n_kv,
        "num_hidden_layers": model.n_layer, "head_dim": model.head_dim, "vocab_size": model.vocab,
        "max_position_embeddings": model.ctx, "rope_theta": model.rope_theta, "rope_scaling": None,
        "rms_norm_eps": model.eps, "tie_word_embeddings": model.tied, "bos_token_id": bos,
        "eos_token_id": eos, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "torch_dtype": torch_dtype, "transformers_version": version("transformers"),
    }
    gen = {"_from_model_config": True, "bos_token_id": bos, "eos_token_id": eos,
           "transformers_version": config["transformers_version"]}
    for name, obj in (("config.json", config), ("generation_config.json", gen)):
        with open(os.path.join(args.out_dir, name), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    ok = self_check(model, st_path, args.dtype) if args.self_check else True
    print(f"gguf_to_hf: {os.path.basename(args.gguf)} -> {args.out_dir}: {len(model.plan)} "
          f"tensors {st_dtype} ({st_bytes / 2**20:.1f} MiB), {model.n_layer} layers, hidden "
          f"{model.hidden}, heads {model.n_head}/{model.n_kv}, vocab {model.vocab}, "
          f"tied {model.tied}, "
          f"{time.time() - t0:.1f} s{'' if ok else ', SELF-CHECK FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
