"""Writes tests/fixtures/vol3d_ref.safetensors: float64 references (stored F32) for the 3-D
(volume, [B,C,T,H,W]) parts of ldm.h, checked by tests/test_vol3d.c. Every weight is a hash
weight (tests/ref/common.py hash_init; the C test makes the same ones), so none is committed.
  conv<k>.*  nn.functional.conv3d: padding/stride variants (incl. the VAE Downsample's
             F.pad (0,1,0,1,0,1) + stride 2): out, and the gradients of sum(out * R) w.r.t.
             x, weight and bias
  attn.*     AttnBlock (GroupNorm + q/k/v/proj_out 1x1x1 convs, softmax over T*H*W): out and
             the gradients of sum(out * R) w.r.t. x and every parameter (full)
  vae<k>.*   a tiny 3-D AutoencoderKL (vae_model.py with dims=3): moments (mean, logvar), z =
             mean + exp(logvar/2) eps, decode(z), decode(mean), kl; loss = sum(dec * R) +
             0.01 sum(kl): its value, x_grad, and per parameter gproj (gradient . hash vector,
             |gradient|^2) and shape.<name> (the state-dict shape)
  loss<k>.*  the LPIPS-free volume loss on vae0's model (L1 or L2 reconstruction with the
             learned logvar + kl_weight KL + 3-D PatchGAN hinge with the adaptive weight), the
             generator and discriminator losses, every logged value, the VAE's gradient
             projections of the generator loss, the discriminator's of its loss, and the
             BatchNorm3d running statistics after both steps
  unet.*     a tiny ldm_diffusion.h UNet with dims=3 on a [1, 3, 8, 8, 8] latent volume: out,
             x_grad, per parameter gproj of sum(out * R)
  ldm.*      end to end: vae0 encodes a [1, 1, 16, 16, 16] volume (mode x 0.5), the UNet's eps
             loss at t = 613 of the linear schedule (0.0015, 0.0195) with its gradient
             projections, and a 4-step DDIM (eta 0) sample from a hash x_T decoded to a volume
  psnr       PSNR of two [2, 1, 6, 7, 8] volumes over C,T,H,W (data_range 2)
Run: /usr/bin/python3 tests/ref/vol3d_ref.py  (from the repository root)"""
import os, sys
import torch
import torch.nn as nn
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hashed
from vae_model import AutoencoderKL, AttnBlock, kl
from lpips_model import NLayerDiscriminator, hinge_d_loss
from denoiser_model import UNetModel

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")
torch.manual_seed(0)
t = {}


def gproj(prefix, module):
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach()
        h = hashed("proj." + name, g.shape)
        t[prefix + name] = torch.stack([(g * h).sum(), (g * g).sum()])


# ---- Conv3d: (x shape, weight shape, stride, pads F.pad order (W lo, W hi, H lo, H hi, T lo, T hi)) ----
CONVS = [((2, 3, 5, 6, 7), (4, 3, 3, 3, 3), (1, 1, 1), (1, 1, 1, 1, 1, 1)),   # 3x3x3 pad 1
         ((2, 3, 6, 5, 4), (3, 3, 3, 3, 3), (2, 2, 2), (0, 1, 0, 1, 0, 1)),   # the VAE's Downsample
         ((1, 4, 3, 4, 5), (5, 4, 1, 1, 1), (1, 1, 1), (0, 0, 0, 0, 0, 0)),   # 1x1x1 (nin_shortcut, q/k/v)
         ((2, 2, 7, 6, 9), (3, 2, 4, 4, 4), (2, 1, 2), (1, 1, 1, 1, 1, 1))]   # the PatchGAN's k4 s2 p1, mixed strides
for k, (xs, ws, st, pd) in enumerate(CONVS):
    p = "conv%d." % k
    x = hashed(p + "x", xs).requires_grad_(True)
    w = (hashed(p + "w", ws) / (ws[1] * ws[2] * ws[3] * ws[4]) ** 0.5).requires_grad_(True)
    b = (0.1 * hashed(p + "b", ws[:1])).requires_grad_(True)
    out = F.conv3d(F.pad(x, pd), w, b, stride=st)
    R = hashed(p + "R", out.shape)
    (out * R).sum().backward()
    t.update({p + "out": out, p + "x_grad": x.grad, p + "w_grad": w.grad, p + "b_grad": b.grad})

