#!/usr/bin/env python3
"""Golden data for tests/test_export.cpp, made with the `gguf` Python package (llama.cpp's gguf-py).

  python3 tests/data/export/make_golden.py      (from the repo root)

Writes, next to this script:
  quant_input.f32    2048 float32 values (64 rows of 32): random normals at several scales plus
                     edge cases (all-zero block, exact .5 ties after scaling, tiny/subnormal values,
                     fp16 overflow, one large outlier per block, negative zero)
  quant_f16.bin      gguf.quants.quantize(x, F16)   (numpy astype float16: round to nearest even)
  quant_bf16.bin     gguf.quants.quantize(x, BF16)
  quant_q8_0.bin     gguf.quants.quantize(x, Q8_0)  (bit-exact with ggml's quantize_row_q8_0_ref)
  writer.gguf        gguf.GGUFWriter output for the metadata and tensors listed in WRITER below;
                     retort's GgufWriter must produce the same bytes.
"""
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

HERE = os.path.dirname(os.path.abspath(__file__))


def quant_input() -> np.ndarray:
    rng = np.random.default_rng(20261123)
    rows = []
    for scale in (1e-3, 0.02, 1.0, 30.0):
        rows.append(rng.standard_normal((12, 32)) * scale)
    x = np.concatenate(rows).astype(np.float32)  # 48 rows
    extra = np.zeros((16, 32), dtype=np.float32)
    # row 48: all zeros (d = 0 -> q = 0)
    # row 49: values on exact .5 ties of x / d: d = 127 / 127 = 1 -> x * 1 = k + 0.5
    extra[1] = np.arange(32, dtype=np.float32) - 16.5
    extra[1][0] = 127.0
    # row 50: tiny and subnormal (fp16 subnormals, float32 subnormals)
    extra[2] = (rng.standard_normal(32) * 1e-6).astype(np.float32)
    extra[2][:4] = [1e-40, -1e-40, 6e-8, -3e-8]
    # row 51: beyond fp16 range (F16 -> inf), Q8_0 d still finite
    extra[3] = rng.standard_normal(32).astype(np.float32) * 1e5
    # rows 52..63: one outlier per block
    for r in range(4, 16):
        extra[r] = rng.standard_normal(32).astype(np.float32)
        extra[r][r % 32] = 50.0 * (1 if r % 2 else -1)
    extra[5][7] = -0.0
    return np.concatenate([x, extra]).astype(np.float32)


def main() -> None:
    x = quant_input()
    assert x.shape == (64, 32)
    x.tofile(os.path.join(HERE, "quant_input.f32"))
    gguf.quants.quantize(x, Q.F16).tofile(os.path.join(HERE, "quant_f16.bin"))
    gguf.quants.quantize(x, Q.BF16).tofile(os.path.join(HERE, "quant_bf16.bin"))
    gguf.quants.quantize(x, Q.Q8_0).tofile(os.path.join(HERE, "quant_q8_0.bin"))

    # GGUFWriter reference: keys in this order, then tensors in this order (alignment 32).
    w = gguf.GGUFWriter(os.path.join(HERE, "writer.gguf"), "llama")  # adds general.architecture first
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo\n\"world\"")
    w.add_array("t.strs", ["a", "", "Ġb c"])
    w.add_key_value("t.i32s", [1, -2, 3], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    w.add_key_value("t.f32s", [0.5, -1.25], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
    w.add_key_value("t.bools", [True, False, True], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.BOOL)
    a = np.arange(5, dtype=np.float32) * 0.25
    b = x[:3, :].astype(np.float32)          # [3, 32] -> F16
    c = x[3:7, :].reshape(2, 64)             # [2, 64] -> Q8_0
    w.add_tensor("a.weight", a)
    w.add_tensor("b.weight", gguf.quants.quantize(b, Q.F16))
    qc = gguf.quants.quantize(c, Q.Q8_0)
    w.add_tensor("c.weight", qc, raw_shape=qc.shape, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
