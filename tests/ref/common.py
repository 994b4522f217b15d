"""Shared helpers for the reference scripts: a hand-written safetensors writer (no python
safetensors package on these machines) and the hash-based weight generator that the C tests
reproduce exactly (tests/ldm_test.h: lt_hash_fill), so big random models need no fixture."""
import json, struct
import numpy as np
import torch

_DT = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16)}


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor (float32/float16/bfloat16), written in dict order."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes(); dt = "BF16"
        else:
            code, npdt = _DT[t.dtype]
            raw = t.numpy().astype(npdt).astype(np.dtype(npdt).newbyteorder("<")).tobytes(); dt = code
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw); off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)


M64 = (1 << 64) - 1


def _fnv1a64(s):
    h = 0xcbf29ce484222325
    for c in s.encode():
        h ^= c; h = (h * 0x100000001b3) & M64
    return h


def hash_uniform(name, n):
    """n floats in [-1, 1): splitmix64 finaliser of (fnv1a64(name) + i*golden), top 24 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(_fnv1a64(name)) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)
    return (2.0 * u - 1.0).astype(np.float32)


def hash_init(module):
    """Deterministic weights for any torch module, keyed by state-dict name: conv/linear weights
    U(-1,1)/sqrt(fan_in), biases 0.1*U, norm weights 1 + 0.1*U, norm biases 0.1*U."""
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if not p.dtype.is_floating_point:
                continue
            u = torch.from_numpy(hash_uniform(name, p.numel())).view(p.shape)
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= 2:
                p.copy_(u / float(np.sqrt(p[0].numel())))
            elif leaf == "weight":
                p.copy_(1.0 + 0.1 * u)
            else:
                p.copy_(0.1 * u)
