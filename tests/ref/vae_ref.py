"""Writes tests/fixtures/vae_*.safetensors: AutoencoderKL references computed in float64.
  vae_tiny_*: a small model with attention inside the levels; its weights are committed in the
              CompVis layout (F32), the diffusers layout (F16) and as a Lightning-style torch.save
              .ckpt under first_stage_model.; full outputs and every parameter's gradient.
  vae_f4 / vae_f8: the seed kl-f4 and a kl-f8 model with hash-generated weights (the C test makes
              the same weights with lt_hash_fill); outputs, and per parameter the gradient's
              projection on a hash vector and its squared norm.
Run: /usr/bin/python3 tests/ref/vae_ref.py  (from the repository root)"""
import os, sys
import torch
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hash_uniform
from vae_model import AutoencoderKL, kl, to_diffusers

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def run(model, x, eps, R, klw):
    """Encode, sample with eps, decode; loss = sum(dec*R) + klw*sum(kl). All in float64."""
    model = model.double(); model.zero_grad()
    x = x.double().requires_grad_(True)
    mean, logvar = model.encode(x)
    z = mean + torch.exp(0.5 * logvar) * eps.double()
    dec = model.decode(z)
    loss = (dec * R.double()).sum() + klw * kl(mean, logvar).sum()
    loss.backward()
    with torch.no_grad():
        dec_mode = model.decode(mean)
    return dict(mean=mean, logvar=logvar, z=z, dec=dec, dec_mode=dec_mode, loss=loss.reshape(1), x_grad=x.grad)


def case(tag, dd, embed, shape, full):
    torch.manual_seed(0)
    m = AutoencoderKL(dd, embed)
    hash_init(m)
    if full:  # committed weights go through F16 (the diffusers file), so round every value once
        with torch.no_grad():
            for p in m.state_dict().values():
                p.copy_(p.half().float())
    x = torch.rand(shape) * 2 - 1
    f = 2 ** (len(dd["ch_mult"]) - 1)
    zshape = (shape[0], embed, shape[2] // f, shape[3] // f)
    eps = torch.randn(zshape)
    R = torch.randn((shape[0], dd["out_ch"], shape[2], shape[3]))
    sd32 = {k: v.clone() for k, v in m.state_dict().items()}
    out = run(m, x, eps, R, 0.01)
    t = {"x": x, "eps": eps, "R": R}
    t.update({k: v.detach().float() for k, v in out.items()})
    for name, p in m.named_parameters():
        g = p.grad.detach()
        if full:
            t["grad." + name] = g.float()
        else:
            proj = (g * torch.from_numpy(hash_uniform("proj." + name, g.numel())).double().view(g.shape)).sum()
            t["gproj." + name] = torch.stack([proj, (g * g).sum()]).float()
    meta = {k: str(v) for k, v in dd.items()}
    meta["embed_dim"] = str(embed)
    write_safetensors(os.path.join(FIX, "vae_%s.safetensors" % tag), t, meta)
    if full:
        write_safetensors(os.path.join(FIX, "vae_%s_compvis.safetensors" % tag), sd32)
        write_safetensors(os.path.join(FIX, "vae_%s_diffusers.safetensors" % tag),
                          {k: v.half() for k, v in to_diffusers(sd32, len(dd["ch_mult"])).items()})
        ck = {"first_stage_model." + k: v.half() for k, v in sd32.items()}
        ck["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(4, 4, 3, 3)
        ck["cond_stage_model.scale"] = torch.ones(1)
        torch.save({"state_dict": ck, "global_step": 7, "epoch": 1}, os.path.join(FIX, "vae_%s.ckpt" % tag))
    print(tag, "params", sum(p.numel() for p in m.parameters()))


base = dict(double_z=True, in_channels=3, out_ch=3, dropout=0.0)
case("tiny", dict(base, z_channels=4, resolution=32, ch=32, ch_mult=[2, 1], num_res_blocks=1, attn_resolutions=[16]), 4, (2, 3, 16, 16), True)
case("f4", dict(base, z_channels=3, resolution=256, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2, attn_resolutions=[]), 3, (1, 3, 32, 32), False)
case("f8", dict(base, z_channels=4, resolution=256, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[]), 4, (1, 3, 32, 32), False)
