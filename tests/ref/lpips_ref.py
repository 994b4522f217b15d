"""Writes tests/fixtures/lpips_ref.safetensors (float64 references, stored F32) for
tests/test_lpips.c. Every model uses hash weights (tests/ref/common.py hash_init, mirrored by
the C test's hash_fill), so no VGG16 or discriminator weights are committed:
  lp.*     LPIPS on random images: value and gradients w.r.t. both images
  photo.*  LPIPS, PSNR and SSIM on crops of two real photographs (tests/fixtures/photo_*.png)
  d.*      NLayerDiscriminator: train-mode forward/backward, running statistics, eval forward
  c<k>.*   LPIPSWithDiscriminator on a tiny AutoencoderKL: generator and discriminator steps
           (loss, every logged value, the gradients) for four settings (see CASES)
Hash-weight fix-ups (the C test applies the same): LPIPS VGG conv weights x2.5 (keeps the
activations O(1) through 13 layers), lin weights |.|, scaling-layer constants and BatchNorm
running statistics (0, 1) kept, logvar = logvar_init.
SSIM/PSNR follow skimage.metrics (see lpips_model.ssim); when scikit-image is importable the
script checks its numbers against skimage's own.
Run: /usr/bin/python3 tests/ref/lpips_ref.py  (from the repository root)"""
import os, sys
import numpy as np
import torch
from PIL import Image
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hash_uniform
from vae_model import AutoencoderKL, kl
from lpips_model import LPIPS, NLayerDiscriminator, LPIPSWithDiscriminator, ssim, psnr

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")
TINY = dict(double_z=True, in_channels=3, out_ch=3, dropout=0.0, z_channels=4, resolution=32, ch=32,
            ch_mult=[2, 1], num_res_blocks=1, attn_resolutions=[16])
SCALE = {"shift": [-.030, -.088, -.188], "scale": [.458, .448, .450]}


def hash_model(m, logvar_init=0.0):
    """hash_init plus the fix-ups listed at the top, in float32 (the C side does the same)."""
    m.float()
    hash_init(m)
    with torch.no_grad():
        for name, p in m.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("scaling_layer.shift") or name.endswith("scaling_layer.scale"):
                p.copy_(torch.tensor(SCALE[leaf]).view(1, 3, 1, 1))
            elif leaf == "running_mean":
                p.zero_()
            elif leaf == "running_var":
                p.fill_(1.0)
            elif leaf == "logvar":
                p.fill_(logvar_init)
            elif ".net.slice" in "." + name and p.dim() == 4:
                p.mul_(2.5)
            elif ".lin" in "." + name and name.endswith(".model.1.weight"):
                p.abs_()
    return m.double()


def gproj(t, prefix, module):
    """per parameter: (gradient . hash vector, |gradient|^2), as test_vae.c checks them"""
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach()
        h = torch.from_numpy(hash_uniform("proj." + name, g.numel())).double().view(g.shape)
        t[prefix + name] = torch.stack([(g * h).sum(), (g * g).sum()]).float()


def load_png(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0


t = {}
torch.manual_seed(0)

# ---- LPIPS on random images ------------------------------------------------------------------
def min_pool_gap(lp, x):
    """Smallest gap between the two largest values of any 2x2 max-pool window (positive
    maximum) in VGG: below float32's rounding the argmax, and with it the gradient, can go to
    the other element in one implementation and not in another."""
    gap, h = float("inf"), lp.scaling_layer(x)
    with torch.no_grad():
        for k in range(5):
            s = getattr(lp.net, "slice%d" % (k + 1))
            for name, m in s.named_children():
                if isinstance(m, torch.nn.MaxPool2d):
                    w = torch.nn.functional.unfold(h.reshape(-1, 1, *h.shape[2:]), 2, stride=2)
                    top = torch.topk(w, 2, dim=1).values
                    pos = top[:, 0] > 0
                    if pos.any():
                        gap = min(gap, (top[:, 0] - top[:, 1])[pos].min().item())
                h = m(h)
    return gap


lp = hash_model(LPIPS()).eval()  # eval: the lin heads' Dropout off
for attempt in range(1000):  # inputs without max-pool near-ties (see min_pool_gap)
    x0 = (torch.rand(2, 3, 32, 32) * 2 - 1).double()
    x1 = (torch.rand(2, 3, 32, 32) * 2 - 1).double()
    if min_pool_gap(lp, torch.cat([x0, x1])) > 3e-5:
        break
print("LPIPS inputs: draw", attempt + 1)
x0.requires_grad_(True); x1.requires_grad_(True)
val = lp(x0, x1)
(val.reshape(-1) * torch.tensor([1.0, 0.5], dtype=torch.float64)).sum().backward()
t.update({"lp.x0": x0.detach(), "lp.x1": x1.detach(), "lp.val": val.detach().reshape(-1),
          "lp.grad0": x0.grad, "lp.grad1": x1.grad})
print("lpips", val.reshape(-1).tolist())

# ---- real photographs: LPIPS (hash weights), PSNR, SSIM ----------------------------------------
A, C = load_png(os.path.join(FIX, "photo_astronaut.png")), load_png(os.path.join(FIX, "photo_chelsea.png"))
pairs = {"ac": (A, C), "shift": (A[:, 0:60, 0:60], A[:, 2:62, 1:61])}
try:
    from skimage.metrics import structural_similarity, peak_signal_noise_ratio
except ImportError:
    structural_similarity = None
for tag, (a, b) in pairs.items():
    s, p = ssim(a, b), psnr(a, b)
    if structural_similarity is not None:
        s2 = structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), gaussian_weights=True, sigma=1.5,
                                   use_sample_covariance=False, data_range=1.0, channel_axis=2)
        p2 = peak_signal_noise_ratio(a, b, data_range=1.0)
        assert abs(s - s2) < 1e-12 and abs(p - p2) < 1e-9, (tag, s, s2, p, p2)
        print("  skimage agrees on", tag)
    with torch.no_grad():
        v = lp(torch.from_numpy(a)[None] * 2 - 1, torch.from_numpy(b)[None] * 2 - 1).reshape(-1)
    t["photo.ssim_" + tag], t["photo.psnr_" + tag], t["photo.lpips_" + tag] = torch.tensor([s]), torch.tensor([p]), v
    print(tag, "ssim", s, "psnr", p, "lpips", v.item())

