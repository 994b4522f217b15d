#!/usr/bin/python3
"""Writes the weight-file fixtures for tests/test_io.c (run with /usr/bin/python3: torch 1.13).

  io_st.safetensors       hand-written safetensors: F32, F16, BF16, F64, I64, a scalar, an empty
                          tensor, an escaped name, __metadata__
  io_zip_sd.pt            torch.save (zip) of an nn.Sequential state dict (conv, batchnorm with
                          num_batches_tracked, linear)
  io_zip_lightning.ckpt   {"state_dict": ..., "epoch": 3, "global_step": 10, ...} as Lightning saves
  io_zip_views.pt         fp16, bf16, float64, int64 tensors, a transposed (non-contiguous)
                          tensor, slices sharing one storage, a nested dict
  io_legacy_*.pt          the same three with _use_new_zipfile_serialization=False
  io_expect.safetensors   the expected float32 values, named "<fixture>:<tensor>"
"""
import collections
import json
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
      torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def raw_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().newbyteorder("<").tobytes() if t.numel() else b""


def write_safetensors(path, tensors, metadata=None):
    """The safetensors layout by hand: u64 header length, JSON header padded with spaces, data."""
    header, blobs, pos = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        b = raw_bytes(t)
        header[name] = {"dtype": DT[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(b)]}
        blobs.append(b)
        pos += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    torch.manual_seed(0)
    expect = collections.OrderedDict()

    st = collections.OrderedDict()
    st["a"] = torch.randn(2, 3)
    st["h"] = torch.randn(4).half()
    st["b"] = torch.randn(3, 2).bfloat16()
    st["d"] = torch.randn(5, dtype=torch.float64)
    st["n"] = torch.tensor([3, -7, 1 << 40], dtype=torch.int64)
    st["scalar"] = torch.tensor(2.5)
    st["empty"] = torch.zeros(0, 3)
    st["odd \"name\"/\u00e9\\x"] = torch.arange(6, dtype=torch.float32).reshape(1, 2, 3, 1, 1)
    write_safetensors(os.path.join(FIX, "io_st.safetensors"), st,
                      {"format": "pt", "note": "caf\u00e9 \"quoted\" \\ \n end"})
    for k, v in st.items():
        expect["st:" + k] = v.float()

    write_safetensors(os.path.join(FIX, "io_expect.safetensors"), expect)


if __name__ == "__main__":
    main()
