#!/usr/bin/env python3
"""Trains the small encoder-decoder of examples/models/numbers/: English number words to digits.

    pip install torch safetensors numpy
    python3 scripts/train_seq2seq_numbers.py              # a few minutes on one CPU core
    ./build/examples/example_seq2seq "four hundred and twelve"      # -> 412

The task can be checked by eye: the source is a number from 0 to 999,999 spelled out in English words
("four hundred and twelve", "seventy-one thousand and six", "nine hundred ninety"), the target its digits.
The source is tokenised by words (hyphens and commas split words too; "and" is optional), the target by
characters. The model is scripts/make_seq2seq_fixtures.py's Seq2SeqTransformer (nn.Transformer plus
embeddings, sinusoidal positions and an output projection), so kvcache's EncoderDecoder runs it as is.

Held-out numbers: every number n with n % 97 == 13 (about 1 %, spread over the whole range) is never
trained on; the accuracy the script prints and writes to report.json is exact match on a sample of those.

It writes to the output directory (default examples/models/numbers):
    config.json         the EncoderDecoderConfig
    model.safetensors   the state_dict in float16 (the C++ side widens to float; PyTorch's reference
                        outputs below are computed with the same rounded weights)
    vocab.json          the source (word-level) and target (character-level) vocabularies
    samples.json        held-out inputs with PyTorch's greedy output (tests/encoder_decoder_test.cpp
                        checks that kvcache generates the same tokens)
    report.json         training details: data, size, steps, time, held-out accuracy
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_seq2seq_fixtures import Seq2SeqTransformer, config_of  # noqa: E402

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SPECIALS = ["<pad>", "<bos>", "<eos>"]  # ids 0, 1, 2 in both vocabularies
PAD, BOS, EOS = 0, 1, 2
SOURCE_TOKENS = SPECIALS + ONES + TENS[2:] + ["hundred", "thousand", "and"]
TARGET_TOKENS = SPECIALS + list("0123456789")
LARGEST = 999_999


def below_hundred(n):
    if n < 20:
        return [ONES[n]]
    tens, ones = divmod(n, 10)
    return [TENS[tens]] + ([ONES[ones]] if ones else [])


def below_thousand(n, with_and):
    hundreds, rest = divmod(n, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if rest:
        if hundreds and with_and:
            words.append("and")
        words += below_hundred(rest)
    return words


def spell(n, with_and=True):
    """British style with "and" ("two thousand and five", "four hundred and twelve"), else without."""
    if n == 0:
        return ["zero"]
    thousands, rest = divmod(n, 1000)
    words = below_thousand(thousands, with_and) + ["thousand"] if thousands else []
    if rest:
        if thousands and rest < 100 and with_and:
            words.append("and")
        words += below_thousand(rest, with_and)
    return words


def held_out(n):
    return n % 97 == 13


def source_ids(words):
    index = {w: i for i, w in enumerate(SOURCE_TOKENS)}
    return [index[w] for w in words]


def target_ids(n):
    return [TARGET_TOKENS.index(c) for c in str(n)] + [EOS]


def batch_of(numbers, rng):
    srcs = [source_ids(spell(n, with_and=rng.random() < 0.7)) for n in numbers]
    tgts = [target_ids(n) for n in numbers]
    src = torch.full((len(numbers), max(map(len, srcs))), PAD, dtype=torch.long)
    tgt_in = torch.full((len(numbers), max(map(len, tgts))), PAD, dtype=torch.long)
    tgt_out = torch.full_like(tgt_in, -100)  # ignored by the loss
    for i, (s, t) in enumerate(zip(srcs, tgts)):
        src[i, :len(s)] = torch.tensor(s)
        tgt_in[i, :len(t)] = torch.tensor([BOS] + t[:-1])
        tgt_out[i, :len(t)] = torch.tensor(t)
    return src, src == PAD, tgt_in, tgt_in == PAD, tgt_out


def sample_numbers(rng, count):
    """Uniform over digit counts first (so 7 and 70 are seen as often as 700,000), then over the numbers."""
    out = []
    while len(out) < count:
        digits = rng.randint(1, 6)
        n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
        if not held_out(n):
            out.append(n)
    return out


@torch.no_grad()
def greedy_batch(model, sources, max_new=8):
    """Greedy decoding of a batch of source id lists; returns the generated ids (without BOS, up to EOS)."""
    src = torch.full((len(sources), max(map(len, sources))), PAD, dtype=torch.long)
    for i, s in enumerate(sources):
        src[i, :len(s)] = torch.tensor(s)
    pad = src == PAD
    memory = model.encode(src, src_key_padding_mask=pad)
    tgt = torch.full((len(sources), 1), BOS, dtype=torch.long)
    done = torch.zeros(len(sources), dtype=torch.bool)
    for _ in range(max_new):
        logits = model.decode(tgt, memory, memory_key_padding_mask=pad)[:, -1]
        nxt = logits.argmax(-1)
        tgt = torch.cat([tgt, nxt[:, None]], 1)
        done |= nxt == EOS
        if bool(done.all()):
            break
    out = []
    for row in tgt[:, 1:].tolist():
        out.append(row[:row.index(EOS) + 1] if EOS in row else row)
    return out


def text_of(ids):
    return "".join(TARGET_TOKENS[i] for i in ids if i >= len(SPECIALS))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "examples", "models", "numbers"))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--minutes", type=float, default=8.0, help="stop training after this much time")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2, help="encoder layers = decoder layers")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    kw = dict(src_vocab_size=len(SOURCE_TOKENS), tgt_vocab_size=len(TARGET_TOKENS), d_model=args.d_model, nhead=4,
              num_encoder_layers=args.layers, num_decoder_layers=args.layers, dim_feedforward=2 * args.d_model,
              activation="relu", norm_first=True, max_positions=32)
    model = Seq2SeqTransformer(**kw)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    warmup, peak_lr = 200, 2e-3
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    print(f"{params} parameters; training up to {args.steps} steps of {args.batch} or {args.minutes} minutes",
          flush=True)

    start = time.time()
    step = 0
    model.train()
    while step < args.steps and time.time() - start < args.minutes * 60:
        src, src_pad, tgt_in, tgt_pad, tgt_out = batch_of(sample_numbers(rng, args.batch), rng)
        memory = model.encode(src, src_key_padding_mask=src_pad)
        n = tgt_in.shape[1]
        out = model.transformer.decoder(model._embed(tgt_in, model.tgt_embed, getattr(model, "tgt_pos", None)), memory,
                                        tgt_mask=torch.triu(torch.ones(n, n, dtype=torch.bool), 1), tgt_is_causal=True,
                                        tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        loss = loss_fn(model.generator(out).reshape(-1, len(TARGET_TOKENS)), tgt_out.reshape(-1))
        # cosine decay over whichever budget runs out first, steps or minutes, so a slow machine still ends
        # with a small learning rate
        progress = min(1.0, max(step / args.steps, (time.time() - start) / (args.minutes * 60)))
        for group in opt.param_groups:
            group["lr"] = peak_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 250 == 0:
            print(f"step {step}  loss {loss.item():.4f}  {time.time() - start:.0f} s", flush=True)
    train_seconds = time.time() - start
    model.eval()

    # What the file stores is float16: the reference outputs below come from the same rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))

    held = [n for n in range(LARGEST + 1) if held_out(n)]
    eval_rng = random.Random(12345)
    eval_numbers = eval_rng.sample(held, 2000)
    correct = {True: 0, False: 0}
    for with_and in (True, False):
        for i in range(0, len(eval_numbers), 250):
            chunk = eval_numbers[i:i + 250]
            outs = greedy_batch(model, [source_ids(spell(n, with_and)) for n in chunk])
            correct[with_and] += sum(text_of(o) == str(n) and o[-1:] == [EOS] for n, o in zip(chunk, outs))
    accuracy = {"with_and": correct[True] / len(eval_numbers), "without_and": correct[False] / len(eval_numbers)}
    print(f"held-out exact match: {accuracy}  ({train_seconds:.0f} s of training, {step} steps)", flush=True)

    samples = []
    fixed = [0, 7, 13, 40, 412, 1000, 2005, 71006, 123456, 999999]
    for n in fixed + eval_numbers[:40]:
        for with_and in ((True, False) if n in (412, 2005) else (True,)):
            words = spell(n, with_and)
            out = greedy_batch(model, [source_ids(words)])[0]
            samples.append({"text": " ".join(words), "number": n, "held_out": held_out(n), "greedy": out,
                            "greedy_text": text_of(out)})

    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config_of(model, kw, BOS, EOS, PAD), f, indent=1)
    with open(os.path.join(args.out, "vocab.json"), "w") as f:
        special = list(range(len(SPECIALS)))  # control tokens: never produced from text, never printed
        json.dump({"source": {"level": "word", "tokens": SOURCE_TOKENS, "special": special},
                   "target": {"level": "char", "tokens": TARGET_TOKENS, "special": special}}, f, indent=1)
    with open(os.path.join(args.out, "samples.json"), "w") as f:
        json.dump({"max_new_tokens": 8, "samples": samples}, f, indent=1)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump({"task": "English number words (0..999999) to digits",
                   "held_out": "n % 97 == 13, never trained on; accuracy on 2000 of them",
                   "parameters": params, "config": kw, "steps": step, "batch": args.batch,
                   "train_seconds": round(train_seconds, 1), "threads": args.threads, "seed": args.seed,
                   "torch": torch.__version__, "held_out_exact_match": accuracy}, f, indent=1)
    print("wrote", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
