#!/usr/bin/python3
"""Reference fixtures for tests/test_nn.c (ldm_nn.h), computed with PyTorch 1.13.

    /usr/bin/python3 tests/ref/nn_ref.py        (from the repository root)

Writes
  tests/fixtures/nn_optim.safetensors   Adam / AdamW / SGD: initial params, 3 steps of gradients,
                                        params after each step; hyper-parameters in metadata
  tests/fixtures/nn_clip.safetensors    clip_grad_norm_: gradients, total norms, clipped gradients
  tests/fixtures/nn_model.safetensors   a small model's state dict (torch names, num_batches_tracked I64)
  tests/fixtures/nn_model.pth           the same state dict through torch.save (zip)
  tests/fixtures/nn_model_io.safetensors  inputs, every layer's output, running statistics after
                                        one training forward, BatchNorm eval output, gradients
Safetensors are written by hand (no safetensors package here).
"""
import json
import os
import struct

import numpy as np
import sys
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")



def write_st(path, tensors, meta=None):
    write_safetensors(path, tensors, meta)
    print("wrote %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))


def npf(t):
    return t.detach().cpu().numpy().astype(np.float32)


# ---- optimizers ------------------------------------------------------------------------------
def optim_fixture():
    g = torch.Generator().manual_seed(1)
    shapes = {"a": (4, 3), "b": (5,), "c": (2, 3, 2, 2)}
    p0 = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=g) * (0.5 + i) for k, s in shapes.items()} for i in range(3)]
    # name: (type, [lr per step], beta1, beta2, eps, weight_decay, momentum, dampening, nesterov)
    cfgs = {
        "adam": ("adam", [1e-2, 1e-2, 1e-2], 0.9, 0.999, 1e-8, 0.0, 0, 0, 0),
        "adam_l2": ("adam", [2e-2, 2e-2, 2e-2], 0.5, 0.9, 1e-8, 0.01, 0, 0, 0),
        "adamw": ("adamw", [1e-2, 5e-3, 2e-3], 0.9, 0.999, 1e-8, 0.01, 0, 0, 0),
        "adamw0": ("adamw", [1e-3, 1e-3, 1e-3], 0.9, 0.999, 1e-6, 0.0, 0, 0, 0),
        "sgd": ("sgd", [0.1, 0.1, 0.1], 0, 0, 0, 0.0, 0.9, 0.0, 0),
        "sgd_nest": ("sgd", [0.05, 0.05, 0.05], 0, 0, 0, 1e-3, 0.9, 0.0, 1),
        "sgd_damp": ("sgd", [0.1, 0.05, 0.05], 0, 0, 0, 0.0, 0.8, 0.3, 0),
        "sgd_plain": ("sgd", [0.1, 0.1, 0.1], 0, 0, 0, 0.01, 0.0, 0.0, 0),
    }
    out, meta = {}, {"configs": " ".join(cfgs)}
    for k in shapes:
        out["p0." + k] = npf(p0[k])
    for i in range(3):
        for k in shapes:
            out["g%d.%s" % (i + 1, k)] = npf(grads[i][k])
    for name, (typ, lrs, b1, b2, eps, wd, mom, damp, nest) in cfgs.items():
        meta[name] = "%s %r %r %r %r %r %r %r %r %r %d" % (typ, lrs[0], lrs[1], lrs[2], b1, b2, eps, wd, mom, damp, nest)
        params = [nn.Parameter(p0[k].clone()) for k in shapes]
        if typ == "adam":
            opt = torch.optim.Adam(params, lr=lrs[0], betas=(b1, b2), eps=eps, weight_decay=wd)
        elif typ == "adamw":
            opt = torch.optim.AdamW(params, lr=lrs[0], betas=(b1, b2), eps=eps, weight_decay=wd)
        else:
            opt = torch.optim.SGD(params, lr=lrs[0], momentum=mom, dampening=damp, nesterov=bool(nest), weight_decay=wd)
        for i in range(3):
            for grp in opt.param_groups:
                grp["lr"] = lrs[i]
            for p, k in zip(params, shapes):
                p.grad = grads[i][k].clone()
            opt.step()
            for p, k in zip(params, shapes):
                out["%s.p%d.%s" % (name, i + 1, k)] = npf(p)
    write_st(os.path.join(FIX, "nn_optim.safetensors"), out, meta)


