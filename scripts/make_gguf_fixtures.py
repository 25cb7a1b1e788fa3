#!/usr/bin/env python3
"""Generates the golden fixtures for the GGUF reader tests (tests/gguf_*_test.cpp) under tests/fixtures/gguf/.

The reference is the `gguf` package (gguf-py, the GGUF writer/reader of the llama.cpp project) with numpy:
  pip install gguf numpy
  python3 scripts/make_gguf_fixtures.py            # writes tests/fixtures/gguf/
Deterministic (fixed seeds): re-running it gives the same bytes for the same gguf/numpy versions.

What it writes:
  dequant_<TYPE>.json   for F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K: a few blocks of raw
                        bytes (hex) and gguf.quants.dequantize's float32 output for them, as IEEE bit patterns
                        (so the comparison can be exact and NaNs survive). Simple types are quantised from random
                        data with gguf.quants.quantize where gguf-py can (plus a few random-byte blocks); the
                        K-quants (gguf-py has no quantiser for them) are random bytes with finite fp16 scales.
  type_info.json        block elements / bytes and ggml names of every TensorType in gguf.hpp (GGML_QUANT_SIZES).
  all_types_v3.gguf     written with gguf.GGUFWriter: every metadata value type, arrays of every type, nested
   + .json manifest     arrays, an empty string, general.alignment = 64, and tensors of all eleven dequantised
                        types with 1 to 4 dimensions. The manifest lists every key (type + value, floats as bits)
                        and every tensor (shape in ggml order, offset, sizes, absolute data offset, golden floats).
  handmade_v2.gguf      version 2, written byte by byte here (gguf-py only writes version 3): empty arrays,
   + .json manifest     nested arrays of 64-bit integers, default alignment (32), the last tensor ending exactly at
                        the end of the file (so every shorter prefix is a truncated file).
  metadata_only_v3.gguf no tensors, metadata only (GGUFWriter), with a 300-entry string array.
   + .json manifest
  smollm2_rows.json     if models/SmolLM2-135M-Instruct.Q4_1.gguf is present: a few dequantised rows of the real
                        model (Q8_0, Q4_1, F32 tensors) from gguf.GGUFReader + gguf.quants.dequantize.

Every .gguf written here is read back with gguf.GGUFReader and checked against its manifest, so a fixture that
gguf-py itself cannot read never gets committed.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFValueType as VT
    from gguf.constants import GGML_QUANT_SIZES
except ImportError:  # pragma: no cover
    sys.exit("make_gguf_fixtures.py needs the gguf package: pip install gguf numpy")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "gguf"
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tensor types kvcache::gguf::TensorType names (gguf.hpp), and the ones it dequantises.
ENUM_TYPES = [QT.F32, QT.F16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q8_1,
              QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q8_K, QT.BF16]
DEQUANT_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K]

# Byte offsets of the fp16 scale fields inside one block: these get finite values in random-byte blocks.
FP16_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}


# ---------------------------------------------------------------------------------------------------------------
# helpers

def f32_bits(values) -> list[int]:
    return [int(b) for b in np.ascontiguousarray(np.asarray(values, dtype=np.float32)).view(np.uint32).ravel()]


def f64_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def reference_dequantize(raw: np.ndarray, qtype: QT) -> np.ndarray:
    """gguf-py's dequantisation of raw little-endian block bytes, flattened to float32."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8).ravel()
    if qtype == QT.F32:
        return raw.view(np.float32).copy()
    if qtype == QT.F16:
        return raw.view(np.float16).astype(np.float32)
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    out = gguf.quants.dequantize(raw.reshape(-1, block_bytes), qtype)
    return np.asarray(out, dtype=np.float32).ravel()


def finite_fp16(rng: np.random.Generator, lo_exp: int = -10, hi_exp: int = 2) -> np.float16:
    """A random finite, normal fp16 value of either sign with magnitude 2^lo_exp .. 2^hi_exp."""
    mag = 2.0 ** rng.uniform(lo_exp, hi_exp)
    return np.float16(mag if rng.random() < 0.5 else -mag)


