#!/usr/bin/env python3
"""Generate the GGUF fixtures used by tests/test_gguf.cpp.

The oracle is the Python `gguf` package (0.19): files are written with gguf.GGUFWriter
(except the hand-written v2 file) and expected floats come from gguf.quants.dequantize.

  python3 tests/data/gguf/make_fixtures.py            # fixtures only
  python3 tests/data/gguf/make_fixtures.py --model    # also the golden sums of the default model

Outputs (next to this script):
  <type>.gguf + <type>.f32   one tensor "t" of random valid raw blocks + its dequantized float32 (raw LE)
  metadata_v3.gguf           every metadata value type, nested arrays, a 4-D tensor, an IQ2_XXS tensor
  v2.gguf                    a GGUF v2 file written byte by byte
  align64.gguf               general.alignment = 64
  smollm2_golden.txt         per-tensor float64 sum and sum of squares of the default model
"""
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(20240601)

# Byte offsets of the fp16 scale fields inside one block (ggml-common.h); they get finite values.
FP16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def finite_f16(n):
    """Random finite fp16 values over many binades, including a few subnormals and zeros."""
    mant = rng.uniform(-1.0, 1.0, n)
    exp = rng.integers(-20, 6, n)
    v = (mant * np.exp2(exp)).astype(np.float16)
    v[rng.random(n) < 0.05] = np.float16(0.0)
    return v


def random_blocks(qtype, n_blocks):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in FP16_FIELDS.get(qtype, []):
        raw[:, off:off + 2] = finite_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.Q8_K:
        d = (rng.uniform(-1, 1, n_blocks) * np.exp2(rng.integers(-20, 4, n_blocks))).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    return raw


def dequant_q8_k(raw):
    """Q8_K has no dequantizer in gguf.quants: y = d * q in float32 (block: f32 d | int8 qs[256] | int16 bsums[16])."""
    d = raw[:, 0:4].copy().view(np.float32)
    q = raw[:, 4:260].copy().view(np.int8).astype(np.float32)
    return (d * q).astype(np.float32)


