#!/usr/bin/python3
"""Writes the weight-file fixtures for tests/test_io.c (run with /usr/bin/python3: torch 1.13).

  io_st.safetensors       hand-written safetensors: F32, F16, BF16, F64, I64, a scalar, an empty
                          tensor, an escaped name, __metadata__
  io_zip_sd.pt            torch.save (zip) of an nn.Sequential state dict (conv, batchnorm with
                          num_batches_tracked, linear)
  io_zip_lightning.ckpt   {"state_dict": ..., "epoch": 3, "global_step": 10, ...} as Lightning saves,
                          with optimizer state, numpy scalars, a dtype and a callback object
  io_zip_views.pt         fp16, bf16, float64, int64, int32 tensors, transposed (non-contiguous)
                          tensors, slices sharing one storage, an nn.Parameter, a nested dict,
                          non-tensor values (skipped by the reader)
  io_legacy_*             the same three with _use_new_zipfile_serialization=False
  io_expect.safetensors   the expected float32 values, named "<tag>:<tensor>" (tags st, sd,
                          lightning, views; a checkpoint and its legacy twin share a tag)
"""
import collections
import json
import os
import struct
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")


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

    # a small model's state dict, after one training step so BatchNorm's buffers are not trivial
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    sd = model.state_dict()
    assert sd["1.num_batches_tracked"].dtype == torch.int64

    # what training checkpoints carry besides tensors: a callback object (a stand-in class under
    # Lightning's module name, pickled with NEWOBJ + BUILD), numpy scalars, torch dtypes
    mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    class ModelCheckpoint:
        pass
    ModelCheckpoint.__module__ = mod.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        sys.modules.setdefault(parent, types.ModuleType(parent))
    sys.modules[mod.__name__] = mod
    callback = ModelCheckpoint()
    callback.best_model_score = np.float64(0.25)
    callback.monitor = "val/rec_loss"

    opt = torch.optim.Adam(model.parameters())
    opt.step()
    lightning = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "1.4.2",
                 "state_dict": sd, "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                 "hyper_parameters": {"lr": 1e-4, "name": "ae", "sizes": (1, 2, 3), "flag": True, "none": None,
                                      "precision": torch.float16, "score": np.float32(1.5)},
                 "callbacks": {ModelCheckpoint: callback}}

    big = torch.randn(6, 5)
    base = torch.randn(3, 4)
    views = collections.OrderedDict()
    views["half"] = torch.randn(3, 2).half()
    views["bf16"] = torch.randn(4).bfloat16()
    views["f64"] = torch.randn(2, 2, dtype=torch.float64)
    views["i64"] = torch.tensor([[1, -2], [3, 1 << 33]])
    views["i32"] = torch.tensor([7, -8], dtype=torch.int32)
    views["transposed"] = base.t()                  # non-contiguous
    views["rows"] = big[2:5]                        # offset into a shared storage
    views["block"] = big[1:3, 1:]                   # offset and non-contiguous, same storage
    views["half_t"] = torch.randn(2, 3).half().t()  # non-contiguous fp16
    views["param"] = torch.nn.Parameter(torch.randn(2, 3))
    views["nested"] = {"inner": {"w": torch.randn(2)}, "count": 4}
    views["scalar"] = torch.tensor(1.5)
    views["not_a_tensor"] = [torch.randn(2), "text", 3.5]
    flat_views = collections.OrderedDict(
        (k, v) for k, v in views.items() if k not in ("nested", "not_a_tensor"))
    flat_views["nested.inner.w"] = views["nested"]["inner"]["w"]

    for tag, obj, flat in (("sd", sd, sd), ("lightning", lightning, sd), ("views", views, flat_views)):
        ext = "ckpt" if tag == "lightning" else "pt"
        torch.save(obj, os.path.join(FIX, "io_zip_%s.%s" % (tag, ext)))
        torch.save(obj, os.path.join(FIX, "io_legacy_%s.%s" % (tag, ext)), _use_new_zipfile_serialization=False)
        for k, v in flat.items():
            expect["%s:%s" % (tag, k)] = v.detach().float()

    write_safetensors(os.path.join(FIX, "io_expect.safetensors"), expect)


if __name__ == "__main__":
    main()
