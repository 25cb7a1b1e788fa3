#!/usr/bin/env python3
"""Writes tests/fixtures/quant/golden_blocks.bin: float blocks and their q8_0 / q4_0 encodings and decodings as
computed by gguf-py's reference (gguf.quants, `pip install gguf`), which element_types_quant_test compares with
kvcache's own quantisation bit for bit.

Layout (little-endian): b"KVQG", u32 version = 1, u32 n_blocks, then
  inputs      float32 [n_blocks][32]
  q8_0        [n_blocks][34]  (fp16 d, 32 x int8)
  q4_0        [n_blocks][18]  (fp16 d, 16 bytes of nibbles)
  q8_0 values float32 [n_blocks][32]  (gguf-py's dequantisation of the q8_0 blocks)
  q4_0 values float32 [n_blocks][32]
Run: python3 scripts/make_quant_golden.py [out]
"""
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import quants
from gguf.constants import GGMLQuantizationType as Q


def inputs() -> np.ndarray:
    rng = np.random.default_rng(20261201)
    blocks = []
    for scale in (1e-6, 1e-3, 0.1, 1.0, 3.0, 50.0, 1e4):  # random normal blocks at several magnitudes
        blocks += list(rng.standard_normal((6, 32)).astype(np.float32) * np.float32(scale))
    blocks += list(rng.uniform(-1, 1, (6, 32)).astype(np.float32))
    ties = np.arange(-15.5, 16.5, 1.0, dtype=np.float32)  # max 15.5... with 127 present every x/d is a .5 tie
    t = ties.copy(); t[0] = 127.0; blocks.append(t)
    t = -ties.copy(); t[5] = -127.0; blocks.append(t)
    blocks.append(np.zeros(32, np.float32))                                   # all zero: d = 0
    z = np.zeros(32, np.float32); z[0] = -0.0; z[3] = -0.0; blocks.append(z)   # signed zeros
    one = np.zeros(32, np.float32); one[17] = -2.5; blocks.append(one)         # a single negative maximum
    tie_max = rng.standard_normal(32).astype(np.float32); tie_max[4] = 9.0; tie_max[20] = -9.0  # argmax tie: first wins
    blocks.append(tie_max)
    q4_edges = (np.arange(32, dtype=np.float32) - 16.0) / np.float32(2.0)     # -8 .. 7.5 in halves: q4 boundaries
    blocks.append(q4_edges); blocks.append(-q4_edges)
    blocks.append(np.full(32, 1e-7, np.float32))                              # d subnormal in fp16
    blocks.append(rng.standard_normal(32).astype(np.float32) * np.float32(1e5))  # d near fp16's top
    return np.stack(blocks).astype(np.float32)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/fixtures/quant/golden_blocks.bin"
    x = inputs()
    q8 = quants.quantize(x, Q.Q8_0)
    q4 = quants.quantize(x, Q.Q4_0)
    assert q8.shape == (len(x), 34) and q4.shape == (len(x), 18)
    d8 = quants.dequantize(q8, Q.Q8_0).astype(np.float32)
    d4 = quants.dequantize(q4, Q.Q4_0).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"KVQG" + struct.pack("<II", 1, len(x)))
        for a in (x, q8, q4, d8, d4):
            f.write(np.ascontiguousarray(a).tobytes())
    print(f"{out}: {len(x)} blocks")


if __name__ == "__main__":
    main()
