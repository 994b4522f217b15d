"""Writes tests/fixtures/video_sr_ref.safetensors for tests/test_video_sr.c: the VideoSREngine's
numerics before the denoiser (examples/model_video.h), in float64 (stored F32). Every weight is
a hash weight (common.py hash_init; the C test makes the same ones), so none is committed.
  video      a clip x [B=2, T=3, C=3, H=12, W=12] (hash "vsr.video", in [-1, 1))
  lr_bicubic every frame F.interpolate'd to floor(12 / 3) = 4 and back to 12, bicubic,
             align_corners=False (lr_scale 3); lr_bilinear the same with bilinear
  z          the latents the DiT sees: a 2-D AutoencoderKL (vae_model.py, ch 32, ch_mult 1,2:
             f = 2, z 2, embed 2) encodes the frames folded into the batch [B*T, C, H, W], the
             posterior mode, reshaped to [B, T, Z, h, w], permuted to [B, Z, T, h, w], times
             scale_factor 0.7
  c          the same for lr_bicubic: the concatenated condition
  z3, c3     the same with a dims-3 AutoencoderKL (Conv3d; f = 2 in T, H, W) on the clip as a
             volume [B, C, T, H, W] with T = 4 (video4: [2, 4, 3, 8, 8], lr_scale 2: lr3)
Run: /usr/bin/python3 tests/ref/video_sr_ref.py  (from the repository root)"""
import os, sys
import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hashed
from vae_model import AutoencoderKL

torch.set_default_dtype(torch.float64)
FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")
t = {}


def degrade(x, s, mode):
    B, T, C, H, W = x.shape
    f = x.reshape(B * T, C, H, W)
    lo = F.interpolate(f, size=(int(H // s), int(W // s)), mode=mode, align_corners=False)
    return F.interpolate(lo, size=(H, W), mode=mode, align_corners=False).reshape(B, T, C, H, W)


dd = dict(double_z=True, z_channels=2, resolution=12, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
          attn_resolutions=[], dropout=0.0)
vae = AutoencoderKL(dd, 2).double()
hash_init(vae)
x = hashed("vsr.video", (2, 3, 3, 12, 12))
lr = degrade(x, 3, "bicubic")
t["video"], t["lr_bicubic"], t["lr_bilinear"] = x, lr, degrade(x, 3, "bilinear")


def enc2(v):
    B, T, C, H, W = v.shape
    with torch.no_grad():
        m, _ = vae.encode(v.reshape(B * T, C, H, W))
    return 0.7 * m.reshape(B, T, m.shape[1], m.shape[2], m.shape[3]).permute(0, 2, 1, 3, 4)


t["z"], t["c"] = enc2(x), enc2(lr)

dd3 = dict(dd, resolution=8, dims=3)
vae3 = AutoencoderKL(dd3, 2).double()
hash_init(vae3)
x4 = hashed("vsr.video4", (2, 4, 3, 8, 8))
lr3 = degrade(x4, 2, "bicubic")


def enc3(v):
    with torch.no_grad():
        m, _ = vae3.encode(v.permute(0, 2, 1, 3, 4))
    return 0.7 * m


t["video4"], t["lr3"], t["z3"], t["c3"] = x4, lr3, enc3(x4), enc3(lr3)
write_safetensors(os.path.join(FIX, "video_sr_ref.safetensors"), {k: v.float() for k, v in t.items()})
print({k: tuple(v.shape) for k, v in t.items()})