# ---- NLayerDiscriminator -----------------------------------------------------------------------
D = hash_model(NLayerDiscriminator()).train()
xa = (torch.rand(2, 3, 32, 32) * 2 - 1).double().requires_grad_(True)
xb = (torch.rand(2, 3, 32, 32) * 2 - 1).double()
out = D(xa)
R = torch.randn(out.shape).double()
(out * R).sum().backward()
t.update({"d.xa": xa.detach(), "d.xb": xb, "d.R": R, "d.out_train": out.detach(), "d.xgrad": xa.grad})
gproj(t, "d.gproj.", D)
for name, b in D.named_buffers():
    if not name.endswith("num_batches_tracked"):
        t["d.buf." + name] = b
D.eval()
with torch.no_grad():
    t["d.out_eval"] = D(xb)

# ---- LPIPSWithDiscriminator on a tiny AutoencoderKL ------------------------------------------
# (loss kwargs, global_step, split); disc_start 5 everywhere
CASES = [
    (dict(disc_loss="hinge", kl_weight=0.01, disc_weight=0.5, logvar_init=0.0), 2, "train"),   # before disc_start
    (dict(disc_loss="hinge", kl_weight=0.01, disc_weight=0.5, logvar_init=0.25), 5, "train"),  # active
    (dict(disc_loss="vanilla", kl_weight=1e-6, disc_weight=0.8, logvar_init=-0.5, perceptual_weight=0.5), 9, "train"),
    (dict(disc_loss="hinge", kl_weight=0.01, disc_weight=0.5, logvar_init=0.0), 9, "val"),     # eval, no grad
]
ae = hash_model(AutoencoderKL(TINY, 4))
x = (torch.rand(2, 3, 32, 32) * 2 - 1).double()
eps = torch.randn(2, 4, 16, 16).double()
t.update({"ae.x": x, "ae.eps": eps})
for k, (kw, step, split) in enumerate(CASES):
    loss = hash_model(LPIPSWithDiscriminator(disc_start=5, **kw), kw["logvar_init"])
    train = split == "train"
    ae.train(train); loss.train(train); loss.perceptual_loss.eval()
    ae.zero_grad(); loss.zero_grad()
    with torch.set_grad_enabled(train):
        mean, logvar = ae.encode(x)
        xrec = ae.decode(mean + torch.exp(0.5 * logvar) * eps)
        # Lightning's toggle_optimizer: only the current optimizer's parameters require grad
        for p in loss.discriminator.parameters():
            p.requires_grad_(False)
        lg, log = loss(x, xrec, kl(mean, logvar), 0, step, last_layer=ae.decoder.conv_out.weight, split=split)
        if train:
            lg.backward()
        for p in loss.discriminator.parameters():
            p.requires_grad_(True)
        ld, dlog = loss(x, xrec, kl(mean, logvar), 1, step, last_layer=ae.decoder.conv_out.weight, split=split)
        if train:
            ld.backward()
    if k == 0:
        t["ae.xrec"] = xrec.detach()
    p = "c%d." % k
    t[p + "loss_g"], t[p + "loss_d"] = lg.detach().reshape(1), ld.detach().reshape(1)
    for key, v in list(log.items()) + list(dlog.items()):
        t[p + "log." + key] = v.reshape(1)
    if train:
        gproj(t, p + "gproj.", ae)
        t[p + "grad.decoder.conv_out.weight"] = ae.decoder.conv_out.weight.grad.clone()
        gproj(t, p + "dgproj.discriminator.", loss.discriminator)
    for name, b in loss.discriminator.named_buffers():
        if not name.endswith("num_batches_tracked"):
            t[p + "buf.discriminator." + name] = b.clone()
    print("case", k, split, step, {kk.split("/")[1]: round(v.item(), 6) for kk, v in list(log.items()) + list(dlog.items())})

t = {k: v.detach().float().contiguous() for k, v in t.items()}
write_safetensors(os.path.join(FIX, "lpips_ref.safetensors"), t, {"generator": "tests/ref/lpips_ref.py"})
print("tensors", len(t), "bytes", os.path.getsize(os.path.join(FIX, "lpips_ref.safetensors")))
