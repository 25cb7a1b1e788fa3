#!/usr/bin/env python3
"""Golden logits for the decoder test, from an independent numpy Llama forward pass.

Reads the GGUF with the `gguf` package (its own parser and dequantiser, not ours), runs the model in
float64 (so the reference carries no float32 rounding of its own), and writes
tests/fixtures/decoder/smollm2_logits.json: for a few prompts, the top-20 logits at several positions
and a greedy continuation.

Prompt token ids come from Hugging Face's tokenizer for the same GGUF (transformers + tokenizers,
no torch needed for that part); they are stored in the fixture, so the C++ test does not depend on our
tokenizer.

RoPE: llama.cpp's converter permutes the Q/K weights of llama models so that the GGUF expects the
rotation of adjacent pairs (x[2i], x[2i+1]) — rope type NORM. qwen2 keeps the HF layout and uses NEOX
(x[i], x[i + d/2]). `--check-rope` prints a greedy continuation under both conventions (both look
plausible for short prompts, so that alone is weak evidence). The convention was verified against Hugging
Face transformers loading the same GGUF in float64 (it un-permutes Q/K and uses rotate_half): NORM here
matches its logits to 9e-6, NEOX differs by 6.4 (see `--check-transformers`, needs torch + accelerate).

Usage: pip install gguf numpy transformers tokenizers
       python3 scripts/make_decoder_fixtures.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Model:
    """A numpy float64 forward pass over a GGUF's dequantised weights (llama, mistral, qwen2).

    Reads what the file states: head size (key_length, else d_model / heads), the rotated part of a head
    (rope.dimension_count, else all of it), rope frequency factors (rope_freqs.weight), linear rope
    scaling, a sliding attention window, q/k/v biases when the tensors are there, tied or separate output.
    """

    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.meta = {k: f.contents() for k, f in r.fields.items()
                     if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
        arch = self.meta["general.architecture"]
        g = lambda k, default=None: self.meta.get(f"{arch}.{k}", default)
        self.n_layer = g("block_count")
        self.d = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_head)
        self.hd = g("attention.key_length", self.d // self.n_head)
        self.rope_dim = g("rope.dimension_count", self.hd)
        self.eps = g("attention.layer_norm_rms_epsilon")
        self.base = g("rope.freq_base", 10000.0)
        self.window = g("attention.sliding_window", 0)
        scaling = g("rope.scaling.type", "none")
        self.pos_scale = 1.0 / g("rope.scaling.factor", 1.0) if scaling == "linear" else 1.0
        assert scaling in ("none", "linear"), scaling
        self.eos = self.meta.get("tokenizer.ggml.eos_token_id", -1)
        self.w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            shape = list(reversed([int(x) for x in t.shape]))  # numpy order: (rows, row_length)
            self.w[t.name] = np.asarray(a, dtype=np.float64).reshape(shape)
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]  # tied embeddings

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, style):  # x: (n, heads, hd); rotates the first rope_dim dims of each head
        rd = self.rope_dim
        inv = self.base ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)  # (rd/2)
        if "rope_freqs.weight" in self.w:  # llama 3.x: per-frequency divisors
            inv = inv / self.w["rope_freqs.weight"]
        ang = (pos * self.pos_scale)[:, None] * inv[None, :]  # (n, rd/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = x.copy()
        if style == "norm":  # pairs (x[2i], x[2i+1])
            x0, x1 = x[..., 0:rd:2], x[..., 1:rd:2]
            out[..., 0:rd:2] = x0 * c - x1 * s
            out[..., 1:rd:2] = x0 * s + x1 * c
        else:  # neox: pairs (x[i], x[i + rd/2])
            h = rd // 2
            x0, x1 = x[..., :h], x[..., h:rd]
            out[..., :h] = x0 * c - x1 * s
            out[..., h:rd] = x0 * s + x1 * c
        return out

    def forward(self, tokens, style="norm"):
        """Logits (n, vocab) for every position of `tokens`, no cache."""
        w = self.w
        n = len(tokens)
        x = w["token_embd.weight"][tokens]  # (n, d)
        pos = np.arange(n, dtype=np.float64)
        group = self.n_head // self.n_kv
        mask = np.triu(np.full((n, n), -np.inf), 1)  # query i sees keys j <= i ...
        if self.window:
            mask = mask + np.tril(np.full((n, n), -np.inf), -self.window)  # ... and j > i - window
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, w[p + "attn_norm.weight"])
            q = h @ w[p + "attn_q.weight"].T
            k = h @ w[p + "attn_k.weight"].T
            v = h @ w[p + "attn_v.weight"].T
            if p + "attn_q.bias" in w:
                q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
            q = self.rope(q.reshape(n, self.n_head, self.hd), pos, style)
            k = self.rope(k.reshape(n, self.n_kv, self.hd), pos, style)
            v = v.reshape(n, self.n_kv, self.hd)
            att = np.empty((n, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // group
                sc = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.hd) + mask
                sc = np.exp(sc - sc.max(axis=1, keepdims=True))
                sc /= sc.sum(axis=1, keepdims=True)
                att[:, hh, :] = sc @ v[:, kv, :]
            x = x + att.reshape(n, self.n_head * self.hd) @ w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        x = self.rmsnorm(x, w["output_norm.weight"])
        return x @ w["output.weight"].T

    def greedy(self, tokens, n_new, style="norm"):
        toks = list(tokens)
        out = []
        for _ in range(n_new):
            nxt = int(np.argmax(self.forward(toks, style)[-1]))
            out.append(nxt)
            toks.append(nxt)
            if nxt == self.eos:
                break
        return out


PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "decoder", "smollm2_logits.json"))
    ap.add_argument("--new-tokens", type=int, default=20)
    ap.add_argument("--check-rope", action="store_true")
    ap.add_argument("--check-transformers", action="store_true")
    args = ap.parse_args()

    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model))
    m = Model(args.model)

    if args.check_transformers:
        import torch
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(args.model), gguf_file=os.path.basename(args.model),
                                                  torch_dtype=torch.float64)
        for text in PROMPTS:
            ids = tok.encode(text, add_special_tokens=False)
            with torch.no_grad():
                ref = hf(torch.tensor([ids])).logits[0].numpy()
            print(repr(text), {s: float(np.abs(m.forward(ids, s) - ref).max()) for s in ("norm", "neox")})
        return

    if args.check_rope:
        ids = tok.encode(PROMPTS[0], add_special_tokens=False)
        for style in ("norm", "neox"):
            print(style, repr(tok.decode(m.greedy(ids, 12, style))))
        return

    cases = []
    for text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False)
        logits = m.forward(ids)
        positions = sorted({0, len(ids) // 2, len(ids) - 1})
        tops = []
        for p in positions:
            order = np.lexsort((np.arange(logits.shape[1]), -logits[p]))[:20]
            tops.append({"position": p, "ids": [int(i) for i in order],
                         "logits": [round(float(logits[p, i]), 5) for i in order]})
        cont = m.greedy(ids, args.new_tokens)
        print(repr(text), "->", repr(tok.decode(cont)), file=sys.stderr)
        cases.append({"text": text, "tokens": [int(i) for i in ids], "top_logits": tops,
                      "greedy": cont, "greedy_text": tok.decode(cont)})
    with open(args.out, "w") as f:
        json.dump({"model": os.path.basename(args.model),
                   "generator": "scripts/make_decoder_fixtures.py (numpy float64 forward, gguf package dequant)",
                   "cases": cases}, f, indent=1)
    print("wrote", args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
