"""Reference values for tests/test_latent_diffusion.c: a tiny class-conditional
LatentDiffusion (KL first stage, UNet with a SpatialTransformer, ClassEmbedder; config
tests/configs/ldm_tiny.yaml) written as a CompVis checkpoint (torch.save of {"state_dict"}
with model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, model_ema.* and the
schedule buffers), the training loss of shared_step for a fixed x, t, noise and posterior eps
with gradient projections, and a guided DDIM run (5 steps, eta 0) decoded to images. The
LatentDiffusion logic (get_first_stage_encoding, p_losses, p_sample_ddim with guidance,
decode_first_stage) is re-implemented here after ddpm.py / ddim.py. Weights are hash values
rounded to float16 and stored as float16 (the EMA weights are the same storage shifted by
one element, so they cost nothing); the model runs in float64.
Writes tests/fixtures/ldm_tiny.ckpt and tests/fixtures/ldm_ref.safetensors. Run with /usr/bin/python3."""
import os, sys
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hash_uniform
from denoiser_model import UNetModel, ClassEmbedder
from vae_model import AutoencoderKL

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")
T, LS, LE, SCALE_FACTOR, N_CLASSES = 1000, 0.0015, 0.0195, 0.5, 5


def h(name, *shape, scale=1.0):
    return torch.from_numpy(hash_uniform(name, int(np.prod(shape)))).view(*shape).double() * scale


unet = UNetModel(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, attention_resolutions=[1],
                 channel_mult=(1,), num_heads=2, use_spatial_transformer=True, transformer_depth=1, context_dim=16)
ce = ClassEmbedder(16, n_classes=N_CLASSES)
dd = dict(double_z=True, z_channels=4, resolution=8, in_channels=3, out_ch=3, ch=32, ch_mult=[1], num_res_blocks=1,
          attn_resolutions=[], dropout=0.0)
vae = AutoencoderKL(dd, 4)
for m in (unet, ce, vae):
    hash_init(m)

# the denoiser and its EMA from one float16 storage: model = flat[o:o+n], EMA = flat[o+1:o+1+n]
usd = unet.state_dict()
flat = torch.cat([p.flatten() for p in usd.values()] + [torch.tensor([0.25])]).half()
sd, ema, off = {}, {}, 0
for name, p in usd.items():
    n = p.numel()
    sd["model.diffusion_model." + name] = flat[off:off + n].view(p.shape)
    ema["model_ema.diffusion_model" + name.replace(".", "")] = flat[off + 1:off + 1 + n].view(p.shape)
    off += n
for name, p in vae.state_dict().items():
    sd["first_stage_model." + name] = p.half()
for name, p in ce.state_dict().items():
    sd["cond_stage_model." + name] = p.half()