# ---- AttnBlock over T*H*W ----
a = AttnBlock(32, dims=3)
hash_init(a)
a.double()
x = hashed("attn.x", (2, 32, 3, 4, 5)).requires_grad_(True)
out = a(x)
(out * hashed("attn.R", out.shape)).sum().backward()
t.update({"attn.out": out, "attn.x_grad": x.grad})
for name, q in a.named_parameters():
    t["attn.grad." + name] = q.grad

# ---- tiny 3-D AutoencoderKLs ----
base = dict(double_z=True, in_channels=1, out_ch=1, dropout=0.0, dims=3)
VAES = [  # non-cubic volumes so that a T/H/W mix-up shows
    (dict(base, z_channels=4, resolution=8, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4]), 3, (2, 1, 4, 8, 6)),
    (dict(base, in_channels=2, out_ch=2, z_channels=2, resolution=16, ch=32, ch_mult=[1, 1, 2], num_res_blocks=1,
          attn_resolutions=[], resamp_with_conv=False), 2, (1, 2, 8, 4, 8)),
]
vaes = []
for k, (dd, embed, shape) in enumerate(VAES):
    p = "vae%d." % k
    m = AutoencoderKL(dd, embed)
    hash_init(m)
    m.double()
    x = hashed(p + "x", shape).requires_grad_(True)
    mean, logvar = m.encode(x)
    eps = hashed(p + "eps", mean.shape)
    z = mean + torch.exp(0.5 * logvar) * eps
    dec = m.decode(z)
    klv = kl(mean, logvar)
    loss = (dec * hashed(p + "R", dec.shape)).sum() + 0.01 * klv.sum()
    loss.backward()
    with torch.no_grad():
        dec_mode = m.decode(mean)
    t.update({p + "mean": mean, p + "logvar": logvar, p + "z": z, p + "dec": dec, p + "dec_mode": dec_mode, p + "kl": klv,
              p + "loss": loss.reshape(1), p + "x_grad": x.grad})
    gproj(p + "gproj.", m)
    for name, v in m.state_dict().items():
        t[p + "shape." + name] = torch.tensor(list(v.shape), dtype=torch.float64)
    vaes.append((m, shape))
    print("vae%d params %d" % (k, sum(q.numel() for q in m.parameters())), "latent", tuple(mean.shape))


# ---- the LPIPS-free volume loss: LPIPSWithDiscriminator with perceptual_weight 0, a pixel
#      loss choice and a 3-D NLayerDiscriminator (same names, BatchNorm3d) ----
def volume_loss(x, xrec, klv, disc, logvar, last_layer, pixel, kl_weight, disc_weight, disc_factor, step, disc_start):
    rec = (x - xrec).abs() if pixel == "l1" else (x - xrec) ** 2
    nll = rec / torch.exp(logvar) + logvar
    nll_loss = nll.sum() / nll.shape[0]
    kl_loss = klv.sum() / klv.shape[0]
    for q in disc.parameters():
        q.requires_grad_(False)  # Lightning's toggle_optimizer
    g_loss = -torch.mean(disc(xrec))
    ng = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gg = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.clamp(torch.norm(ng) / (torch.norm(gg) + 1e-4), 0.0, 1e4).detach() * disc_weight
    df = disc_factor if step >= disc_start else 0.0
    loss = nll_loss + kl_weight * kl_loss + d_weight * df * g_loss
    log = dict(total_loss=loss, logvar=logvar, kl_loss=kl_loss, nll_loss=nll_loss, rec_loss=rec.mean(), d_weight=d_weight,
               disc_factor=torch.tensor(df), g_loss=g_loss)
    return loss, log


LOSSES = [dict(pixel="l1", kl_weight=0.01, disc_weight=0.5, disc_factor=1.0, step=5, logvar_init=0.25, n_layers=1, ndf=8),
          dict(pixel="l2", kl_weight=1e-3, disc_weight=0.8, disc_factor=0.7, step=6, logvar_init=-0.5, n_layers=2, ndf=8)]
