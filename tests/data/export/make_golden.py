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
  quant_q4_0.bin     gguf.quants.quantize(x, Q4_0)  (ggml's quantize_row_q4_0_ref)
  quant_q5_0.bin     gguf.quants.quantize(x, Q5_0)  (ggml's quantize_row_q5_0_ref; Q4_K_M's fallback)
  quant_input_k.f32  8192 float32 values (32 super-blocks of 256) for the K-quants: normals at several
                     scales, heavy tails, one-signed blocks, constant, zero and tiny blocks, outliers
  quant_q4_k.bin     ggml's quantize_row_q4_K_ref(quant_input_k) \  llama.cpp's own C code through
  quant_q6_k.bin     ggml's quantize_row_q6_K_ref(quant_input_k) /  ctypes (ggml_quantize_chunk with no
                     importance matrix, as llama-quantize runs): the gguf package has no K-quant quantizer.
                     Only rewritten when LLAMA_CPP_LIB names libggml-base.so (else kept as committed).
  quant_q4_k.deq.f32 gguf.quants.dequantize of quant_q4_k.bin, and the same for Q6_K: what the gguf
  quant_q6_k.deq.f32 package reads back from those blocks.

  LLAMA_CPP_LIB=/work/llama.cpp/build/bin/libggml-base.so python3 tests/data/export/make_golden.py
  writer.gguf        gguf.GGUFWriter output for the metadata and tensors listed in WRITER below;
                     retort's GgufWriter must produce the same bytes.
"""
import ctypes
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


def quant_input_k() -> np.ndarray:
    rng = np.random.default_rng(20261202)
    blocks = []
    for scale in (1e-3, 0.02, 0.1, 1.0, 30.0):
        for _ in range(3):
            blocks.append(rng.standard_normal(256) * scale)
    blocks.append(rng.standard_t(3, 256) * 0.05)                       # heavy tails
    blocks.append(rng.standard_t(2, 256) * 0.05)
    blocks.append(np.abs(rng.standard_normal(256)) + 0.5)              # all positive: min clamps to 0
    blocks.append(-np.abs(rng.standard_normal(256)) - 0.5)             # all negative
    blocks.append(np.full(256, 0.25))                                  # constant (max == min)
    blocks.append(np.zeros(256))                                       # all zero
    blocks.append(rng.standard_normal(256) * 1e-20)                    # below GROUP_MAX_EPS for Q6_K
    b = rng.standard_normal(256) * 0.02
    b[:32] = 0                                                         # one zero sub-block among normal ones
    b[100] = 3.0                                                       # and an outlier
    blocks.append(b)
    b = rng.standard_normal(256) * 0.02
    b[16:32] = rng.standard_normal(16) * 1e-6                          # a Q6_K sub-block whose int8 scale is 0
    blocks.append(b)
    b = rng.uniform(-1, 1, 256)
    b[::37] *= 40                                                      # several outliers
    blocks.append(b)
    for scale in (0.01, 0.05, 0.5):                                    # skewed: mean far from 0
        blocks.append(rng.standard_normal(256) * scale + 3 * scale)
    b = rng.standard_normal(256) * 0.02
    b[::2] = 0                                                         # half zeros
    blocks.append(b)
    b = rng.standard_normal(256)
    b[200:] = -b[200:] * 100                                           # one sub-block dominates
    blocks.append(b)
    blocks.append(rng.laplace(0, 0.03, 256))                           # weight-like
    blocks.append(rng.standard_normal(256) * 1e-4 + 1e-3)              # tiny, one-signed
    x = np.stack(blocks).astype(np.float32)
    assert x.shape == (32, 256), x.shape
    return x


def ggml_quantize(lib, qtype: Q, x: np.ndarray) -> np.ndarray:
    """llama.cpp's ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix=NULL)."""
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    x = np.ascontiguousarray(x, dtype=np.float32)
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros((x.shape[0], x.shape[1] // block_size * type_size), dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    assert n == out.size, (n, out.size)
    return out


def main() -> None:
    x = quant_input()
    assert x.shape == (64, 32)
    x.tofile(os.path.join(HERE, "quant_input.f32"))
    gguf.quants.quantize(x, Q.F16).tofile(os.path.join(HERE, "quant_f16.bin"))
    gguf.quants.quantize(x, Q.BF16).tofile(os.path.join(HERE, "quant_bf16.bin"))
    gguf.quants.quantize(x, Q.Q8_0).tofile(os.path.join(HERE, "quant_q8_0.bin"))
    gguf.quants.quantize(x, Q.Q4_0).tofile(os.path.join(HERE, "quant_q4_0.bin"))
    gguf.quants.quantize(x, Q.Q5_0).tofile(os.path.join(HERE, "quant_q5_0.bin"))

    xk = quant_input_k()
    xk.tofile(os.path.join(HERE, "quant_input_k.f32"))
    lib_path = os.environ.get("LLAMA_CPP_LIB")
    if lib_path:
        lib = ctypes.CDLL(lib_path)
        for qt, name in ((Q.Q4_K, "q4_k"), (Q.Q6_K, "q6_k")):
            ggml_quantize(lib, qt, xk).tofile(os.path.join(HERE, f"quant_{name}.bin"))
        # Cross-check: the gguf package and ggml agree on Q4_0 / Q5_0 / Q8_0.
        for qt in (Q.Q4_0, Q.Q5_0, Q.Q8_0):
            for inp in (x, xk):
                assert (ggml_quantize(lib, qt, inp) == gguf.quants.quantize(inp, qt)).all(), qt.name
    else:
        print("LLAMA_CPP_LIB not set: quant_q4_k.bin and quant_q6_k.bin kept as they are")
    for qt, name in ((Q.Q4_K, "q4_k"), (Q.Q6_K, "q6_k")):
        blocks = np.fromfile(os.path.join(HERE, f"quant_{name}.bin"), dtype=np.uint8).reshape(32, -1)
        deq = gguf.quants.dequantize(blocks, qt).astype(np.float32)
        deq.tofile(os.path.join(HERE, f"quant_{name}.deq.f32"))
        rmse = float(np.sqrt(np.mean((deq - xk) ** 2, axis=1)).max())
        print(f"{qt.name}: {blocks.nbytes} bytes, largest per-block RMSE {rmse:.3g}")

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
