#!/usr/bin/python3
"""Reference fixture for tests/test_lora.c (LoRA in ldm_nn.h), computed with PyTorch 1.13.

    /usr/bin/python3 tests/ref/lora_ref.py        (from the repository root)

A small residual MLP with nn.Linear layers (names as a DiT block: blocks.<i>.attn.qkv,
attn.proj, mlp.fc1, mlp.fc2, head) gets hand-written LoRA on the targets "attn.qkv" and
"mlp.fc1", with peft's arithmetic (peft is not installed here): lora_A = Linear(in, r, no
bias), lora_B = Linear(r, out, no bias), y = base(x) + lora_B(lora_A(dropout(x))) * scaling,
scaling = alpha / r. Every weight, adapters included, comes from common.hash_init's rule keyed
by the ldm.h name ("blocks.0.attn.qkv.lora_A.weight", ...), so the C test rebuilds the same
model without committed weights; B is nonzero so every gradient is nonzero.

Writes tests/fixtures/lora_ref.safetensors:
  x, r                     input [2, 5, 8] and the fixed cotangent R of L = sum(y * R)
  y_base                   output without adapters
  y                        output with adapters
  grad.x, grad.<adapter>   gradients of L
  step1.<adapter>, step2.<adapter>   adapters after 1 and 2 AdamW steps (only adapters train)
  y_step2                  output after the two steps
metadata: r, alpha, lr, weight_decay
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hash_uniform, write_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")
D, HID, OUT, DEPTH, R, ALPHA = 8, 16, 4, 2, 4, 8.0
LR, WD = 1e-2, 0.01
TARGETS = ["attn.qkv", "mlp.fc1"]


def hash_param(name, shape):
    """common.hash_init's rule for one tensor: ndim >= 2 -> U / sqrt(fan_in)."""
    n = int(np.prod(shape))
    u = torch.from_numpy(hash_uniform(name, n)).view(shape)
    if len(shape) >= 2:
        return u / float(np.sqrt(n // shape[0]))
    return (1.0 + 0.1 * u) if name.endswith(".weight") else 0.1 * u


class LoraLinear(nn.Module):
    """peft's LoraLayer/Linear forward for one adapter, written out."""

    def __init__(self, name, fin, fout):
        super().__init__()
        self.name = name
        self.base = nn.Linear(fin, fout)
        self.lora = None
        with torch.no_grad():
            self.base.weight.copy_(hash_param(name + ".weight", (fout, fin)))
            self.base.bias.copy_(hash_param(name + ".bias", (fout,)))

    def add_lora(self, r, alpha):
        fin, fout = self.base.in_features, self.base.out_features
        self.lora_A = nn.Linear(fin, r, bias=False)
        self.lora_B = nn.Linear(r, fout, bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(hash_param(self.name + ".lora_A.weight", (r, fin)))
            self.lora_B.weight.copy_(hash_param(self.name + ".lora_B.weight", (fout, r)))
        self.scaling = alpha / r
        self.lora = True

    def forward(self, x):
        y = self.base(x)
        if self.lora:
            y = y + self.lora_B(self.lora_A(x)) * self.scaling  # dropout 0: Identity
        return y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = {}
        for b in range(DEPTH):
            for nm, fi, fo in (("attn.qkv", D, D), ("attn.proj", D, D), ("mlp.fc1", D, HID), ("mlp.fc2", HID, D)):
                full = "blocks.%d.%s" % (b, nm)
                self.layers[full] = LoraLinear(full, fi, fo)
        self.layers["head"] = LoraLinear("head", D, OUT)
        self.mods = nn.ModuleList(self.layers.values())

    def forward(self, x):
        h = x
        L = self.layers
        for b in range(DEPTH):
            p = "blocks.%d." % b
            h = h + L[p + "attn.proj"](F.silu(L[p + "attn.qkv"](h)))
            h = h + L[p + "mlp.fc2"](F.silu(L[p + "mlp.fc1"](h)))
        return L["head"](h)


def main():
    torch.manual_seed(0)
    net = Net()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, D, generator=g)
    rr = torch.randn(2, 5, OUT, generator=g)
    out = {"x": x, "r": rr}
    with torch.no_grad():
        out["y_base"] = net(x)
    adapters = []
    for name, m in net.layers.items():
        if any(name == t or name.endswith("." + t) for t in TARGETS):
            m.add_lora(R, ALPHA)
            adapters.append((name + ".lora_A.weight", m.lora_A.weight))
            adapters.append((name + ".lora_B.weight", m.lora_B.weight))
    for p in net.parameters():
        p.requires_grad_(False)
    for _, p in adapters:
        p.requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    y = net(xg)
    (y * rr).sum().backward()
    out["y"] = y.detach()
    out["grad.x"] = xg.grad
    for n, p in adapters:
        out["grad." + n] = p.grad.clone()
    opt = torch.optim.AdamW([p for _, p in adapters], lr=LR, weight_decay=WD)
    for step in (1, 2):
        if step == 2:
            opt.zero_grad()
            (net(x) * rr).sum().backward()
        opt.step()
        for n, p in adapters:
            out["step%d.%s" % (step, n)] = p.detach().clone()
    with torch.no_grad():
        out["y_step2"] = net(x)
    path = os.path.join(FIX, "lora_ref.safetensors")
    write_safetensors(path, out, {"r": R, "alpha": ALPHA, "lr": LR, "weight_decay": WD})
    print("wrote %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))


if __name__ == "__main__":
    main()
