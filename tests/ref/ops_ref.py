#!/usr/bin/python3
"""ops_ref.py - PyTorch reference for every ldm_tensor.h op -> tests/fixtures/ops.safetensors.

For each case <c>: inputs <c>/x0.., outputs <c>/y0.., the fixed upstream gradients <c>/r0..
(the loss is sum_k sum(y_k * r_k)) and the input gradients <c>/g0..; batch norm adds the
running statistics before (<c>/rm, <c>/rv) and after (<c>/rm_out, <c>/rv_out) the call,
embedding its indices (<c>/idx, as floats). Inputs are drawn in float32, the computation runs
in float64 and everything is stored as float32. tests/test_ops.c lists the same cases with the
same parameters.

Run: /usr/bin/python3 tests/ref/ops_ref.py   (torch 1.13, numpy; writes the fixture in place)
Dropout is not here: its mask comes from ldm.h's Philox stream, not torch's; test_grad.c checks
it against the mask rebuilt from the same draws."""
import json
import os
import sys
import struct

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
rng = np.random.default_rng(20240611)
tensors = {}  # name -> float32 array, in insertion order


def U(shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def away(shape, lo, hi, kinks, gap=0.05):
    x = U(shape, lo, hi)
    flat = x.reshape(-1)
    for i in range(flat.size):
        while any(abs(flat[i] - k) <= gap for k in kinks):
            flat[i] = np.float32(rng.uniform(lo, hi))
    return x


def distinct(shape, step=0.05):
    n = int(np.prod(shape))
    v = ((np.arange(n) - 0.5 * n) * step).astype(np.float32)
    rng.shuffle(v)
    return v.reshape(shape)


def case(name, fn, *inputs, extra=None):
    """Runs fn on float64 copies of inputs, stores inputs, outputs, r and gradients."""
    ts = [torch.tensor(x.astype(np.float64), requires_grad=True) for x in inputs]
    out = fn(*ts)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    loss = 0.0
    rs = []
    for y in outs:
        r = U(tuple(y.shape))
        rs.append(r)
        loss = loss + (y * torch.tensor(r.astype(np.float64))).sum()
    loss.backward()
    for k, x in enumerate(inputs):
        tensors[f"{name}/x{k}"] = x
    for k, (y, r) in enumerate(zip(outs, rs)):
        tensors[f"{name}/y{k}"] = y.detach().numpy().astype(np.float32)
        tensors[f"{name}/r{k}"] = r
    for k, t in enumerate(ts):
        g = t.grad if t.grad is not None else torch.zeros_like(t)
        tensors[f"{name}/g{k}"] = g.numpy().astype(np.float32)
    for k, v in (extra or {}).items():
        tensors[f"{name}/{k}"] = np.asarray(v, dtype=np.float32)


# ---- element-wise with broadcasting ------------------------------------------------------
BCAST = [("a", (2, 3, 4), (3, 1)), ("b", (2, 1, 4), (2, 3, 1)), ("c", (3, 5, 7), (1,)), ("d", (1,), (3, 5, 7)),
         ("e", (2, 1, 3, 1, 5), (1, 3, 1, 4, 1)), ("f", (5, 9), (5, 9)), ("g", (4, 1, 6), (6,))]
for op, fn in [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div)]:
    for tag, sa, sb in BCAST:
        b = U(sb, 0.5, 1.5) if op == "div" else U(sb)
        case(f"{op}_{tag}", fn, U(sa), b)

