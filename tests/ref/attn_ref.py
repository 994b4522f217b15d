"""Reference for ldm_attention (tests/test_attention.c): multi-head scaled dot-product attention
on token-major [B, S, heads*D] tensors, its output and the q/k/v gradients of sum(out * g).
Inputs come from hash_uniform (the C test regenerates them); the fixture holds the results.
Run: /usr/bin/python3 tests/ref/attn_ref.py  ->  tests/fixtures/attn_ref.safetensors"""
import os
import torch
from common import hash_uniform, write_safetensors

# (B, Sq, Sk, heads, D, scale, input amplitude): blocks are 128 (D <= 128) or 64 rows, so
# these cover lengths that are not a multiple of a block, Sq != Sk (cross-attention),
# heads 1/2/8, a D above 128, and an explicit scale.
CASES = [
    (2, 37, 37, 1, 16, 0.0, 1.0),
    (1, 130, 70, 2, 24, 0.0, 2.0),
    (1, 20, 150, 8, 8, 0.0, 3.0),
    (1, 65, 70, 1, 136, 0.0, 1.0),
    (1, 140, 140, 2, 20, 0.3, 2.0),
    (1, 257, 9, 8, 4, 0.0, 4.0),
]


def inputs(i, B, Sq, Sk, H, D, amp):
    def u(tag, S):
        return torch.from_numpy(hash_uniform("attn%d.%s" % (i, tag), B * S * H * D)).view(B, S, H * D)
    return u("q", Sq) * amp, u("k", Sk) * amp, u("v", Sk), u("g", Sq)


def attention(q, k, v, H, scale):
    B, Sq, C = q.shape
    D = C // H
    qh = q.view(B, Sq, H, D).transpose(1, 2)
    kh = k.view(B, -1, H, D).transpose(1, 2)
    vh = v.view(B, -1, H, D).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(B, Sq, C)


def main():
    out = {}
    for i, (B, Sq, Sk, H, D, scale, amp) in enumerate(CASES):
        q, k, v, g = inputs(i, B, Sq, Sk, H, D, amp)
        q, k, v = (t.double().requires_grad_() for t in (q, k, v))
        o = attention(q, k, v, H, scale if scale else D ** -0.5)
        (o * g.double()).sum().backward()
        for name, t in (("o", o), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
            out["attn%d.%s" % (i, name)] = t.detach().float().contiguous()
    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "attn_ref.safetensors")
    write_safetensors(path, out)
    print("wrote", path, sum(t.numel() for t in out.values()) * 4, "bytes")


if __name__ == "__main__":
    main()
