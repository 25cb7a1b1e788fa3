#!/usr/bin/env python3
"""Tiny random-weight GGUF models for the llama, qwen2 and mistral paths of the decoder, with golden logits.

Writes, under tests/fixtures/decoder/:
  qwen2_tiny.gguf     arch qwen2: q/k/v biases, GQA (4 query heads on 2 kv heads), NEOX RoPE, tied output,
                      weights in F32, F16 and BF16 (BF16 and F16 are dequantised to float at load).
  llama_quant.gguf    arch llama: separate output.weight, GQA 2:1, d_ff 32, head size 32 with q_dim (64) != d_model
                      (256, the smallest row a K-quant block allows), rope_freqs.weight (llama 3.x frequency
                      factors), matrices in Q4_K, Q6_K, Q5_0 and Q8_0.
  mistral_tiny.gguf   arch mistral: MQA (1 kv head), a sliding window of 4 positions, RoPE on half of each
                      head (rope.dimension_count = head_dim / 2), linear RoPE scaling, F16 weights.
  arch_logits.json    for each model: its config, a few token sequences with the logits of every position,
                      and a greedy continuation, from the numpy float64 forward pass of
                      scripts/make_decoder_fixtures.py (Model) run on the file as written and read back with
                      gguf-py's GGUFReader and dequantisers (not ours).

No tokenizer: the models are tokenizer-free (the decoder loader does not need tokenizer metadata) and the
sequences are token ids.

Quantisation: gguf-py quantises Q5_0 and Q8_0 (gguf.quants.quantize) but not Q4_K or Q6_K, so for those we
write random valid blocks: random nibbles / 6-bit codes and packed 6-bit sub-block scales and mins, with the
fp16 super-block scales chosen so the weights come out with a spread near 1/sqrt(fan_in). Every byte pattern
of those fields is a valid block, and the reference dequantises with gguf-py, so nothing here depends on our
reading of the K-quant layouts.

RoPE pairing (why qwen2 is NEOX and llama/mistral are interleaved): llama.cpp's HF converter permutes the rows
of Q and K of llama (and mistral, which it converts as llama) so that the GGUF expects rotation of adjacent
pairs (x[2i], x[2i+1]) ("NORM" rope); for qwen2 it writes Q and K as Hugging Face has them and the model runs
with NEOX rope, pairs (x[i], x[i + d/2]), which is exactly transformers' rotate_half. `--check-transformers`
checks that claim for these very files: it builds transformers' Qwen2ForCausalLM and LlamaForCausalLM in
float64 from the dequantised tensors (un-permuting Q/K for llama, as the converter's inverse; copying them
as they are for qwen2) and compares its logits with the numpy reference under both pairings. Needs torch and
transformers (for example Debian's python3-torch plus `pip install transformers==4.40.2` in a venv with
--system-site-packages); the fixtures themselves need only gguf and numpy. Measured (torch 1.13, transformers
4.40.2, float64): qwen2_tiny matches transformers' Qwen2 to 2.4e-7 with NEOX and misses by 0.33 with NORM; a
plain llama model matches its Llama to 3.1e-7 with NORM (after un-permuting) and misses by 0.49 with NEOX.

Sliding window: the same check on mistral_tiny without partial/scaled RoPE shows transformers 4.40's eager
Mistral letting a query at p see keys [p - W, p] (W + 1 keys; matches to 2.5e-7, W keys miss by 1.0). We, like
llama.cpp (masked when p - k >= W) and Mistral's own reference code (xformers local attention of W), use
(p - W, p]: W keys. The two conventions are a known disagreement; they differ only past W tokens.

Usage: pip install gguf numpy
       python3 scripts/make_arch_fixtures.py [--check-transformers]
"""
import argparse
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_decoder_fixtures import Model  # noqa: E402  the same reference as the SmolLM2 fixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "decoder")


# ---- random valid K-quant blocks ----