def write_quant_fixture(qtype, rows, blocks_per_row):
    name = qtype.name.lower()
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    cols = blocks_per_row * block_elems
    if qtype == T.F32:
        vals = rng.standard_normal(rows * cols).astype(np.float32)
        vals[:4] = [0.0, -0.0, np.inf, 1e-45]
        raw = vals.view(np.uint8).reshape(rows, cols * 4)
    elif qtype == T.F16:
        vals = finite_f16(rows * cols)
        # specials: -0, +inf, -inf, a quiet NaN, the smallest subnormal, the largest finite
        vals.view(np.uint16)[:6] = [0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0001, 0x7BFF]
        raw = vals.view(np.uint8).reshape(rows, cols * 2)
    elif qtype == T.BF16:
        raw = rng.integers(0, 256, (rows, cols * 2), dtype=np.uint8)
    else:
        raw = random_blocks(qtype, rows * blocks_per_row).reshape(rows, blocks_per_row * block_bytes)

    if qtype == T.Q8_K:
        expected = dequant_q8_k(raw.reshape(-1, block_bytes)).reshape(rows, cols)
    else:
        expected = gguf.quants.dequantize(raw, qtype)
    expected = np.ascontiguousarray(expected, dtype=np.float32)
    assert expected.shape == (rows, cols), (qtype, expected.shape)

    path = os.path.join(HERE, f"{name}.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    w.add_string("test.qtype", qtype.name)
    w.add_tensor("t", raw, raw_dtype=qtype)  # shape comes from the byte shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expected.tofile(os.path.join(HERE, f"{name}.f32"))

    # Round trip through the reader: the bytes we wrote are the bytes it sees.
    r = gguf.GGUFReader(path)
    t = r.tensors[0]
    assert t.tensor_type == qtype and [int(d) for d in t.shape] == [cols, rows]
    assert np.asarray(t.data).tobytes() == raw.tobytes()


def write_metadata_fixture():
    path = os.path.join(HERE, "metadata_v3.gguf")
    w = gguf.GGUFWriter(path, arch="test")  # writes general.architecture = "test" first
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", 'héllo "world"\n\ttab')
    w.add_key_value("t.empty", "", V.STRING)  # add_string() drops empty strings
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62) - 7)
    w.add_float64("t.f64", 3.141592653589793)
    w.add_key_value("t.arr_u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("t.arr_i8", [-1, 0, 127], V.ARRAY, sub_type=V.INT8)
    w.add_key_value("t.arr_u16", [65535, 1], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("t.arr_i16", [-32768, 32767], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("t.arr_u32", [7, 8, 9], V.ARRAY, sub_type=V.UINT32)
    w.add_array("t.arr_i32", [-5, 0, 5, 10])
    w.add_array("t.arr_f32", [0.5, -1.25, 1e30])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_key_value("t.arr_u64", [2**64 - 1, 3], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.arr_i64", [-(2**63), 2**63 - 1], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("t.arr_f64", [1.0 / 3.0, -2.5e-300], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("t.arr_str", ["a", "", "bc", "日本"] + [f"tok{i}" for i in range(20)])
    w.add_array("t.nested", [[1, 2], [3], [4, 5, 6]])
    w.add_array("t.nested_str", [["x", "y"], ["z"]])
    w.add_array("t.nested3", [[[1.5], [2.5, 3.5]], [[4.5]]])
    # A 4-D F32 tensor (numpy shape (2, 3, 4, 5) -> ggml ne = [5, 4, 3, 2]), a 1-D F16 tensor,
    # and an IQ2_XXS tensor that retort can list but not dequantize.
    w.add_tensor("w4d", np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5) * 0.5)
    w.add_tensor("v16", np.array([1.0, -2.0, 0.25], dtype=np.float16))
    iq = rng.integers(0, 256, (2, 66), dtype=np.uint8)
    w.add_tensor("iq", iq, raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(path)
    assert r.fields["t.u64"].contents() == 2**63 + 5
    assert r.fields["t.nested"].contents() == [1, 2, 3, 4, 5, 6]  # GGUFReader flattens nested arrays


def write_v2_fixture():
    """GGUF v2 written byte by byte (v2 and v3 share the u64 counts; v3 only added big-endian support)."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [
        s("general.architecture") + struct.pack("<I", V.STRING) + s("llama"),
        s("llama.block_count") + struct.pack("<II", V.UINT32, 2),
        s("v2.tokens") + struct.pack("<IIQ", V.ARRAY, V.STRING, 3) + s("<s>") + s("hi") + s("</s>"),
        s("v2.scale") + struct.pack("<If", V.FLOAT32, 0.5),
    ]
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)  # ne = [3, 2]
    b = np.array([-1.5, 2.5], dtype=np.float32)
    infos = [
        s("a") + struct.pack("<I", 2) + struct.pack("<QQ", 3, 2) + struct.pack("<IQ", T.F32, 0),
        s("b") + struct.pack("<I", 1) + struct.pack("<Q", 2) + struct.pack("<IQ", T.F32, 32),
    ]
    head = b"GGUF" + struct.pack("<IQQ", 2, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * ((-len(head)) % 32)
    data = a.tobytes() + b"\0" * (32 - a.nbytes) + b.tobytes()
    path = os.path.join(HERE, "v2.gguf")
    with open(path, "wb") as f:
        f.write(head + data)
    r = gguf.GGUFReader(path)
    assert [t.name for t in r.tensors] == ["a", "b"]
    assert np.array_equal(r.tensors[1].data, b)


def write_align64_fixture():
    path = os.path.join(HERE, "align64.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    w.add_custom_alignment(64)
    for i, n in enumerate([3, 17, 40, 1]):
        w.add_tensor(f"x{i}", (np.arange(n, dtype=np.float32) + 100 * i))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = gguf.GGUFReader(path)
    assert r.alignment == 64 and all(t.data_offset % 64 == 0 for t in r.tensors)


def write_model_golden():
    home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
    path = os.path.join(home, "models", "smollm2-135m-instruct.gguf")
    if not os.path.exists(path):
        print(f"skipping model golden: {path} not found")
        return
    r = gguf.GGUFReader(path)
    lines = []
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        ne = ",".join(str(int(d)) for d in t.shape)  # GGUFReader's shape is ggml order (ne[0] first)
        lines.append(f"{t.name} {t.tensor_type.name} {ne} {float(x.sum())!r} {float(np.dot(x, x))!r}")
    with open(os.path.join(HERE, "smollm2_golden.txt"), "w") as f:
        f.write("# name type ne sum sumsq  (float64 over gguf.quants.dequantize; see make_fixtures.py)\n")
        f.write("\n".join(lines) + "\n")


def main():
    small = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
    kquants = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
    for q in small:
        write_quant_fixture(q, rows=3, blocks_per_row=16 if q in (T.F32, T.F16, T.BF16) else 5)
    for q in kquants:
        write_quant_fixture(q, rows=2, blocks_per_row=3)
    write_metadata_fixture()
    write_v2_fixture()
    write_align64_fixture()
    if "--model" in sys.argv:
        write_model_golden()


if __name__ == "__main__":
    main()
