#!/usr/bin/env python3
"""Builds the encoder-decoder golden fixtures in tests/fixtures/seq2seq/ with PyTorch.

    pip install torch safetensors numpy
    python3 scripts/make_seq2seq_fixtures.py            # writes tests/fixtures/seq2seq/<name>.{json,safetensors}

For each small seeded model it writes
    <name>.config.json      the model config kvcache::EncoderDecoderConfig reads
    <name>.safetensors      model.state_dict() exactly as safetensors.torch.save_file writes it
    <name>.expected.json    reference outputs: encoder output of sources[0], decoder logits for sources[0]
                            with a target prefix, and greedy tokens for every source

The C++ model (include/kvcache/model/encoder_decoder.hpp) runs any model of the class Seq2SeqTransformer
below after `safetensors.torch.save_file(model.state_dict(), path)` plus a config JSON from `config_of`.
Notes on the PyTorch side:
  * nn.MultiheadAttention packs the q, k, v projections into in_proj_weight [3*d_model, d_model] (rows
    0..d-1 are q, d..2d-1 are k, 2d..3d-1 are v) and in_proj_bias [3*d_model].
  * nn.Transformer always has a final encoder.norm and decoder.norm, for post-norm (norm_first=False) too.
  * The reference runs in eval mode with dropout=0 and the causal mask from
    nn.Transformer.generate_square_subsequent_mask(n); padded batches use key padding masks (True = pad).
    PyTorch's encoder fast path (nested tensors) is allowed: it computes the same function.
  * Sinusoidal positions are a non-persistent buffer, so they are not in the state_dict: the C++ side builds
    the same table (computed in float32 exactly as below). Learned positions are src_pos.weight / tgt_pos.weight.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file


def sinusoid_table(max_positions: int, d_model: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p * w_i), PE[p, 2i+1] = cos(p * w_i), w_i = exp(-2i * ln(10000) / d_model), in float32."""
    position = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_positions, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