def random_q4_k(rng, rows, cols, spread):
    """Q4_K blocks of 256: fp16 d, fp16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
    w = d * sc * q - dmin * m with sc, m in [0, 63], q in [0, 15]."""
    nb = rows * cols // 256
    d = (spread / 240.0 * rng.uniform(0.5, 1.5, nb)).astype(np.float16)  # sc*q has a spread of ~240
    dmin = (d.astype(np.float32) * 7.5).astype(np.float16)  # centres d*sc*q (mean ~ d*31.5*7.5) on m ~ 31.5
    scales = rng.integers(0, 256, (nb, 12), dtype=np.uint8)
    qs = rng.integers(0, 256, (nb, 128), dtype=np.uint8)
    blocks = np.concatenate([d.view(np.uint8).reshape(nb, 2), dmin.view(np.uint8).reshape(nb, 2), scales, qs],
                            axis=1)
    return blocks.reshape(rows, cols // 256 * 144)


def random_q6_k(rng, rows, cols, spread):
    """Q6_K blocks of 256: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, fp16 d.
    w = d * scale * (q - 32) with q in [0, 63]."""
    nb = rows * cols // 256
    ql = rng.integers(0, 256, (nb, 128), dtype=np.uint8)
    qh = rng.integers(0, 256, (nb, 64), dtype=np.uint8)
    scales = rng.integers(-64, 64, (nb, 16), dtype=np.int8)  # scale*(q-32) has a spread of ~37*18.5
    d = (spread / 690.0 * rng.uniform(0.5, 1.5, nb)).astype(np.float16)
    blocks = np.concatenate([ql, qh, scales.view(np.uint8), d.view(np.uint8).reshape(nb, 2)], axis=1)
    return blocks.reshape(rows, cols // 256 * 210)


# ---- the three models ----

def uniform(rng, shape, scale):
    return rng.uniform(-scale, scale, shape)


def matrix(rng, rows, cols):  # nn.Linear-like: uniform(+-1/sqrt(fan_in))
    return uniform(rng, (rows, cols), 1.0 / np.sqrt(cols))


def add_weight(writer, name, rng, rows, cols, kind):
    """Adds a [rows][cols] matrix (ggml shape [cols, rows]) stored as `kind`."""
    spread = 1.0 / np.sqrt(cols)
    if kind == "F32":
        writer.add_tensor(name, matrix(rng, rows, cols).astype(np.float32))
    elif kind == "F16":
        writer.add_tensor(name, matrix(rng, rows, cols).astype(np.float16))
    elif kind in ("BF16", "Q5_0", "Q8_0"):
        qt = QT[kind]
        writer.add_tensor(name, quantize(matrix(rng, rows, cols).astype(np.float32), qt), raw_dtype=qt)
    elif kind == "Q4_K":
        writer.add_tensor(name, random_q4_k(rng, rows, cols, spread), raw_dtype=QT.Q4_K)
    elif kind == "Q6_K":
        writer.add_tensor(name, random_q6_k(rng, rows, cols, spread), raw_dtype=QT.Q6_K)
    else:
        raise ValueError(kind)


def add_norm(writer, name, rng, n):
    writer.add_tensor(name, (1.0 + uniform(rng, n, 0.2)).astype(np.float32))


def write_model(path, spec, seed):
    """spec: arch, sizes, extra metadata, and the storage kind of each matrix."""
    rng = np.random.default_rng(seed)
    a = spec["arch"]
    d, nh, nkv, hd, ff, vocab = (spec[k] for k in ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab"))
    w = gguf.GGUFWriter(path, a)
    w.add_block_count(spec["n_layers"])
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    if hd != d // nh:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_context_length(spec.get("context", 256))
    w.add_layer_norm_rms_eps(spec["eps"])
    w.add_rope_freq_base(spec["rope_base"])
    if "rope_dim" in spec:
        w.add_rope_dimension_count(spec["rope_dim"])
    if "sliding_window" in spec:
        w.add_sliding_window(spec["sliding_window"])
    if "rope_linear_factor" in spec:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(spec["rope_linear_factor"])
    kinds = spec["kinds"]
    # Embedding rows are inputs, not a projection: give them unit-ish scale like a trained model's.
    add_weight(w, "token_embd.weight", rng, vocab, d, kinds["token_embd"])
    add_norm(w, "output_norm.weight", rng, d)
    if "output" in kinds:
        add_weight(w, "output.weight", rng, vocab, d, kinds["output"])
    if spec.get("rope_freqs"):
        rd = spec.get("rope_dim", hd)
        w.add_tensor("rope_freqs.weight", rng.uniform(1.0, 8.0, rd // 2).astype(np.float32))
    for l in range(spec["n_layers"]):
        p = f"blk.{l}."
        add_norm(w, p + "attn_norm.weight", rng, d)
        add_weight(w, p + "attn_q.weight", rng, nh * hd, d, kinds["attn_q"])
        add_weight(w, p + "attn_k.weight", rng, nkv * hd, d, kinds["attn_k"])
        add_weight(w, p + "attn_v.weight", rng, nkv * hd, d, kinds["attn_v"])
        if spec.get("qkv_bias"):
            # Biases big enough to matter (a dropped bias moves logits by far more than the tolerance).
            w.add_tensor(p + "attn_q.bias", uniform(rng, nh * hd, 0.5).astype(np.float32))
            w.add_tensor(p + "attn_k.bias", uniform(rng, nkv * hd, 0.5).astype(np.float32))
            w.add_tensor(p + "attn_v.bias", uniform(rng, nkv * hd, 0.5).astype(np.float32))
        add_weight(w, p + "attn_output.weight", rng, d, nh * hd, kinds["attn_output"])
        add_norm(w, p + "ffn_norm.weight", rng, d)
        add_weight(w, p + "ffn_gate.weight", rng, ff, d, kinds["ffn_gate"])
        add_weight(w, p + "ffn_up.weight", rng, ff, d, kinds["ffn_up"])
        add_weight(w, p + "ffn_down.weight", rng, d, ff, kinds["ffn_down"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


SPECS = {
    "qwen2_tiny": dict(
        arch="qwen2", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48, vocab=64,
        eps=1e-6, rope_base=1000000.0, qkv_bias=True,
        kinds=dict(token_embd="F16", attn_q="F32", attn_k="F16", attn_v="BF16", attn_output="F16",
                   ffn_gate="F16", ffn_up="F16", ffn_down="F16")),  # no "output": tied, as Qwen2-0.5B
    "llama_quant": dict(
        arch="llama", n_layers=1, d_model=256, n_heads=2, n_kv_heads=1, head_dim=32, d_ff=32, vocab=32,
        eps=1e-5, rope_base=500000.0, rope_freqs=True,
        kinds=dict(token_embd="Q6_K", output="Q4_K", attn_q="Q4_K", attn_k="Q6_K", attn_v="Q8_0",
                   attn_output="Q5_0", ffn_gate="Q4_K", ffn_up="Q5_0", ffn_down="Q8_0")),
    "mistral_tiny": dict(
        arch="mistral", n_layers=2, d_model=32, n_heads=4, n_kv_heads=1, head_dim=8, d_ff=48, vocab=48,
        eps=1e-5, rope_base=10000.0, rope_dim=4, sliding_window=4, rope_linear_factor=2.0,
        kinds=dict(token_embd="F16", output="F16", attn_q="F16", attn_k="F16", attn_v="F16", attn_output="F16",
                   ffn_gate="F16", ffn_up="F16", ffn_down="F16")),
}
STYLE = {"qwen2": "neox", "llama": "norm", "mistral": "norm"}


def greedy_with_margin(m, tokens, n_new, style):
    """Greedy continuation and the smallest gap between the best and second-best logit along it."""
    toks, out, margin = list(tokens), [], np.inf
    for _ in range(n_new):
        last = m.forward(toks, style)[-1]
        top2 = np.sort(last)[-2:]
        margin = min(margin, float(top2[1] - top2[0]))
        nxt = int(np.argmax(last))
        out.append(nxt)
        toks.append(nxt)
    return out, margin


def check_transformers(paths):
    import tempfile
    import torch
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.set_default_dtype(torch.float64)  # the whole HF model, masks included, in float64
    # transformers' Llama (4.40) has no head_dim != d_model / heads and no rope_freqs, so the llama pairing is
    # checked on a plain llama model of the same kind, written to a temporary file.
    tmp = tempfile.mkdtemp()
    plain_llama = dict(SPECS["mistral_tiny"], arch="llama", n_kv_heads=2,
                       kinds=dict(SPECS["mistral_tiny"]["kinds"], attn_q="F32", attn_k="F32"))
    for k in ("rope_dim", "sliding_window", "rope_linear_factor"):
        plain_llama.pop(k)
    write_model(os.path.join(tmp, "plain_llama.gguf"), plain_llama, seed=7)
    # Likewise transformers' Mistral has no partial rotary or linear scaling: its window is checked without them.
    plain_mistral = dict(SPECS["mistral_tiny"])
    for k in ("rope_dim", "rope_linear_factor"):
        plain_mistral.pop(k)
    write_model(os.path.join(tmp, "plain_mistral.gguf"), plain_mistral, seed=8)
    for name, spec, path in (("qwen2_tiny", SPECS["qwen2_tiny"], paths["qwen2_tiny"]),
                             ("plain_llama", plain_llama, os.path.join(tmp, "plain_llama.gguf")),
                             ("plain_mistral", plain_mistral, os.path.join(tmp, "plain_mistral.gguf"))):
        m = Model(path)
        common = dict(vocab_size=spec["vocab"], hidden_size=spec["d_model"], intermediate_size=spec["d_ff"],
                      num_hidden_layers=spec["n_layers"], num_attention_heads=spec["n_heads"],
                      num_key_value_heads=spec["n_kv_heads"], rms_norm_eps=spec["eps"], rope_theta=spec["rope_base"],
                      tie_word_embeddings="output" not in spec["kinds"], max_position_embeddings=256)
        if spec["head_dim"] != spec["d_model"] // spec["n_heads"]:
            common["head_dim"] = spec["head_dim"]
        if spec["arch"] == "qwen2":
            hf = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False)).to(torch.float64)
        elif spec["arch"] == "mistral":
            hf = MistralForCausalLM(MistralConfig(**common, sliding_window=spec["sliding_window"],
                                                  attn_implementation="eager")).to(torch.float64)
        else:
            hf = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False)).to(torch.float64)

        def unpermute(w, heads):  # inverse of llama.cpp's converter permute (HF rows -> interleaved pairs)
            return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

        sd = {"model.embed_tokens.weight": m.w["token_embd.weight"], "model.norm.weight": m.w["output_norm.weight"],
              "lm_head.weight": m.w["output.weight"]}
        for l in range(spec["n_layers"]):
            p, h = f"blk.{l}.", f"model.layers.{l}."
            q, k = m.w[p + "attn_q.weight"], m.w[p + "attn_k.weight"]
            if spec["arch"] != "qwen2":
                q, k = unpermute(q, spec["n_heads"]), unpermute(k, spec["n_kv_heads"])
            sd.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k,
                       h + "self_attn.v_proj.weight": m.w[p + "attn_v.weight"],
                       h + "self_attn.o_proj.weight": m.w[p + "attn_output.weight"],
                       h + "input_layernorm.weight": m.w[p + "attn_norm.weight"],
                       h + "post_attention_layernorm.weight": m.w[p + "ffn_norm.weight"],
                       h + "mlp.gate_proj.weight": m.w[p + "ffn_gate.weight"],
                       h + "mlp.up_proj.weight": m.w[p + "ffn_up.weight"],
                       h + "mlp.down_proj.weight": m.w[p + "ffn_down.weight"]})
            if spec.get("qkv_bias"):
                sd.update({h + "self_attn.q_proj.bias": m.w[p + "attn_q.bias"],
                           h + "self_attn.k_proj.bias": m.w[p + "attn_k.bias"],
                           h + "self_attn.v_proj.bias": m.w[p + "attn_v.bias"]})
        missing, unexpected = hf.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
        assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
        ids = [int(t) for t in np.random.default_rng(5).integers(0, spec["vocab"], 12)]
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].numpy()
        diffs = {s: float(np.abs(m.forward(ids, s) - ref).max()) for s in ("norm", "neox")}
        print(f"{name} ({spec['arch']}): max |numpy - transformers| logits by pairing: {diffs}; "
              f"the decoder uses {STYLE[spec['arch']]}")
        if m.window:  # which keys a window of W lets a query at p see: (p - W, p] or [p - W, p]
            style = STYLE[spec["arch"]]
            wide = m.window + 1
            d_w = float(np.abs(m.forward(ids, style) - ref).max())
            m.window = wide
            d_wide = float(np.abs(m.forward(ids, style) - ref).max())
            m.window = wide - 1
            print(f"  sliding window {m.window}: keys (p-W, p] differ by {d_w:.3g}, keys [p-W, p] by {d_wide:.3g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=OUT_DIR)
    ap.add_argument("--check-transformers", action="store_true")
    args = ap.parse_args()
    paths = {name: os.path.join(args.out_dir, name + ".gguf") for name in SPECS}

    if args.check_transformers:
        check_transformers(paths)
        return

    models = []
    for i, (name, spec) in enumerate(SPECS.items()):
        write_model(paths[name], spec, seed=100 + i)
        m = Model(paths[name])  # read back with gguf-py: the reference sees exactly the stored weights
        style = STYLE[spec["arch"]]
        rng = np.random.default_rng(200 + i)
        cases = []
        for n in (1, 6, 11):  # 11 > the mistral window of 4, so the window matters
            while True:  # redraw until greedy has no near-tie (a 1e-4 wobble must not flip a token)
                tokens = [int(t) for t in rng.integers(0, spec["vocab"], n)]
                greedy, margin = greedy_with_margin(m, tokens, 6, style)
                if margin > 0.02:
                    break
            logits = m.forward(tokens, style)
            other = m.forward(tokens, "neox" if style == "norm" else "norm")
            print(f"{name} n={n}: |logits| max {np.abs(logits).max():.3f}, other rope pairing moves them by "
                  f"{np.abs(logits - other).max():.3f}, greedy margin {margin:.4f}", file=sys.stderr)
            cases.append({"tokens": tokens,
                          "logits": [[float(f"{v:.7g}") for v in row] for row in logits],
                          "greedy": greedy, "greedy_margin": round(margin, 6)})
        config = {k: v for k, v in spec.items() if k != "kinds"}
        models.append({"name": name, "file": name + ".gguf", "rope": style, "config": config,
                       "kinds": spec["kinds"], "cases": cases})
    out = os.path.join(args.out_dir, "arch_logits.json")
    with open(out, "w") as f:
        json.dump({"generator": "scripts/make_arch_fixtures.py (numpy float64 forward of make_decoder_fixtures.Model "
                                "over gguf-py's dequantised weights)",
                   "models": models}, f, separators=(",", ":"))
        f.write("\n")
    for p in list(paths.values()) + [out]:
        print(f"wrote {os.path.relpath(p, ROOT)} ({os.path.getsize(p)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