# ---- clip_grad_norm_ --------------------------------------------------------------------------
def clip_fixture():
    g = torch.Generator().manual_seed(2)
    shapes = {"a": (7, 5), "b": (3,), "c": (3000,)}
    grads = {k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items()}
    out = {}
    for k in shapes:
        out["g." + k] = npf(grads[k])
    meta = {}
    for case, max_norm in (("clip", 1.0), ("keep", 1000.0)):
        ps = [nn.Parameter(torch.zeros(s)) for s in shapes.values()]
        for p, k in zip(ps, shapes):
            p.grad = grads[k].clone()
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
        meta[case] = repr(max_norm)
        out[case + ".total"] = np.array([total.item()], np.float32)
        for p, k in zip(ps, shapes):
            out["%s.%s" % (case, k)] = npf(p.grad)
    write_st(os.path.join(FIX, "nn_clip.safetensors"), out, meta)


# ---- a small model ----------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8, eps=1e-6)
        self.bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=0)          # after F.pad (0, 1, 0, 1)
        self.head = nn.Sequential(nn.Conv2d(8, 4, (3, 2), stride=(2, 1), padding=(1, 0), bias=False),
                                  nn.BatchNorm2d(4, momentum=None))  # cumulative average
        self.lin = nn.Linear(24, 6)
        self.emb = nn.Embedding(10, 6)
        self.ln = nn.LayerNorm(6)
        self.vol = nn.Module()
        self.vol.conv = nn.Conv3d(2, 3, 3, padding=1)


def model_fixture():
    torch.manual_seed(3)
    m = Net()
    with torch.no_grad():   # non-trivial values everywhere, so every gradient is exercised
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if name.endswith("bn.weight") else 0.0))
        m.bn.running_mean.copy_(torch.randn(8) * 0.1)
        m.bn.running_var.copy_(torch.rand(8) + 0.5)
        m.head[1].running_mean.copy_(torch.randn(4) * 0.1)
        m.head[1].running_var.copy_(torch.rand(4) + 0.5)
        m.head[1].num_batches_tracked.fill_(3)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    st = {}
    for k, v in sd.items():
        st[k] = v.numpy() if v.dtype == torch.int64 else npf(v)
    write_st(os.path.join(FIX, "nn_model.safetensors"), st, {"format": "pt"})
    torch.save(sd, os.path.join(FIX, "nn_model.pth"))
    print("wrote tests/fixtures/nn_model.pth")

    x = torch.randn(2, 3, 8, 8)
    v = torch.randn(1, 2, 3, 4, 4)
    idx = torch.tensor([5, 5])
    m.train()
    o = {}
    o["conv"] = m.conv(x)
    o["gn"] = m.gn(o["conv"])
    h = F.silu(o["gn"])
    o["bn"] = m.bn(h)
    o["down"] = m.down(F.pad(o["bn"], (0, 1, 0, 1)))
    o["head0"] = m.head[0](o["down"])
    o["head1"] = m.head[1](o["head0"])
    o["lin"] = m.lin(o["head1"].reshape(2, -1))
    o["emb"] = m.emb(idx)
    o["ln"] = m.ln(o["lin"] + o["emb"])
    o["vol"] = m.vol.conv(v)
    r_out = torch.randn(2, 6)
    r_vol = torch.randn(1, 3, 3, 4, 4)
    loss = (o["ln"] * r_out).sum() + (o["vol"] * r_vol).sum()
    loss.backward()
    io = {"in.x": npf(x), "in.v": npf(v), "in.idx": idx.numpy().astype(np.float32),
          "in.r_out": npf(r_out), "in.r_vol": npf(r_vol), "loss": np.array([loss.item()], np.float32)}
    for k, t in o.items():
        io["out." + k] = npf(t)
    for k, t in m.state_dict().items():
        if "running" in k or "num_batches" in k:
            io["after." + k] = npf(t.float())
    for k, p in m.named_parameters():
        io["grad." + k] = npf(p.grad)
    m.eval()
    with torch.no_grad():
        io["out.bn_eval"] = npf(m.bn(h))
        io["out.head1_eval"] = npf(m.head[1](o["head0"]))
    write_st(os.path.join(FIX, "nn_model_io.safetensors"), io)


if __name__ == "__main__":
    os.makedirs(FIX, exist_ok=True)
    optim_fixture()
    clip_fixture()
    model_fixture()