# ---- scalar and unary ---------------------------------------------------------------------
X = (3, 5, 7)
case("affine", lambda x: x * 1.7 + (-0.3), U(X))
case("scale", lambda x: x * -2.5, U(X))
case("add_scalar", lambda x: x + 0.75, U(X))
case("pow2", lambda x: torch.pow(x, 2.0), U(X, -1.5, 1.5))
case("pow3", lambda x: torch.pow(x, 3.0), U(X, -1.5, 1.5))
case("pow2_5", lambda x: torch.pow(x, 2.5), U(X, 0.3, 2.0))
case("pow_m0_5", lambda x: torch.pow(x, -0.5), U(X, 0.5, 2.0))
case("exp", torch.exp, U(X, -3, 3))
case("log", torch.log, U(X, 0.2, 4))
case("sqrt", torch.sqrt, U(X, 0.2, 4))
case("abs", torch.abs, away(X, -2, 2, [0.0]))
case("square", torch.square, U(X, -2, 2))
case("clamp", lambda x: torch.clamp(x, -0.5, 0.8), away(X, -1.5, 1.5, [-0.5, 0.8]))
case("sigmoid", torch.sigmoid, U(X, -6, 6))
case("silu", F.silu, U(X, -6, 6))
case("relu", F.relu, away(X, -2, 2, [0.0]))
case("leaky_relu", lambda x: F.leaky_relu(x, 0.2), away(X, -2, 2, [0.0]))
case("tanh", torch.tanh, U(X, -3, 3))
case("gelu", lambda x: F.gelu(x, approximate="none"), U(X, -4, 4))
case("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), U(X, -4, 4))
case("softplus", lambda x: F.softplus(x, beta=1.0, threshold=20.0), U(X, -25, 25))
case("softplus_b2_t3", lambda x: F.softplus(x, beta=2.0, threshold=3.0), away(X, -3, 3, [1.5]))

# ---- reductions ----------------------------------------------------------------------------
R4 = (2, 3, 4, 5)
for mask in [0x1, 0x2, 0x5, 0xA, 0xE, 0xF]:
    dims = [i for i in range(4) if mask >> i & 1]
    for keep in (0, 1):
        case(f"sum_{mask:x}_{keep}", lambda x, d=dims, k=keep: x.sum(dim=d, keepdim=bool(k)), U(R4))
        case(f"mean_{mask:x}_{keep}", lambda x, d=dims, k=keep: x.mean(dim=d, keepdim=bool(k)), U(R4))
case("sum_all", lambda x: x.sum().reshape(1), U((2, 1, 3, 4, 5)))
case("mean_all", lambda x: x.mean().reshape(1), U((2, 1, 3, 4, 5)))
case("sum_size1", lambda x: x.sum(dim=[1, 2], keepdim=True), U((3, 1, 4, 1)))

# ---- matmul and linear ---------------------------------------------------------------------
M, K, N = 5, 7, 6
for ta in (0, 1):
    for tb in (0, 1):
        for tag, ba, bb in [("22", 0, 0), ("33", 3, 3), ("23", 0, 3), ("32", 3, 0)]:
            sa = (K, M) if ta else (M, K)
            sb = (N, K) if tb else (K, N)
            if ba:
                sa = (ba,) + sa
            if bb:
                sb = (bb,) + sb

            def mm(a, b, ta=ta, tb=tb):
                return torch.matmul(a.transpose(-1, -2) if ta else a, b.transpose(-1, -2) if tb else b)
            case(f"matmul_{tag}_{ta}{tb}", mm, U(sa), U(sb))
case("linear", F.linear, U((4, 9)), U((5, 9), -0.5, 0.5), U((5,)))
case("linear_nobias", F.linear, U((4, 9)), U((5, 9), -0.5, 0.5))
case("linear_3d", F.linear, U((2, 3, 9)), U((5, 9), -0.5, 0.5), U((5,)))

# ---- convolution ---------------------------------------------------------------------------
CONV2D = [("k1s1p0", 1, 1, 0, 1), ("k1s2p0", 1, 2, 0, 1), ("k3s1p1", 3, 1, 1, 1), ("k3s2p1", 3, 2, 1, 1),
          ("k3s1p0_nb", 3, 1, 0, 0), ("k4s2p1", 4, 2, 1, 1), ("k4s1p1", 4, 1, 1, 1), ("k5s1p2", 5, 1, 2, 1)]
for tag, k, s, p, bias in CONV2D:
    ins = [U((2, 5, 9, 11)), U((7, 5, k, k), -0.3, 0.3)] + ([U((7,))] if bias else [])
    case(f"conv2d_{tag}", lambda x, w, b=None, s=s, p=p: F.conv2d(x, w, b, stride=s, padding=p), *ins)
# ldm_conv2d_ex: stride (sh, sw), pads (top, bottom, left, right)
CONV2D_EX = [("down", (2, 2), (0, 1, 0, 1), 1), ("asym", (1, 2), (2, 0, 1, 3), 1), ("asym_nb", (2, 1), (1, 0, 0, 2), 0)]
for tag, (sh, sw), (pt, pb, pl, pr), bias in CONV2D_EX:
    ins = [U((2, 5, 8, 9)), U((6, 5, 3, 3), -0.3, 0.3)] + ([U((6,))] if bias else [])
    case(f"conv2d_ex_{tag}",
         lambda x, w, b=None, sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr: F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride=(sh, sw)),
         *ins)
