#!/usr/bin/env python3
"""Compare two GGUF files tensor by tensor (type, shape, data bytes) and key by key, with the `gguf` package.
Used by verify_llamacpp.sh to set `retort export --type q4_k_m` beside `llama-quantize F32.gguf OUT Q4_K_M`.

  python3 tests/data/export/compare_gguf.py A.gguf B.gguf     exit 0 when every tensor is identical

Prints the tensors whose type or bytes differ (with the largest dequantized difference), the keys whose
values differ or that only one file has, and a summary line; tensor order and file layout are not compared
(llama-quantize writes tensors sorted by layer, then name).
"""
import sys

import numpy as np
import gguf


def kv(reader):
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            v = field.contents()
        except Exception:  # noqa: BLE001
            v = [bytes(p).hex() for p in field.parts]
        out[name] = v
    return out


def main():
    a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    same = 0
    diff = []
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            diff.append(f"{name}: only in {'A' if name in ta else 'B'}")
            continue
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            diff.append(f"{name}: {x.tensor_type.name} {list(x.shape)} vs {y.tensor_type.name} {list(y.shape)}")
            continue
        if bytes(x.data.tobytes()) == bytes(y.data.tobytes()):
            same += 1
            continue
        dx = gguf.quants.dequantize(x.data, x.tensor_type).astype(np.float64)
        dy = gguf.quants.dequantize(y.data, y.tensor_type).astype(np.float64)
        nblk = gguf.GGML_QUANT_SIZES[x.tensor_type][1]
        ra, rb = np.frombuffer(x.data.tobytes(), np.uint8), np.frombuffer(y.data.tobytes(), np.uint8)
        nb = ra.size // nblk
        blocks = int((ra.reshape(nb, nblk) != rb.reshape(nb, nblk)).any(axis=1).sum())
        diff.append(f"{name}: {x.tensor_type.name}, {blocks}/{nb} blocks differ, max |A - B| {np.abs(dx - dy).max():.3g}")
    ka, kb = kv(a), kv(b)
    kdiff = [k for k in sorted(set(ka) | set(kb)) if ka.get(k, "<absent>") != kb.get(k, "<absent>")]
    for d in diff:
        print("  tensor", d)
    for k in kdiff:
        va, vb = str(ka.get(k, "<absent>")), str(kb.get(k, "<absent>"))
        print(f"  key {k}: {va[:60]!r} vs {vb[:60]!r}")
    print(f"tensors: {same} identical, {len(diff)} different; keys: {len(kdiff)} different")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