sd.update(ema)
sd["model_ema.decay"] = torch.tensor(0.9999)
sd["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int)

# register_schedule (float64, stored float32)
betas = np.linspace(LS ** 0.5, LE ** 0.5, T, dtype=np.float64) ** 2
alphas = 1.0 - betas
ac = np.cumprod(alphas)
ac_prev = np.append(1.0, ac[:-1])
pv = betas * (1.0 - ac_prev) / (1.0 - ac)
buf = {"betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev, "sqrt_alphas_cumprod": np.sqrt(ac),
       "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac), "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
       "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
       "posterior_variance": pv, "posterior_log_variance_clipped": np.log(np.maximum(pv, 1e-20)),
       "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
       "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)}
for k, v in buf.items():
    sd[k] = torch.tensor(v, dtype=torch.float32)
torch.save({"state_dict": sd, "global_step": 0}, os.path.join(FIX, "ldm_tiny.ckpt"))

# the model runs with exactly the stored values
with torch.no_grad():
    unet.load_state_dict({k[len("model.diffusion_model."):]: v.float() for k, v in sd.items() if k.startswith("model.diffusion_model.")})
    vae.load_state_dict({k[len("first_stage_model."):]: v.float() for k, v in sd.items() if k.startswith("first_stage_model.")})
    ce.load_state_dict({k[len("cond_stage_model."):]: v.float() for k, v in sd.items() if k.startswith("cond_stage_model.")})
unet.double(); vae.double(); ce.double()
sac = torch.tensor(buf["sqrt_alphas_cumprod"], dtype=torch.float32).double()
s1m = torch.tensor(buf["sqrt_one_minus_alphas_cumprod"], dtype=torch.float32).double()
OUT = {}

# ---- shared_step: encode (posterior sample * scale_factor), ClassEmbedder, p_losses ----
B = 2
x = h("ldm.x", B, 3, 8, 8, scale=0.8)
peps = h("ldm.posterior_eps", B, 4, 8, 8)
noise = h("ldm.noise", B, 4, 8, 8)
t = torch.tensor([3, 871])
y = torch.tensor([1, 3])
with torch.no_grad():
    mean, logvar = vae.encode(x)
    z = SCALE_FACTOR * (mean + torch.exp(0.5 * logvar) * peps)
c = ce({"class": y})
x_t = sac[t].view(B, 1, 1, 1) * z + s1m[t].view(B, 1, 1, 1) * noise
out = unet(x_t, t.double(), context=c)
loss_simple = ((out - noise) ** 2).mean(dim=[1, 2, 3])
loss = loss_simple.mean()
loss.backward()
# scale_by_std: 1 / std of the scale-1 latents of the first batch (torch.std, unbiased, float32)
z1 = (mean + torch.exp(0.5 * logvar) * peps).float()
OUT["scale_by_std"] = (1.0 / z1.flatten().std()).view(1)
OUT.update({"x": x, "posterior_eps": peps, "noise": noise, "t": t.double(), "y": y.double(), "z": z, "loss": loss.detach().view(1),
            "loss_simple": loss_simple.detach()})
GRADS = ["out.2.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "time_embed.0.weight",
         "middle_block.0.in_layers.2.weight"]
named = dict(unet.named_parameters())
for i, n in enumerate(GRADS):
    g = named[n].grad
    OUT["gproj.%d" % i] = (g * h("proj." + n, *g.shape)).sum().view(1)
g = ce.embedding.weight.grad
OUT["gproj.cond"] = (g * h("proj.embedding.weight", *g.shape)).sum().view(1)

# ---- guided DDIM, 5 steps, eta 0, EMA weights off (the model's own), from fixed x_T ----
S, scale = 5, 3.0
ts = np.arange(0, T, T // S) + 1
acf = torch.tensor(ac, dtype=torch.float32)
a_all = acf[ts].double()
a_prev_all = torch.tensor([acf[0].item()] + acf[ts[:-1]].tolist(), dtype=torch.float64)
sq1m = torch.tensor(np.sqrt(1.0 - acf[ts].numpy()), dtype=torch.float32).double()


def ddim(model_unet, y):
    xs = h("ldm.x_T", len(y), 4, 8, 8)
    with torch.no_grad():
        c = ce({"class": torch.tensor(y)})
        uc = ce({"class": torch.tensor([N_CLASSES - 1] * len(y))})
        for i in range(S):
            index = S - 1 - i
            tt = torch.full((len(y) * 2,), float(ts[index]), dtype=torch.float64)
            e_u, e_c = model_unet(torch.cat([xs] * 2), tt, context=torch.cat([uc, c])).chunk(2)
            e = e_u + scale * (e_c - e_u)
            a_t, a_p = a_all[index], a_prev_all[index]
            pred_x0 = (xs - sq1m[index] * e) / a_t.sqrt()
            xs = a_p.sqrt() * pred_x0 + (1.0 - a_p).sqrt() * e
        img = vae.decode(xs / SCALE_FACTOR)
    return xs, img


zs, img = ddim(unet, [1, 3])
OUT.update({"x_T": h("ldm.x_T", 2, 4, 8, 8), "ddim_z": zs, "ddim_img": img})
# the same with the EMA weights
with torch.no_grad():
    unet.load_state_dict({k: ema["model_ema.diffusion_model" + k.replace(".", "")].double() for k in usd})
zs, img = ddim(unet, [1, 3])
OUT.update({"ddim_ema_img": img})
# ---- ancestral DDPM over all T steps (LatentDiffusion sets clip_denoised False), unguided, EMA weights still loaded; the
# noise of step i is hash("ldm.ddpm_noise")[i] (uniform, regenerated by the C test) ----
def buf32(k):
    return torch.tensor(buf[k], dtype=torch.float32).double()


src, srm1 = buf32("sqrt_recip_alphas_cumprod"), buf32("sqrt_recipm1_alphas_cumprod")
c1, c2, plv = buf32("posterior_mean_coef1"), buf32("posterior_mean_coef2"), buf32("posterior_log_variance_clipped")
dnoise = h("ldm.ddpm_noise", T, 2, 4, 8, 8)
with torch.no_grad():
    xs = h("ldm.x_T", 2, 4, 8, 8)
    c = ce({"class": torch.tensor([1, 3])})
    for i, tt in enumerate(range(T - 1, -1, -1)):
        out = unet(xs, torch.full((2,), float(tt), dtype=torch.float64), context=c)
        x0 = src[tt] * xs - srm1[tt] * out
        mean = c1[tt] * x0 + c2[tt] * xs
        xs = mean + (0.0 if tt == 0 else 1.0) * torch.exp(0.5 * plv[tt]) * dnoise[i]
    OUT["ddpm_img"] = vae.decode(xs / SCALE_FACTOR)
write_safetensors(os.path.join(FIX, "ldm_ref.safetensors"), {k: v.float() for k, v in OUT.items()})
print("ldm_tiny.ckpt %d bytes; loss %.6f; img[0,0,0,:3] %s" % (os.path.getsize(os.path.join(FIX, "ldm_tiny.ckpt")), loss.item(),
                                                             img[0, 0, 0, :3].tolist()))