case("conv3d_k3s1p1", lambda x, w, b: F.conv3d(x, w, b, stride=1, padding=1),
     U((2, 3, 4, 5, 6)), U((5, 3, 3, 3, 3), -0.3, 0.3), U((5,)))
case("conv3d_k2s2p0_nb", lambda x, w: F.conv3d(x, w, None, stride=2, padding=0),
     U((1, 3, 5, 6, 7)), U((4, 3, 2, 2, 2), -0.3, 0.3))
# ldm_conv3d_ex: stride (t, h, w), pads (front, back, top, bottom, left, right)
CONV3D_EX = [("a", (1, 2, 2), (1, 1, 0, 1, 0, 1), (3, 3, 3), 1), ("b", (2, 1, 1), (0, 1, 1, 1, 2, 0), (2, 1, 3), 0)]
for tag, st, pd, ks, bias in CONV3D_EX:
    ins = [U((1, 3, 4, 6, 5)), U((4, 3) + ks, -0.3, 0.3)] + ([U((4,))] if bias else [])
    case(f"conv3d_ex_{tag}",
         lambda x, w, b=None, st=st, pd=pd: F.conv3d(F.pad(x, (pd[4], pd[5], pd[2], pd[3], pd[0], pd[1])), w, b, stride=st), *ins)

# ---- normalisation -------------------------------------------------------------------------
case("group_norm", lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-6),
     U((2, 12, 5, 7), -1, 2), U((12,), 0.5, 1.5), U((12,)))
case("group_norm_noaffine", lambda x: F.group_norm(x, 4, None, None, eps=1e-5), U((2, 12, 5, 7), -1, 2))
case("group_norm_32", lambda x, w, b: F.group_norm(x, 32, w, b, eps=1e-6),
     U((1, 96, 4, 5), -1, 2), U((96,), 0.5, 1.5), U((96,)))
case("group_norm_5d", lambda x, w, b: F.group_norm(x, 2, w, b, eps=1e-6),
     U((2, 6, 3, 4, 5), -1, 2), U((6,), 0.5, 1.5), U((6,)))
# constant offset: the variance must not lose precision to the mean
case("group_norm_offset", lambda x, w, b: F.group_norm(x, 2, w, b, eps=1e-6),
     U((2, 4, 6, 6), 99, 101), U((4,), 0.5, 1.5), U((4,)))


def bn_case(name, training, x, w=None, b=None, momentum=0.1, eps=1e-5):
    C = x.shape[1]
    rm0, rv0 = U((C,), -0.5, 0.5), U((C,), 0.5, 2.0)
    state = {}

    def fn(*ts):
        rm = torch.tensor(rm0.astype(np.float64))
        rv = torch.tensor(rv0.astype(np.float64))
        y = F.batch_norm(ts[0], rm, rv, ts[1] if len(ts) > 1 else None, ts[2] if len(ts) > 2 else None,
                         training=training, momentum=momentum, eps=eps)
        state["rm"], state["rv"] = rm, rv
        return y
    ins = [x] + ([w, b] if w is not None else [])
    case(name, fn, *ins)
    tensors[f"{name}/rm"], tensors[f"{name}/rv"] = rm0, rv0
    tensors[f"{name}/rm_out"] = state["rm"].numpy().astype(np.float32)
    tensors[f"{name}/rv_out"] = state["rv"].numpy().astype(np.float32)