m, shape = vaes[0]
for k, c in enumerate(LOSSES):
    p = "loss%d." % k
    disc = NLayerDiscriminator(1, c["ndf"], c["n_layers"], dims=3)
    hash_init(disc)
    with torch.no_grad():
        for name, b in disc.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)
    disc.double().train()
    logvar = torch.tensor(c["logvar_init"], dtype=torch.float64)
    m.zero_grad()
    x = hashed(p + "x", (2, 1, 12, 16, 12))  # the PatchGAN needs room: T 12 -> 6 (-> 3) -> 2 (-> 1)
    x.requires_grad_(False)
    # reconstruct through vae0 at 16^3: encode, sample with a hash eps, decode
    mean, lv = m.encode(x)
    xrec = m.decode(mean + torch.exp(0.5 * lv) * hashed(p + "eps", mean.shape))
    klv = kl(mean, lv)
    lg, log = volume_loss(x, xrec, klv, disc, logvar, m.decoder.conv_out.weight, c["pixel"], c["kl_weight"], c["disc_weight"],
                          c["disc_factor"], c["step"], 5)
    lg.backward()
    for q in disc.parameters():
        q.requires_grad_(True)
    real, fake = disc(x.detach()), disc(xrec.detach())
    df = c["disc_factor"] if c["step"] >= 5 else 0.0
    ld = df * hinge_d_loss(real, fake)
    ld.backward()
    log.update(disc_loss=ld, logits_real=real.mean(), logits_fake=fake.mean())
    t[p + "x"] = x
    t[p + "loss_g"], t[p + "loss_d"] = lg.detach().reshape(1), ld.detach().reshape(1)
    for key, v in log.items():
        t[p + "log." + key] = v.detach().reshape(1)
    gproj(p + "gproj.", m)
    gproj(p + "dgproj.", disc)
    for name, b in disc.named_buffers():
        if not name.endswith("num_batches_tracked"):
            t[p + "buf." + name] = b.clone()
    print("loss%d" % k, {kk: round(float(v), 6) for kk, v in log.items()})

# ---- the UNet with dims 3 on a latent volume ----
ucfg = dict(image_size=8, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1, channel_mult=(1, 2),
            attention_resolutions=[2], num_heads=2, dims=3)
u = UNetModel(**ucfg)
hash_init(u)
u.double()
x = hashed("unet.x", (1, 3, 8, 8, 8)).requires_grad_(True)
tt = torch.tensor([421.0], dtype=torch.float64)
out = u(x, tt)
(out * hashed("unet.R", out.shape)).sum().backward()
t.update({"unet.out": out, "unet.x_grad": x.grad})
gproj("unet.gproj.", u)
print("unet params", sum(q.numel() for q in u.parameters()))

# ---- end to end: vae0 encodes a 16^3 volume, the 3-D UNet's eps loss on its latent, then a
#      4-step DDIM sample decoded back to a volume (CompVis ddpm.py / ddim.py, linear schedule) ----
T, SCALE = 1000, 0.5
betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, T, dtype=torch.float64) ** 2
ac = torch.cumprod(1.0 - betas, 0).float().double()  # register_schedule keeps float32 buffers
u.zero_grad()
with torch.no_grad():
    z0 = SCALE * m.encode(hashed("ldm.x", (1, 1, 16, 16, 16)))[0]
noise = hashed("ldm.noise", z0.shape)
ts = 613
x_t = ac[ts].sqrt().float().double() * z0 + (1 - ac[ts]).sqrt().float().double() * noise
eps = u(x_t, torch.tensor([float(ts)], dtype=torch.float64))
loss = ((noise - eps) ** 2).mean()
loss.backward()
t.update({"ldm.z0": z0, "ldm.loss": loss.reshape(1)})
gproj("ldm.gproj.", u)
steps = [1, 251, 501, 751]  # make_ddim_timesteps("uniform", 4, 1000) + 1
x = hashed("ldm.xT", z0.shape)
with torch.no_grad():
    for i in reversed(range(len(steps))):
        a = ac[steps[i]].float().double()
        ap = (ac[steps[i - 1]] if i > 0 else ac[0]).float().double()
        e = u(x, torch.tensor([float(steps[i])], dtype=torch.float64))
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * e  # eta 0: no noise term
    vol = m.decode(x / SCALE)
t.update({"ldm.sample": x, "ldm.volume": vol})
print("ldm loss", float(loss), "sample volume", tuple(vol.shape))

# ---- PSNR over C,T,H,W (skimage's formula per volume), data_range 2 ----
pa = hashed("psnr.a", (2, 1, 6, 7, 8))
pb = pa + 0.1 * hashed("psnr.b", (2, 1, 6, 7, 8))
t["psnr"] = 10.0 * torch.log10(4.0 / ((pa.float().double() - pb.float().double()) ** 2).mean(dim=[1, 2, 3, 4]))

t = {k: v.detach().float().contiguous() for k, v in t.items()}
path = os.path.join(FIX, "vol3d_ref.safetensors")
write_safetensors(path, t, {"generator": "tests/ref/vol3d_ref.py"})
print("tensors", len(t), "bytes", os.path.getsize(path))