def random_blocks(rng: np.random.Generator, qtype: QT, n: int, subnormal_scale: bool = False) -> np.ndarray:
    """n random blocks whose fp16 scale fields are finite (the first with a subnormal d if asked)."""
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n, block_bytes), dtype=np.uint8)
    for b in range(n):
        for off in FP16_FIELDS[qtype]:
            v = finite_fp16(rng)
            if subnormal_scale and b == 0 and off == FP16_FIELDS[qtype][0]:
                v = np.uint16(0x0001 + rng.integers(0, 0x3FF)).view(np.float16)  # fp16 subnormal
            blocks[b, off:off + 2] = np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
    return blocks


def quantizable(qtype: QT) -> bool:
    return qtype in (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.BF16)


def make_raw(rng: np.random.Generator, qtype: QT, n_elements: int) -> np.ndarray:
    """Raw bytes of n_elements of type qtype: quantised random data where gguf-py can, random blocks otherwise."""
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    assert n_elements % block_elems == 0
    if qtype == QT.F32:
        return rng.standard_normal(n_elements).astype(np.float32).view(np.uint8)
    if qtype == QT.F16:
        return rng.standard_normal(n_elements).astype(np.float16).view(np.uint8)
    if quantizable(qtype):
        data = (rng.standard_normal(n_elements) * rng.uniform(0.1, 3.0)).astype(np.float32)
        return np.asarray(gguf.quants.quantize(data.reshape(-1, block_elems), qtype), dtype=np.uint8).ravel()
    return random_blocks(rng, qtype, n_elements // block_elems).ravel()


# ---------------------------------------------------------------------------------------------------------------
# (a) dequantisation goldens, one file per type

def special_f32() -> np.ndarray:
    bits = [0x00000000, 0x80000000, 0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
            0x7F800000, 0xFF800000, 0x7FC00000, 0x3F800000, 0xBF800000, 0x34000000, 0x4B000001]
    return np.array(bits, dtype=np.uint32).view(np.float32)


def special_f16_bits() -> list[int]:
    # zero, -zero, smallest/largest subnormal, smallest normal, 1, -2, largest finite, infinities, NaNs
    return [0x0000, 0x8000, 0x0001, 0x03FF, 0x8001, 0x0400, 0x3C00, 0xC000, 0x7BFF, 0xFBFF,
            0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x3555, 0x1234]


def special_bf16_bits() -> list[int]:
    return [0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x3F80, 0xBF80, 0x7F7F, 0xFF7F,
            0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x4049, 0x3EAA, 0x0100]


def dequant_case(rng: np.random.Generator, qtype: QT) -> tuple[np.ndarray, list[str]]:
    """Raw bytes of a few blocks of qtype, and a note per block saying where it came from."""
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    notes: list[str] = []
    if qtype == QT.F32:
        vals = np.concatenate([special_f32(), rng.standard_normal(50).astype(np.float32) * 10])
        return vals.view(np.uint8), ["14 special values (zeros, subnormals, extremes, inf, NaN), 50 random"]
    if qtype == QT.F16:
        vals = np.concatenate([np.array(special_f16_bits(), dtype=np.uint16),
                               (rng.standard_normal(48) * 100).astype(np.float16).view(np.uint16)])
        return vals.view(np.uint8), ["16 special fp16 patterns (zeros, subnormals, max, inf, NaN), 48 random"]
    if qtype == QT.BF16:
        data = np.concatenate([rng.standard_normal(32) * 1e3, rng.standard_normal(16) * 1e-30]).astype(np.float32)
        q = np.asarray(gguf.quants.quantize(data, QT.BF16), dtype=np.uint8).view(np.uint16)
        vals = np.concatenate([np.array(special_bf16_bits(), dtype=np.uint16), q])
        return vals.view(np.uint8), ["16 special bf16 patterns", "48 quantised by gguf.quants.quantize(BF16)"]

    parts = []
    if quantizable(qtype):
        data = np.concatenate([
            rng.standard_normal(block_elems),                   # ordinary
            rng.standard_normal(block_elems) * 1000.0,          # large
            np.full(block_elems, 0.75),                         # constant block (max == min)
            np.zeros(block_elems),                              # all zero (d == 0)
            -np.abs(rng.standard_normal(block_elems)) - 5.0,    # all negative, offset
        ]).astype(np.float32)
        q = np.asarray(gguf.quants.quantize(data.reshape(-1, block_elems), qtype), dtype=np.uint8)
        parts.append(q)
        notes.append("blocks 0-4: gguf.quants.quantize of random normal, x1000, constant 0.75, zeros, all < -5")
        rb = random_blocks(rng, qtype, 3, subnormal_scale=True)
        parts.append(rb)
        notes.append("blocks 5-7: random bytes with finite fp16 scales (block 5: subnormal d)")
    else:
        rb = random_blocks(rng, qtype, 4, subnormal_scale=True)
        parts.append(rb)
        notes.append("blocks 0-3: random bytes with finite fp16 scales (block 0: subnormal d); "
                     "gguf-py has no quantiser for this type")
    return np.concatenate(parts).ravel(), notes


def write_dequant_fixtures(out: Path, rng: np.random.Generator) -> None:
    for qtype in DEQUANT_TYPES:
        raw, notes = dequant_case(rng, qtype)
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        assert raw.size % block_bytes == 0
        expected = reference_dequantize(raw, qtype)
        n_blocks = raw.size // block_bytes
        assert expected.size == n_blocks * block_elems
        doc = {
            "generator": "scripts/make_gguf_fixtures.py (gguf %s, numpy %s)" % (gguf_version(), np.__version__),
            "type": qtype.name, "type_id": int(qtype),
            "block_elements": block_elems, "block_bytes": block_bytes,
            "n_blocks": n_blocks, "n_elements": int(expected.size),
            "notes": notes,
            "bytes_hex": raw.tobytes().hex(),
            "expected_f32_bits": f32_bits(expected),
        }
        write_json(out / f"dequant_{qtype.name}.json", doc)


def write_type_info(out: Path) -> None:
    doc = {"types": [{"name": t.name, "id": int(t), "block_elements": GGML_QUANT_SIZES[t][0],
                      "block_bytes": GGML_QUANT_SIZES[t][1], "dequantized": t in DEQUANT_TYPES}
                     for t in ENUM_TYPES]}
    write_json(out / "type_info.json", doc)


# ---------------------------------------------------------------------------------------------------------------
# metadata values: how they are written and how the manifest records them

class MV:
    """A metadata value of an explicit GGUF type (arrays: element type + list of MV or plain values)."""

    def __init__(self, vtype: VT, value, element_type: VT | None = None):
        self.vtype, self.value, self.element_type = vtype, value, element_type


def manifest_value(vtype: VT, value, element_type: VT | None = None):
    """JSON form: integers and bools as themselves, strings as strings, floats as IEEE bits,
    arrays as {"element_type": ..., "values": [...]} (nested arrays recursively)."""
    if vtype == VT.FLOAT32:
        return f32_bits([value])[0]
    if vtype == VT.FLOAT64:
        return f64_bits(value)
    if vtype == VT.ARRAY:
        assert element_type is not None
        vals = []
        for v in value:
            if element_type == VT.ARRAY:
                assert isinstance(v, MV)
                vals.append(manifest_value(VT.ARRAY, v.value, v.element_type))
            else:
                vals.append(manifest_value(element_type, v))
        return {"element_type": element_type.name, "values": vals}
    if vtype == VT.BOOL:
        return bool(value)
    return value


SCALAR_FMT = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
              VT.FLOAT32: "<f", VT.BOOL: "<B", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}


def pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def pack_value(vtype: VT, value, element_type: VT | None = None) -> bytes:
    """Our own GGUF value encoder (used for the hand-made version-2 file)."""
    if vtype == VT.STRING:
        return pack_string(value)
    if vtype == VT.ARRAY:
        assert element_type is not None
        out = struct.pack("<IQ", int(element_type), len(value))
        for v in value:
            if element_type == VT.ARRAY:
                out += pack_value(VT.ARRAY, v.value, v.element_type)
            else:
                out += pack_value(element_type, v)
        return out
    return struct.pack(SCALAR_FMT[vtype], int(value) if vtype == VT.BOOL else value)


# ---------------------------------------------------------------------------------------------------------------
# (b) complete .gguf files

def all_types_metadata() -> list[tuple[str, VT, object, VT | None]]:
    """(key, type, value, element type) for every metadata value type, arrays of each, nested arrays."""
    f32 = float(np.float32(np.pi))
    return [
        ("test.uint8", VT.UINT8, 200, None),
        ("test.int8", VT.INT8, -100, None),
        ("test.uint16", VT.UINT16, 60000, None),
        ("test.int16", VT.INT16, -30000, None),
        ("test.uint32", VT.UINT32, 4000000000, None),
        ("test.int32", VT.INT32, -2000000000, None),
        ("test.float32", VT.FLOAT32, f32, None),
        ("test.bool_true", VT.BOOL, True, None),
        ("test.bool_false", VT.BOOL, False, None),
        ("test.string", VT.STRING, "hello, gguf", None),
        ("test.string_utf8", VT.STRING, "h\u00e9llo \u4e16\u754c \U0001F389 tab\tnl\n", None),
        ("test.string_empty", VT.STRING, "", None),
        ("test.uint64", VT.UINT64, 2**64 - 1, None),
        ("test.int64", VT.INT64, -2**63, None),
        ("test.float64", VT.FLOAT64, 0.1, None),
        # small values of every integer type: the integer getters accept any integer type whose value fits
        ("test.uint8_small", VT.UINT8, 7, None),
        ("test.int8_pos", VT.INT8, 100, None),
        ("test.int16_neg1", VT.INT16, -1, None),
        ("test.int32_pos", VT.INT32, 123456, None),
        ("test.int64_pos", VT.INT64, 2**40, None),
        ("test.uint64_small", VT.UINT64, 42, None),
        ("test.uint64_big_int", VT.UINT64, 2**63, None),       # does not fit int64
        ("test.float32_neg", VT.FLOAT32, -0.375, None),
        ("test.arr_uint8", VT.ARRAY, [0, 1, 255], VT.UINT8),
        ("test.arr_int8", VT.ARRAY, [-128, 0, 127], VT.INT8),
        ("test.arr_uint16", VT.ARRAY, [0, 65535], VT.UINT16),
        ("test.arr_int16", VT.ARRAY, [-32768, 32767, -1], VT.INT16),
        ("test.arr_uint32", VT.ARRAY, [0, 4294967295, 5], VT.UINT32),
        ("test.arr_int32", VT.ARRAY, [-2147483648, 2147483647, 0, -7], VT.INT32),
        ("test.arr_float32", VT.ARRAY, [0.5, -1.25, float(np.float32(1e-3)), 65504.0], VT.FLOAT32),
        ("test.arr_bool", VT.ARRAY, [True, False, True], VT.BOOL),
        ("test.arr_string", VT.ARRAY, ["a", "", "\u00fcn\u00ef", "with space"], VT.STRING),
        ("test.arr_uint64", VT.ARRAY, [0, 2**64 - 1], VT.UINT64),
        ("test.arr_uint64_small", VT.ARRAY, [1, 2, 3], VT.UINT64),
        ("test.arr_int64", VT.ARRAY, [-2**63, 2**63 - 1], VT.INT64),
        ("test.arr_float64", VT.ARRAY, [0.1, -2.5], VT.FLOAT64),
        ("test.arr_nested_int32", VT.ARRAY,
         [MV(VT.ARRAY, [1, 2], VT.INT32), MV(VT.ARRAY, [3], VT.INT32), MV(VT.ARRAY, [4, 5, 6], VT.INT32)], VT.ARRAY),
        ("test.arr_nested3_string", VT.ARRAY,
         [MV(VT.ARRAY, [MV(VT.ARRAY, ["x"], VT.STRING), MV(VT.ARRAY, ["y", "z"], VT.STRING)], VT.ARRAY),
          MV(VT.ARRAY, [MV(VT.ARRAY, ["w"], VT.STRING)], VT.ARRAY)], VT.ARRAY),
    ]