bn_case("batch_norm_train", True, U((3, 6, 5, 7), -1, 2), U((6,), 0.5, 1.5), U((6,)))
bn_case("batch_norm_train_noaffine", True, U((5, 3), -1, 2))
bn_case("batch_norm_train_5d", True, U((2, 5, 3, 4, 3), -1, 2), U((5,), 0.5, 1.5), U((5,)))
bn_case("batch_norm_eval", False, U((3, 6, 5, 7), -1, 2), U((6,), 0.5, 1.5), U((6,)))
case("layer_norm_1", lambda x, w, b: F.layer_norm(x, (9,), w, b, eps=1e-5), U((3, 5, 9), -1, 2), U((9,), 0.5, 1.5), U((9,)))
case("layer_norm_2", lambda x, w, b: F.layer_norm(x, (5, 9), w, b, eps=1e-6), U((3, 5, 9), -1, 2), U((5, 9), 0.5, 1.5), U((5, 9)))
case("layer_norm_noaffine", lambda x: F.layer_norm(x, (9,), None, None, eps=1e-5), U((3, 5, 9), -1, 2))
for d in range(3):
    case(f"softmax_{d}", lambda x, d=d: F.softmax(x, dim=d), U((3, 5, 7), -3, 3))
case("softmax_large", lambda x: F.softmax(x, dim=-1), U((4, 33), -80, 80))

# ---- spatial -------------------------------------------------------------------------------
case("upsample2d", lambda x: F.interpolate(x, size=(10, 14), mode="nearest"), U((2, 3, 5, 7)))
case("upsample2d_31", lambda x: F.interpolate(x, size=(15, 7), mode="nearest"), U((1, 3, 5, 7)))
case("upsample3d", lambda x: F.interpolate(x, size=(6, 8, 10), mode="nearest"), U((1, 3, 3, 4, 5)))
case("upsample3d_122", lambda x: F.interpolate(x, size=(3, 8, 10), mode="nearest"), U((1, 3, 3, 4, 5)))
POOLS = [("k2s2p0", 2, 2, 0), ("k3s2p1", 3, 2, 1), ("k3s1p1", 3, 1, 1), ("k2s1p1", 2, 1, 1), ("k3s3p0", 3, 3, 0)]
for tag, k, s, p in POOLS:
    case(f"avg_pool2d_{tag}", lambda x, k=k, s=s, p=p: F.avg_pool2d(x, k, s, p, count_include_pad=True), U((2, 3, 7, 9)))
    case(f"max_pool2d_{tag}", lambda x, k=k, s=s, p=p: F.max_pool2d(x, k, s, p), distinct((2, 3, 7, 9)))
    case(f"avg_pool3d_{tag}", lambda x, k=k, s=s, p=p: F.avg_pool3d(x, k, s, p, count_include_pad=True), U((1, 2, 5, 6, 7)))
    case(f"max_pool3d_{tag}", lambda x, k=k, s=s, p=p: F.max_pool3d(x, k, s, p), distinct((1, 2, 5, 6, 7)))
# all-negative input: padding must act as -inf, not 0
case("max_pool2d_neg", lambda x: F.max_pool2d(x, 3, 2, 1), distinct((1, 2, 5, 6)) - 10.0)
case("pad_1", lambda x: F.pad(x, (1, 2)), U((2, 3, 4)))
case("pad_2", lambda x: F.pad(x, (0, 1, 0, 1), value=0.5), U((1, 3, 5, 6)))
case("pad_3", lambda x: F.pad(x, (1, 0, 2, 1, 0, 1), value=-1.0), U((1, 2, 3, 4, 2)))

