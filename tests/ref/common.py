"""Shared helpers for the reference scripts: a hand-written safetensors writer (no python
safetensors package on these machines) and the hash-based weight generator that the C tests
reproduce exactly (tests/ldm_test.h: lt_hash_fill), so big random models need no fixture."""
import json, struct
import numpy as np
import torch

_NPDT = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
         np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
         np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def _raw(t):
    """(dtype code, little-endian bytes) of a torch tensor or numpy array."""
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
            return "BF16", t.view(torch.int16).numpy().astype("<i2").tobytes()
        t = t.numpy()
    a = np.asarray(t)
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return _NPDT[a.dtype], a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """The safetensors layout by hand: u64 header length, JSON header (metadata first, then the
    tensors in dict order) padded with spaces to 8 bytes, then the data. Values: torch tensors
    (any float/int dtype incl. bfloat16) or numpy arrays."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        code, raw = _raw(t)
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


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



def hashed(name, shape):
    """hash_uniform as a float64 tensor of the given shape."""
    n = 1
    for s in shape:
        n *= s
    return torch.from_numpy(hash_uniform(name, n)).double().view(*shape)

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