def to_writer_value(vtype: VT, value, element_type: VT | None):
    """gguf-py infers the element type of inner arrays from Python types (int -> INT32, str -> STRING)."""
    if vtype != VT.ARRAY:
        return value
    if element_type == VT.ARRAY:
        return [to_writer_value(VT.ARRAY, v.value, v.element_type) for v in value]
    return list(value)


def tensor_plan(rng: np.random.Generator) -> list[tuple[str, QT, list[int], np.ndarray]]:
    """(name, type, ggml shape (shape[0] fastest), raw bytes) for the tensors of all_types_v3.gguf."""
    plan = [
        ("f32_1d", QT.F32, [10]),
        ("f32_4d", QT.F32, [5, 1, 3, 2]),
        ("f16_2d", QT.F16, [8, 3]),
        ("bf16_2d", QT.BF16, [16, 2]),
        ("blk.0.q8_0", QT.Q8_0, [64, 3]),
        ("blk.0.q4_0", QT.Q4_0, [32, 2]),
        ("blk.1.q4_1", QT.Q4_1, [64, 2]),
        ("q5_0_2d", QT.Q5_0, [32, 4]),
        ("q5_1_3d", QT.Q5_1, [32, 2, 2]),
        ("q4_k_2d", QT.Q4_K, [256, 2]),
        ("q5_k_1d", QT.Q5_K, [256]),
        ("q6_k_2d", QT.Q6_K, [512, 2]),
    ]
    out = []
    for name, qtype, shape in plan:
        n = int(np.prod(shape))
        out.append((name, qtype, shape, make_raw(rng, qtype, n)))
    return out