# ---- shape ---------------------------------------------------------------------------------
case("reshape", lambda x: x.reshape(4, -1, 3), U((2, 3, 4, 3)))
case("permute_3", lambda x: x.permute(2, 0, 1), U((2, 3, 4)))
case("permute_4", lambda x: x.permute(0, 2, 3, 1), U((2, 3, 4, 5)))
case("permute_5", lambda x: x.permute(4, 2, 0, 3, 1), U((2, 3, 1, 4, 5)))
case("transpose", lambda x: x.transpose(1, -1), U((2, 3, 4, 5)))
case("concat_2", lambda a, b: torch.cat([a, b], dim=1), U((2, 3, 4)), U((2, 5, 4)))
case("concat_6", lambda *xs: torch.cat(xs, dim=0), U((1, 3, 2)), U((2, 3, 2)), U((1, 3, 2)), U((3, 3, 2)), U((1, 3, 2)), U((2, 3, 2)))
case("concat_last", lambda a, b, c: torch.cat([a, b, c], dim=-1), U((2, 3, 1)), U((2, 3, 4)), U((2, 3, 2)))
case("slice", lambda x: x.narrow(1, 1, 3), U((2, 5, 3)))
case("split", lambda x: torch.split(x, [1, 3, 1], dim=2), U((2, 3, 5)))
case("chunk", lambda x: torch.chunk(x, 3, dim=1), U((2, 6, 3, 2)))
case("copy", lambda x: x.clone(), U((3, 4)))
IDX = [3, 0, 3, 6, 3, 0, 1, 6, 2]
case("embedding", lambda w: F.embedding(torch.tensor(IDX), w), U((7, 5)), extra={"idx": IDX})


# ---- a small graph: fan-out, shared inputs, views (LT_GRAPH in tests/lt_ops.h) --------------
def graph(x, w, b, gw, gb):
    h = F.conv2d(F.silu(F.group_norm(x, 2, gw, gb, eps=1e-6)), w, b, padding=1)
    y = (x + h) * torch.sigmoid(h)
    t = (y + y.mean(dim=(2, 3), keepdim=True)).permute(0, 3, 1, 2)
    return t.reshape(-1, x.shape[1]).reshape(t.shape).permute(0, 2, 3, 1)


case("graph", graph, U((2, 6, 5, 7)), U((6, 6, 3, 3), -0.3, 0.3), U((6,), -0.5, 0.5), U((6,), 0.5, 1.5), U((6,), -0.5, 0.5))

# ---- fused group norm + SiLU (ldm_group_norm_silu); after every other case so that adding
# them left the earlier cases' random draws unchanged ------------------------------------------
case("group_norm_silu", lambda x, w, b: F.silu(F.group_norm(x, 3, w, b, eps=1e-6)),
     U((2, 12, 5, 7), -1, 2), U((12,), 0.5, 1.5), U((12,)))
case("group_norm_silu_noaffine", lambda x: F.silu(F.group_norm(x, 4, None, None, eps=1e-5)), U((2, 12, 5, 7), -1, 2))
case("group_norm_silu_32", lambda x, w, b: F.silu(F.group_norm(x, 32, w, b, eps=1e-6)),
     U((1, 96, 4, 5), -1, 2), U((96,), 0.5, 1.5), U((96,), -2, 2))
case("group_norm_silu_5d", lambda x, w, b: F.silu(F.group_norm(x, 2, w, b, eps=1e-6)),
     U((2, 6, 3, 4, 5), -1, 2), U((6,), 0.5, 1.5), U((6,)))


out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ops.safetensors")
os.makedirs(os.path.dirname(out), exist_ok=True)
write_safetensors(out, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, {"generator": "tests/ref/ops_ref.py", "torch": torch.__version__})
print(f"wrote {out}: {len(tensors)} tensors, {os.path.getsize(out)} bytes")
