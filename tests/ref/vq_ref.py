"""Writes tests/fixtures/vq_tiny.safetensors: the VQ first stage (CompVis VQModelInterface with
taming's VectorQuantizer2, inference forward) for tests/test_vq.c.
  Model: a tiny config (ch 32, ch_mult 1,2, z 3, embed_dim 3, n_embed 64, attention at 16) with
  hash weights (tests/ref/common.py hash_init; the C test makes them with lt_hash_init), except
  the codebook, which is committed: rows are encoder outputs of other images (farthest-point picks)
  plus noise, so the indices spread over the codebook, and rows 56..63 repeat rows 8..15 (exact ties, which
  argmin breaks to the first index).
  Tensors: x, h (encode, not quantized), zq (quantized), indices (as floats), dec (decode with
  quantization), dec_code (decode_code of the indices), codebook; outputs in float64 math, the
  indices from float32 math (what inference runs), checked equal to float64's. Metadata: the
  state-dict names in order, and the parameter count of the CompVis vq-f4 config.
Run: /usr/bin/python3 tests/ref/vq_ref.py  (from the repository root)"""
import os, sys
import torch
import torch.nn as nn
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init
from vae_model import Encoder, Decoder

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")


class VectorQuantizer2(nn.Module):
    """taming.modules.vqvae.quantize.VectorQuantizer2.forward for inference (remap None; the
    loss terms do not change z_q or the indices)."""
    def __init__(self, n_e, e_dim):
        super().__init__()
        self.n_e, self.e_dim = n_e, e_dim
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()                       # b c h w -> b h w c
        zf = z.view(-1, self.e_dim)
        w = self.embedding.weight
        d = torch.sum(zf ** 2, dim=1, keepdim=True) + torch.sum(w ** 2, dim=1) - \
            2 * torch.einsum("bd,dn->bn", zf, w.t())
        idx = torch.argmin(d, dim=1)
        zq = self.embedding(idx).view(z.shape)
        zq = z + (zq - z).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), idx, d

    def get_codebook_entry(self, idx, shape):
        return self.embedding(idx).view(shape).permute(0, 3, 1, 2).contiguous()


class VQModelInterface(nn.Module):
    """Module order = CompVis VQModel's state dict (its loss.* sits between decoder and quantize)."""
    def __init__(self, ddconfig, n_embed, embed_dim):
        super().__init__()
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, h, force_not_quantize=False):
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, idx, shape):
        return self.decode(self.quantize.get_codebook_entry(idx, shape), force_not_quantize=True)


def main():
    dd = dict(double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
              num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
    n_embed, embed = 64, 3
    torch.manual_seed(0)
    m = VQModelInterface(dd, n_embed, embed)
    hash_init(m)
    x = torch.rand((2, 3, 16, 16)) * 2 - 1
    other = torch.rand((4, 3, 16, 16)) * 2 - 1
    with torch.no_grad():
        pool = m.encode(other).permute(0, 2, 3, 1).reshape(-1, embed)
        pick = [0]  # farthest-point picks: well separated rows, so no position sits near a tie
        dist = ((pool - pool[0]) ** 2).sum(1)
        for _ in range(n_embed - 9):
            pick.append(int(torch.argmax(dist)))
            dist = torch.minimum(dist, ((pool - pool[pick[-1]]) ** 2).sum(1))
        cb = pool[pick] + 0.05 * pool.std() * torch.randn(n_embed - 8, embed)
        cb = torch.cat([cb, cb[8:16]], 0)
        m.quantize.embedding.weight.copy_(cb)

    with torch.no_grad():
        m32 = m
        h32 = m32.encode(x)
        _, idx32, _ = m32.quantize(h32)
        m64 = VQModelInterface(dd, n_embed, embed).double()
        m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        h = m64.encode(x.double())
        zq, idx, d = m64.quantize(h)
        assert torch.equal(idx, idx32), "float32 and float64 pick different codebook rows"
        # the C result's h differs from PyTorch's by float32 rounding (~1e-6, so d by ~1e-7):
        # every nearest row must win by far more than that, except at the planted exact ties
        best = d.gather(1, idx[:, None])
        other = d.clone()
        other.scatter_(1, idx[:, None], float("inf"))
        twin = torch.where(idx < 16, idx + 48, idx)  # the copy of a planted row
        exact = (d.gather(1, twin[:, None]) == best).squeeze(1) & (idx >= 8) & (idx < 16)
        other[exact, twin[exact]] = float("inf")
        gap = (other.min(1).values - best.squeeze(1)).min().item()
        assert gap > 1e-5, gap
        ties = sum(1 for i in idx.tolist() if 8 <= i < 16)
        dec = m64.decode(h)
        dec_code = m64.decode_code(idx, (2, 8, 8, embed))
    print("indices used: %d distinct of %d; positions on a planted tie: %d; smallest margin to the second-nearest row %.3g (d is ~%.3g)"
          % (len(set(idx.tolist())), n_embed, ties, gap, best.mean().item()))
    assert ties > 0 and len(set(idx.tolist())) > 16

    full = dict(double_z=False, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    f4 = VQModelInterface(full, 8192, 3)
    f4_params = sum(p.numel() for p in f4.parameters())
    print("vq-f4 parameters", f4_params)

    t = {"x": x, "h": h.float(), "zq": zq.float(), "indices": idx.float(), "dec": dec.float(),
         "dec_code": dec_code.float(), "codebook": m.quantize.embedding.weight.detach()}
    meta = {"state_dict_keys": ",".join(m.state_dict().keys()), "vq_f4_params": str(f4_params),
            "n_embed": str(n_embed), "embed_dim": str(embed)}
    write_safetensors(os.path.join(FIX, "vq_tiny.safetensors"), t, meta)


if __name__ == "__main__":
    main()
