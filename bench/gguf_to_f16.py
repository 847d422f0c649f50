#!/usr/bin/env python3
"""Rewrite a GGUF with every quantized tensor dequantized to F16 (F32 tensors kept), metadata copied.

    python3 bench/gguf_to_f16.py MODEL.gguf OUT-f16.gguf

For llama.cpp's F16 row in bench/run_vs_llamacpp.sh (LLAMA_CPP_F16_MODEL): the same weights as the
quantized file, so both runtimes see identical values. Uses only the `gguf` package from PyPI
(pip install gguf numpy); dequantization is gguf.quants.dequantize.
"""
import sys

import gguf
import numpy as np


def main(src: str, dst: str) -> None:
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # written by the writer itself
        if name == "general.file_type":
            w.add_uint32(name, 1)  # LLAMA_FTYPE_MOSTLY_F16
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), t, sub_type=f.types[1])
        else:
            w.add_key_value(name, f.contents(), t)
    for t in r.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            w.add_tensor(t.name, np.array(t.data), raw_dtype=gguf.GGMLQuantizationType.F32)
        else:
            a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float16)
            w.add_tensor(t.name, a, raw_dtype=gguf.GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