def tensor_manifest(name: str, qtype: QT, shape: list[int], raw: np.ndarray, offset: int, data_offset: int) -> dict:
    expected = reference_dequantize(raw, qtype)
    return {"name": name, "type": qtype.name, "type_id": int(qtype), "shape": shape,
            "n_elements": int(np.prod(shape)), "n_bytes": int(raw.size), "offset": offset,
            "absolute_offset": data_offset + offset, "expected_f32_bits": f32_bits(expected)}


def write_all_types_v3(out: Path, rng: np.random.Generator) -> None:
    path = out / "all_types_v3.gguf"
    alignment = 64
    meta = all_types_metadata()
    tensors = tensor_plan(rng)

    w = gguf.GGUFWriter(str(path), arch="kvtest")
    for key, vtype, value, etype in meta:
        w.add_key_value(key, to_writer_value(vtype, value, etype), vtype, sub_type=etype)
    w.add_custom_alignment(alignment)
    for name, qtype, shape, raw in tensors:
        if qtype in (QT.F32, QT.F16):
            arr = raw.view(np.float32 if qtype == QT.F32 else np.float16).reshape(list(reversed(shape)))
            w.add_tensor(name, arr)
        else:
            byte_shape = list(reversed(shape))
            byte_shape[-1] = byte_shape[-1] // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1]
            w.add_tensor(name, raw.reshape(byte_shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    metadata = [{"key": "general.architecture", "type": "STRING", "value": "kvtest"}]
    metadata += [{"key": k, "type": t.name, "value": manifest_value(t, v, e)} for k, t, v, e in meta]
    metadata.append({"key": "general.alignment", "type": "UINT32", "value": alignment})

    reader = gguf.GGUFReader(str(path))
    data_offset = int(reader.data_offset)
    tensor_docs, offset = [], 0
    for name, qtype, shape, raw in tensors:
        tensor_docs.append(tensor_manifest(name, qtype, shape, raw, offset, data_offset))
        offset += -(-raw.size // alignment) * alignment
    doc = {"version": 3, "alignment": alignment, "data_offset": data_offset,
           "file_size": path.stat().st_size, "metadata": metadata, "tensors": tensor_docs}
    check_with_reader(path, doc)
    write_json(out / "all_types_v3.json", doc)


def write_handmade_v2(out: Path, rng: np.random.Generator) -> None:
    """Version 2 (same layout as 3 for little-endian files: 64-bit counts), written byte by byte."""
    path = out / "handmade_v2.gguf"
    alignment = 32
    meta = [
        ("general.architecture", VT.STRING, "kvtest2", None),
        ("test.v2.uint32", VT.UINT32, 32, None),
        ("test.v2.empty_array", VT.ARRAY, [], VT.UINT32),
        ("test.v2.empty_string_array", VT.ARRAY, [], VT.STRING),
        ("test.v2.nested_uint64", VT.ARRAY,
         [MV(VT.ARRAY, [1, 2**64 - 1], VT.UINT64), MV(VT.ARRAY, [], VT.UINT64), MV(VT.ARRAY, [7], VT.UINT64)],
         VT.ARRAY),
        ("test.v2.nested_empty", VT.ARRAY, [], VT.ARRAY),
        ("test.v2.float64", VT.FLOAT64, -1.0e300, None),
        ("test.v2.bool", VT.BOOL, True, None),
        ("test.v2.float32_array", VT.ARRAY, [1.0, -0.0, 3.5], VT.FLOAT32),
    ]
    tensors = [
        ("v2.f32", QT.F32, [4, 2], make_raw(rng, QT.F32, 8)),
        ("v2.q8_0", QT.Q8_0, [32, 2], make_raw(rng, QT.Q8_0, 64)),
        ("v2.q4_1", QT.Q4_1, [32], make_raw(rng, QT.Q4_1, 32)),
    ]
    blob = bytearray(b"GGUF" + struct.pack("<IQQ", 2, len(tensors), len(meta)))
    for key, vtype, value, etype in meta:
        blob += pack_string(key) + struct.pack("<I", int(vtype)) + pack_value(vtype, value, etype)
    offset, offsets = 0, []
    for name, qtype, shape, raw in tensors:
        blob += pack_string(name) + struct.pack("<I", len(shape))
        blob += b"".join(struct.pack("<Q", d) for d in shape)
        blob += struct.pack("<IQ", int(qtype), offset)
        offsets.append(offset)
        offset += -(-raw.size // alignment) * alignment
    data_offset = -(-len(blob) // alignment) * alignment
    blob += bytes(data_offset - len(blob))
    for i, (name, qtype, shape, raw) in enumerate(tensors):
        assert len(blob) == data_offset + offsets[i]
        blob += raw.tobytes()
        if i + 1 < len(tensors):                    # no padding after the last tensor: it ends the file
            blob += bytes(-len(blob) % alignment)
    path.write_bytes(bytes(blob))

    doc = {"version": 2, "alignment": alignment, "data_offset": data_offset, "file_size": len(blob),
           "metadata": [{"key": k, "type": t.name, "value": manifest_value(t, v, e)} for k, t, v, e in meta],
           "tensors": [tensor_manifest(n, q, s, r, o, data_offset)
                       for (n, q, s, r), o in zip(tensors, offsets)]}
    check_with_reader(path, doc)
    write_json(out / "handmade_v2.json", doc)


def write_metadata_only_v3(out: Path) -> None:
    path = out / "metadata_only_v3.gguf"
    words = ["tok%03d" % i for i in range(300)]
    meta = [("test.count", VT.UINT32, 300, None),
            ("test.words", VT.ARRAY, words, VT.STRING),
            ("test.scores", VT.ARRAY, [float(np.float32(i * 0.5 - 10)) for i in range(300)], VT.FLOAT32)]
    w = gguf.GGUFWriter(str(path), arch="kvmeta")
    for key, vtype, value, etype in meta:
        w.add_key_value(key, to_writer_value(vtype, value, etype), vtype, sub_type=etype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    reader = gguf.GGUFReader(str(path))
    metadata = [{"key": "general.architecture", "type": "STRING", "value": "kvmeta"}]
    metadata += [{"key": k, "type": t.name, "value": manifest_value(t, v, e)} for k, t, v, e in meta]
    doc = {"version": 3, "alignment": 32, "data_offset": int(reader.data_offset),
           "file_size": path.stat().st_size, "metadata": metadata, "tensors": []}
    check_with_reader(path, doc)
    write_json(out / "metadata_only_v3.json", doc)


def header_size(doc: dict) -> int:
    """Bytes of magic, version, counts, metadata and tensor infos (before the padding to the data section),
    computed with this script's own encoder: a cross-check of gguf-py's writer and of our v2 file."""
    n = 4 + 4 + 8 + 8
    for m in doc["metadata"]:
        n += len(pack_string(m["key"])) + 4 + len(pack_manifest_value(VT[m["type"]], m["value"]))
    for t in doc["tensors"]:
        n += len(pack_string(t["name"])) + 4 + 8 * len(t["shape"]) + 4 + 8
    return n


def pack_manifest_value(vtype: VT, value) -> bytes:
    if vtype == VT.FLOAT32:
        return struct.pack("<I", value)
    if vtype == VT.FLOAT64:
        return struct.pack("<Q", value)
    if vtype == VT.ARRAY:
        et = VT[value["element_type"]]
        return struct.pack("<IQ", int(et), len(value["values"])) + b"".join(
            pack_manifest_value(et, v) for v in value["values"])
    return pack_value(vtype, value)


def check_with_reader(path: Path, doc: dict) -> None:
    """Reads the file back with gguf.GGUFReader and checks keys, scalar values, tensor shapes/types/bytes."""
    size = header_size(doc)
    assert -(-size // doc["alignment"]) * doc["alignment"] == doc["data_offset"], (size, doc["data_offset"])
    assert path.read_bytes()[size:doc["data_offset"]] == bytes(doc["data_offset"] - size)
    doc["header_end"] = size
    r = gguf.GGUFReader(str(path))
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == [m["key"] for m in doc["metadata"]], (keys, [m["key"] for m in doc["metadata"]])
    assert int(r.fields["GGUF.version"].contents()) == doc["version"]
    assert int(r.data_offset) == doc["data_offset"]
    for m in doc["metadata"]:
        f = r.fields[m["key"]]
        assert f.types[0].name == m["type"], (m["key"], f.types, m["type"])
        if m["type"] in ("STRING", "BOOL") or m["type"].startswith(("UINT", "INT")):
            assert f.contents() == m["value"], (m["key"], f.contents(), m["value"])
    assert [t.name for t in r.tensors] == [t["name"] for t in doc["tensors"]]
    for t, want in zip(r.tensors, doc["tensors"]):
        assert t.tensor_type.name == want["type"]
        assert [int(d) for d in t.shape] == want["shape"], (t.name, t.shape, want["shape"])
        assert int(t.data_offset) == want["absolute_offset"]
        assert int(t.n_bytes) == want["n_bytes"]
        got = reference_dequantize(np.asarray(t.data).view(np.uint8), t.tensor_type)
        assert f32_bits(got) == want["expected_f32_bits"]


# ---------------------------------------------------------------------------------------------------------------
# the real model: a few golden rows (optional)

def write_model_rows(out: Path, model: Path) -> None:
    if not model.exists():
        print(f"note: {model} not found; smollm2_rows.json not (re)written", file=sys.stderr)
        return
    r = gguf.GGUFReader(str(model))
    by_name = {t.name: t for t in r.tensors}
    picks = [("token_embd.weight", [0, 1, 12345, 49151]), ("blk.0.attn_q.weight", [0, 575]),
             ("blk.29.ffn_down.weight", [575]), ("blk.0.attn_norm.weight", [0]), ("output_norm.weight", [0])]
    rows = []
    for name, idx in picks:
        t = by_name[name]
        raw = np.asarray(t.data).view(np.uint8)
        row_len = int(t.shape[0])
        n_rows = int(np.prod([int(d) for d in t.shape[1:]])) if len(t.shape) > 1 else 1
        row_bytes = raw.size // n_rows
        for i in idx:
            vals = reference_dequantize(raw.ravel()[i * row_bytes:(i + 1) * row_bytes], t.tensor_type)
            assert vals.size == row_len
            rows.append({"tensor": name, "type": t.tensor_type.name, "row": i, "expected_f32_bits": f32_bits(vals)})
    write_json(out / "smollm2_rows.json", {"model": model.name, "rows": rows})


# ---------------------------------------------------------------------------------------------------------------

def gguf_version() -> str:
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # pragma: no cover
        return "?"


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model", type=Path, default=Path(os.environ.get("KVCACHE_MODEL", DEFAULT_MODEL)))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    write_dequant_fixtures(args.out, np.random.default_rng(20261123))
    write_type_info(args.out)
    write_all_types_v3(args.out, np.random.default_rng(3))
    write_handmade_v2(args.out, np.random.default_rng(2))
    write_metadata_only_v3(args.out)
    write_model_rows(args.out, args.model)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {len(list(args.out.iterdir()))} files, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