class Seq2SeqTransformer(nn.Module):
    """The module whose state_dict kvcache's EncoderDecoder loads.

    Tensor names: src_embed.weight [src_vocab, d], tgt_embed.weight [tgt_vocab, d],
    (learned positions only) src_pos.weight / tgt_pos.weight [max_positions, d],
    transformer.{encoder,decoder}.layers.N.* and transformer.{encoder,decoder}.norm.*, generator.weight
    [tgt_vocab, d] and generator.bias [tgt_vocab].
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, d_model, nhead, num_encoder_layers, num_decoder_layers,
                 dim_feedforward, activation="relu", norm_first=False, positions="sinusoidal", max_positions=64,
                 layer_norm_eps=1e-5, scale_embeddings=True):
        super().__init__()
        self.d_model = d_model
        self.embed_scale = math.sqrt(d_model) if scale_embeddings else 1.0
        self.positions = positions
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        if positions == "learned":
            self.src_pos = nn.Embedding(max_positions, d_model)
            self.tgt_pos = nn.Embedding(max_positions, d_model)
        else:
            self.register_buffer("pos_table", sinusoid_table(max_positions, d_model), persistent=False)
        self.transformer = nn.Transformer(d_model=d_model, nhead=nhead, num_encoder_layers=num_encoder_layers,
                                          num_decoder_layers=num_decoder_layers, dim_feedforward=dim_feedforward,
                                          dropout=0.0, activation=activation, layer_norm_eps=layer_norm_eps,
                                          batch_first=True, norm_first=norm_first)
        self.generator = nn.Linear(d_model, tgt_vocab_size)

    def _embed(self, tokens, table, pos):
        n = tokens.shape[1]
        p = pos.weight[:n] if self.positions == "learned" else self.pos_table[:n]
        return table(tokens) * self.embed_scale + p

    def encode(self, src, src_key_padding_mask=None):
        return self.transformer.encoder(self._embed(src, self.src_embed, getattr(self, "src_pos", None)),
                                        src_key_padding_mask=src_key_padding_mask)

    def decode(self, tgt, memory, memory_key_padding_mask=None):
        n = tgt.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        out = self.transformer.decoder(self._embed(tgt, self.tgt_embed, getattr(self, "tgt_pos", None)), memory,
                                       tgt_mask=mask, tgt_is_causal=True,
                                       memory_key_padding_mask=memory_key_padding_mask)
        return self.generator(out)

    def forward(self, src, tgt, src_key_padding_mask=None):
        return self.decode(tgt, self.encode(src, src_key_padding_mask), src_key_padding_mask)


def config_of(model: Seq2SeqTransformer, kw: dict, bos: int, eos: int, pad: int) -> dict:
    return {
        "architecture": "nn.Transformer",
        "d_model": kw["d_model"], "nhead": kw["nhead"],
        "num_encoder_layers": kw["num_encoder_layers"], "num_decoder_layers": kw["num_decoder_layers"],
        "dim_feedforward": kw["dim_feedforward"], "activation": kw.get("activation", "relu"),
        "norm_first": kw.get("norm_first", False), "layer_norm_eps": kw.get("layer_norm_eps", 1e-5),
        "src_vocab_size": kw["src_vocab_size"], "tgt_vocab_size": kw["tgt_vocab_size"],
        "positions": kw.get("positions", "sinusoidal"), "max_positions": kw.get("max_positions", 64),
        "scale_embeddings": kw.get("scale_embeddings", True),
        "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
    }


@torch.no_grad()
def greedy(model, src, bos, eos, max_new_tokens):
    memory = model.encode(src)
    tgt = [bos]
    for _ in range(max_new_tokens):
        logits = model.decode(torch.tensor([tgt]), memory)[0, -1]
        nxt = int(torch.argmax(logits))
        tgt.append(nxt)
        if nxt == eos:
            break
    return tgt[1:]


@torch.no_grad()
def build(name, seed, storage, out_dir, **kw):
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(**kw).eval()
    if storage != torch.float32:  # the reference must see the same rounded weights the file stores
        for p in model.parameters():
            p.copy_(p.to(storage).to(torch.float32))
    bos, eos, pad = 1, 2, 0
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = [7, 3, 11, 5]
    sources = [torch.randint(3, kw["src_vocab_size"], (n,), generator=gen).tolist() for n in lengths]
    prefix = [bos] + torch.randint(3, kw["tgt_vocab_size"], (6,), generator=gen).tolist()
    max_new_tokens = 12

    src0 = torch.tensor([sources[0]])
    memory0 = model.encode(src0)
    logits = model.decode(torch.tensor([prefix]), memory0)[0]

    # A padded batch with key padding masks gives every row what it gives alone (checked, not stored:
    # the C++ test checks its own batch against these single-source results).
    longest = max(lengths)
    batch = torch.full((len(sources), longest), pad, dtype=torch.long)
    pad_mask = torch.ones(len(sources), longest, dtype=torch.bool)
    for i, s in enumerate(sources):
        batch[i, :len(s)] = torch.tensor(s)
        pad_mask[i, :len(s)] = False
    tgt_batch = torch.tensor([prefix] * len(sources))
    batch_logits = model(batch, tgt_batch, src_key_padding_mask=pad_mask)
    for i, s in enumerate(sources):
        alone = model(torch.tensor([s]), torch.tensor([prefix]))[0]
        assert torch.allclose(batch_logits[i], alone, atol=1e-5), f"{name}: padded row {i} differs"

    state = {k: v.to(storage).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, name + ".safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, name + ".config.json"), "w") as f:
        json.dump(config_of(model, kw, bos, eos, pad), f, indent=1)
    expected = {
        "sources": sources,
        "encoder_output": memory0[0].flatten().tolist(),                 # [len(sources[0])][d_model]
        "encoder_output_sum": float(memory0.double().sum()),
        "target_prefix": prefix,
        "logits": logits.flatten().tolist(),                             # [len(prefix)][tgt_vocab]
        "max_new_tokens": max_new_tokens,
        "greedy": [greedy(model, torch.tensor([s]), bos, eos, max_new_tokens) for s in sources],
    }
    with open(os.path.join(out_dir, name + ".expected.json"), "w") as f:
        json.dump(expected, f)
    print(name, "greedy:", expected["greedy"])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "seq2seq")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    base = dict(src_vocab_size=32, tgt_vocab_size=28, d_model=32, nhead=4, num_encoder_layers=2,
                num_decoder_layers=2, dim_feedforward=32, max_positions=32)
    build("post_norm_relu", 11, torch.float32, out_dir, **base)
    build("pre_norm_relu", 12, torch.float16, out_dir, **{**base, "norm_first": True})
    build("post_norm_gelu", 17, torch.bfloat16, out_dir, **{**base, "activation": "gelu", "num_encoder_layers": 3,
                                                           "num_decoder_layers": 1, "nhead": 2})
    build("pre_norm_learned", 14, torch.float16, out_dir, **{**base, "norm_first": True, "positions": "learned",
                                                            "activation": "gelu", "nhead": 8,
                                                            "num_encoder_layers": 1})


if __name__ == "__main__":
    main()
