#!/usr/bin/python3
"""Reference fixtures for tests/test_vdit.c: the spatio-temporal video DiT and the sgm engine's
denoiser, loss and samplers (Stability-AI generative-models, sgm/modules/diffusionmodules:
denoiser.py, denoiser_scaling.py, discretizer.py, sigma_sampling.py, loss_weighting.py,
loss.py, sampling.py, guiders.py, wrappers.py), rewritten here from their definitions
(sgm is not installed). Models run in float64 with hash weights (common.hash_init's rule,
rebuilt in C by lt_hash_init), so no weights are committed.

    /usr/bin/python3 tests/ref/vdit_ref.py        (from the repository root)

VDiT: DiT (facebookresearch models.py) over video latents x [B, C, T, H, W]:
  x_embedder.proj  Conv3d(in, D, kernel = stride = (pt, p, p)); tokens in (t, h, w) order
  pos_embed        fixed 3-D sin-cos [1, N, D]: [temporal (D/4) | spatial (3D/4)], the spatial
                   part DiT's 2-D embedding (first half from the column w, second from the row h)
  t_embedder.mlp   Linear(256, D), SiLU, Linear(D, D) on [cos, sin] of t
  switch_adaln_layer False: DiT's adaLN-Zero, blocks.N.adaLN_modulation.1 = Linear(D, 6D) on SiLU(c),
                   final_layer.adaLN_modulation.1 = Linear(D, 2D)
                   True: PixArt-alpha's adaLN-single, t_block.1 = Linear(D, 6D) on SiLU(c) shared by
                   every block, blocks.N.scale_shift_table [6, D] added to it;
                   final_layer.scale_shift_table [2, D] added to c itself (T2IFinalLayer)
  blocks.N         x += g_msa * attn(mod(norm1(x))); x += g_mlp * mlp(mod(norm2(x))), GELU tanh
  final_layer      linear(mod(norm_final(x))) -> pt*p*p*out per token, unpatchified as
                   [B, gt, gh, gw, pt, p, p, C] -> [B, C, gt*pt, gh*p, gw*p]

Writes tests/fixtures/vdit_block_dit.safetensors, vdit_block_single.safetensors (blocks.0 alone:
output and full gradients w.r.t. tokens, conditioning and every block parameter),
vdit_dit.safetensors, vdit_single.safetensors (model forward, input and
parameter gradients as test_denoisers: gproj.<name> = [g . hash("proj.<name>"), |g|^2],
shape.<name>), vdit_lora.safetensors (LoRA on attn.qkv: full adapter gradients) and
vdit_sgm.safetensors (scalings, discretizations, denoiser, losses, samplers)."""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import hash_init, write_safetensors, hashed  # noqa: E402
from denoiser_model import Attention, Mlp, timestep_embedding  # noqa: E402

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


# ---- the video DiT -------------------------------------------------------------------------
def sincos_1d(d, pos):
    om = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    o = np.outer(np.asarray(pos, dtype=np.float64).reshape(-1), om)
    return np.concatenate([np.sin(o), np.cos(o)], axis=1)


def sincos_3d(D, gt, gh, gw):
    dt = D // 4
    ds = D - dt
    it, ih, iw = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
    emb = np.concatenate([sincos_1d(dt, it), sincos_1d(ds // 2, iw), sincos_1d(ds // 2, ih)], axis=1)
    return emb.reshape(1, gt * gh * gw, D)


def mod(x, shift, scale):  # shift, scale [B, 1, D]
    return x * (1 + scale) + shift


class VBlock(nn.Module):
    def __init__(self, d, heads, mlp_ratio, single):
        super().__init__()
        self.single = single
        if single:
            self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d ** 0.5)
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        if not single:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        B = x.shape[0]
        if self.single:  # c: t_block output [B, 6D]
            m = self.scale_shift_table[None] + c.reshape(B, 6, -1)
        else:            # c: conditioning [B, D]
            m = self.adaLN_modulation(c).reshape(B, 6, -1)
        sm, cm, gm, sp, cp, gp = m.chunk(6, dim=1)
        x = x + gm * self.attn(mod(self.norm1(x), sm, cm))
        return x + gp * self.mlp(mod(self.norm2(x), sp, cp))


class VDiT(nn.Module):
    def __init__(self, num_frames, height, width, patch_t, patch_size, in_channels, out_channels, hidden_size, depth,
                 num_heads, mlp_ratio=4.0, learn_sigma=False, switch_adaln_layer=False):
        super().__init__()
        D, pt, p = hidden_size, patch_t, patch_size
        self.g = (num_frames // pt, height // p, width // p)
        self.pt, self.p, self.single = pt, p, switch_adaln_layer
        self.out_channels = out_channels * 2 if learn_sigma else out_channels
        N = self.g[0] * self.g[1] * self.g[2]
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_3d(D, *self.g)).float(), requires_grad=False)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv3d(in_channels, D, (pt, p, p), (pt, p, p))
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        if self.single:
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))
        self.blocks = nn.ModuleList([VBlock(D, num_heads, mlp_ratio, self.single) for _ in range(depth)])
        self.final_layer = nn.Module()
        if self.single:
            self.final_layer.scale_shift_table = nn.Parameter(torch.randn(2, D) / D ** 0.5)
        self.final_layer.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(D, pt * p * p * self.out_channels)
        if not self.single:
            self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        assert N == self.pos_embed.shape[1]

    def forward(self, x, t):
        B = x.shape[0]
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder.mlp(timestep_embedding(t, 256).to(x.dtype))
        cb = self.t_block(c) if self.single else c
        for b in self.blocks:
            h = b(h, cb)
        fl = self.final_layer
        if self.single:
            shift, scale = (fl.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)
        else:
            shift, scale = fl.adaLN_modulation(c).reshape(B, 2, -1).chunk(2, dim=1)
        h = fl.linear(mod(fl.norm_final(h), shift, scale))
        gt, gh, gw = self.g
        C = self.out_channels
        h = torch.einsum("nthwauvc->nctahuwv", h.reshape(B, gt, gh, gw, self.pt, self.p, self.p, C))
        return h.reshape(B, C, gt * self.pt, gh * self.p, gw * self.p)


def make_vdit(cfg):
    torch.manual_seed(0)
    m = VDiT(**cfg)
    pe = m.pos_embed.detach().clone()
    hash_init(m)
    with torch.no_grad():
        m.pos_embed.copy_(pe)  # fixed, not hashed
    return m.double()


TINY = dict(num_frames=4, height=4, width=6, patch_t=2, patch_size=2, in_channels=8, out_channels=4, hidden_size=32,
            depth=2, num_heads=2, mlp_ratio=4.0)


def model_case(tag, cfg, lora=None):
    m = make_vdit(cfg)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, cfg["in_channels"], cfg["num_frames"], cfg["height"], cfg["width"], generator=g).double()
    t = torch.tensor([0.25 * math.log(0.3), 41.0], dtype=torch.float64)
    adapters = []
    if lora is not None:  # peft LoRA on every "attn.qkv": y += B(A(x)) * alpha / r; only adapters train
        r, alpha = lora
        for p in m.parameters():
            p.requires_grad_(False)
        for i, b in enumerate(m.blocks):
            base = b.attn.qkv
            name = "blocks.%d.attn.qkv" % i
            A = nn.Parameter(hashed(name + ".lora_A.weight", (r, base.in_features)) / math.sqrt(base.in_features))
            Bm = nn.Parameter(hashed(name + ".lora_B.weight", (base.out_features, r)) / math.sqrt(r))
            adapters += [(name + ".lora_A.weight", A), (name + ".lora_B.weight", Bm)]

            def fwd(inp, base=base, A=A, Bm=Bm):
                return nn.functional.linear(inp, base.weight, base.bias) + (inp @ A.t() @ Bm.t()) * (alpha / r)
            b.attn.qkv = type("LoraQKV", (nn.Module,), {"forward": lambda self, inp, f=fwd: f(inp)})()
    xg = x.clone().requires_grad_(True)
    out = m(xg, t)
    R = hashed("loss.R", out.shape)
    loss = (out * R).sum()
    loss.backward()
    fx = {"x": x.float(), "t": t.float(), "out": out.detach().float(), "loss": loss.detach().reshape(1).float(),
          "x_grad": xg.grad.float()}
    if lora is None:
        for name, p in m.named_parameters():
            if p.grad is None:
                continue
            gr = p.grad.detach()
            fx["gproj." + name] = torch.stack([(gr * hashed("proj." + name, gr.shape)).sum(), (gr * gr).sum()]).float()
        for name, v in m.state_dict().items():
            fx["shape." + name] = torch.tensor(list(v.shape), dtype=torch.float32).reshape(-1)
        fx["pos_embed"] = m.pos_embed.detach().float()
    for name, p in adapters:
        fx["grad." + name] = p.grad.float()
    path = os.path.join(FIX, "vdit_%s.safetensors" % tag)
    write_safetensors(path, fx, {k: str(v) for k, v in cfg.items()})
    print("wrote %s (%d bytes), %d parameters" % (os.path.relpath(path), os.path.getsize(path),
                                                  sum(p.numel() for p in m.parameters())))


def block_case(tag, single):
    """blocks.0 of the tiny model alone: x [2, 12, 32] tokens, c = the conditioning [2, D]
    (adaLN-Zero: the block applies SiLU + adaLN_modulation) or t_block's output [2, 6D]."""
    m = make_vdit(dict(TINY, switch_adaln_layer=single))
    blk = m.blocks[0]
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 12, 32, generator=g).double().requires_grad_(True)
    c = torch.randn(2, 6 * 32 if single else 32, generator=g).double().requires_grad_(True)
    out = blk(x, c)
    (out * hashed("loss.R", out.shape)).sum().backward()
    fx = {"x": x.detach().float(), "c": c.detach().float(), "out": out.detach().float(), "x_grad": x.grad.float(),
          "c_grad": c.grad.float()}
    for name, p in blk.named_parameters():
        fx["grad.blocks.0." + name] = p.grad.float()
    path = os.path.join(FIX, "vdit_block_%s.safetensors" % tag)
    write_safetensors(path, fx)
    print("wrote %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))


# ---- the sgm engine -----------------------------------------------------------------------
def append_dims(v, n):
    return v.reshape(v.shape + (1,) * (n - v.dim()))


def scalings(kind, sigma, sigma_data=0.5):
    """denoiser_scaling.py: (c_skip, c_out, c_in, c_noise)."""
    if kind == "edm":
        sd = sigma_data
        return (sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5,
                1 / (sigma ** 2 + sd ** 2) ** 0.5, 0.25 * sigma.log())
    if kind == "eps":
        return torch.ones_like(sigma), -sigma, 1 / (sigma ** 2 + 1.0) ** 0.5, sigma.clone()
    if kind in ("v", "v_edm_noise"):
        return (1.0 / (sigma ** 2 + 1.0), -sigma / (sigma ** 2 + 1.0) ** 0.5, 1.0 / (sigma ** 2 + 1.0) ** 0.5,
                sigma.clone() if kind == "v" else 0.25 * sigma.log())
    raise ValueError(kind)


def make_beta_linear(T, lo, hi):
    return (torch.linspace(lo ** 0.5, hi ** 0.5, T, dtype=torch.float64) ** 2).numpy()


def disc_sigmas(kind, n, append_zero=True, flip=False, **kw):
    """discretizer.py: Discretization.__call__ (float32 as sgm)."""
    if kind == "edm":
        smin, smax, rho = kw.get("sigma_min", 0.002), kw.get("sigma_max", 80.0), kw.get("rho", 7.0)
        ramp = torch.linspace(0, 1, n)
        s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    else:
        T = kw.get("num_timesteps", 1000)
        ac = np.cumprod(1.0 - make_beta_linear(T, kw.get("linear_start", 0.00085), kw.get("linear_end", 0.012)), axis=0)
        if n < T:
            ac = ac[np.linspace(T - 1, 0, n, endpoint=False).astype(int)[::-1]]
        s = torch.flip(torch.tensor((1 - ac) / ac, dtype=torch.float32) ** 0.5, (0,))
    if append_zero:
        s = torch.cat([s, s.new_zeros([1])])
    return torch.flip(s, (0,)) if flip else s


class Denoiser:
    """denoiser.py Denoiser / DiscreteDenoiser (num_idx sigmas of LegacyDDPM, flipped, no zero)."""

    def __init__(self, kind, discrete=False, num_idx=1000, quantize_c_noise=True, sigma_data=0.5):
        self.kind, self.discrete, self.q, self.sd = kind, discrete, quantize_c_noise, sigma_data
        if discrete:
            self.sigmas = disc_sigmas("legacy", num_idx, append_zero=False, flip=True).double()

    def idx(self, sigma):
        return (sigma - self.sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def __call__(self, net, x, sigma, cond):
        if self.discrete:
            sigma = self.sigmas[self.idx(sigma)]
        sb = append_dims(sigma, x.dim())
        c_skip, c_out, c_in, c_noise = scalings(self.kind, sb, self.sd)
        c_noise = c_noise.reshape(sigma.shape)
        if self.discrete and self.q:
            c_noise = self.idx(c_noise).double()
        return net(x * c_in, c_noise, cond) * c_out + x * c_skip


def wrapper(model):
    """wrappers.py OpenAIWrapper: the concat conditioning joins x on channels."""
    return lambda x, t, cond: model(torch.cat([x, cond["concat"]], dim=1), t)


def weighting(kind, sigma, sigma_data=0.5):
    if kind == "unit":
        return torch.ones_like(sigma)
    if kind in ("edm", "v"):
        sd = 1.0 if kind == "v" else sigma_data
        return (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    if kind == "eps":
        return sigma ** -2.0
    raise ValueError(kind)


def sgm_loss(net, den, x0, cond, sigmas, noise, offset, offset_level, wkind, loss_type):
    """loss.py StandardDiffusionLoss._forward with the draws given: per-sample loss [B]."""
    if offset_level > 0:
        noise = noise + offset_level * append_dims(offset, x0.dim())
    xn = x0 + noise * append_dims(sigmas, x0.dim())
    out = den(net, xn, sigmas, cond)
    w = append_dims(weighting(wkind, sigmas), x0.dim())
    d = (out - x0) ** 2 if loss_type == "l2" else (out - x0).abs()
    return torch.mean((w * d).reshape(x0.shape[0], -1), 1)


def guided(net, den, x, sigma, cond, uc, scale):
    """BaseDiffusionSampler.denoise with VanillaCFG (scale: float or per-sample tensor) or IdentityGuider."""
    if scale is None:
        return den(net, x, sigma, cond)
    c2 = {"concat": torch.cat([uc["concat"], cond["concat"]], 0)}
    o = den(net, torch.cat([x, x]), torch.cat([sigma, sigma]), c2)
    xu, xc = o.chunk(2)
    if isinstance(scale, torch.Tensor):
        scale = append_dims(scale, xu.dim())
    return xu + scale * (xc - xu)


def euler_edm(net, den, x, cond, uc, scale, sigmas, noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """sampling.py EulerEDMSampler.__call__ (sigmas with the appended zero); noise[i] for churn."""
    x = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
    n = len(sigmas)
    for i in range(n - 1):
        sig, nxt = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / (n - 1), 2 ** 0.5 - 1) if s_tmin <= sig <= s_tmax else 0.0
        s_in = x.new_ones([x.shape[0]])
        sigma_hat = s_in * sig * (gamma + 1.0)
        if gamma > 0:
            x = x + noise[i] * s_noise * append_dims(sigma_hat ** 2 - sig ** 2, x.dim()) ** 0.5
        den_x = guided(net, den, x, sigma_hat, cond, uc, scale)
        d = (x - den_x) / append_dims(sigma_hat, x.dim())
        x = x + append_dims(s_in * nxt - sigma_hat, x.dim()) * d
    return x


def ddim_alpha_space(net, den, x, cond, uc, scale, sigmas, noise, eta):
    """CompVis ddim.py p_sample_ddim's update in alpha space (a = 1/(1 + sigma^2)), the model's
    eps from the sgm denoiser; returns x in sgm's sigma space (x_t / sqrt(a))."""
    a = 1.0 / (1.0 + sigmas.double() ** 2)
    xt = x * torch.sqrt(1.0 + sigmas[0].double() ** 2) * torch.sqrt(a[0])  # x_T ~ N(0, 1)
    for i in range(len(sigmas) - 1):
        sig = float(sigmas[i])
        ai, ap = a[i], a[i + 1]
        xv = xt / torch.sqrt(ai)
        denoised = guided(net, den, xv, xv.new_ones([x.shape[0]]) * sig, cond, uc, scale)
        e = (xv - denoised) / sig
        s = eta * torch.sqrt((1 - ap) / (1 - ai) * (1 - ai / ap))
        x0 = (xt - torch.sqrt(1 - ai) * e) / torch.sqrt(ai)
        xt = torch.sqrt(ap) * x0 + torch.sqrt(1 - ap - s ** 2) * e + s * noise[i]
    return xt / torch.sqrt(a[-1])


def sgm_case():
    fx = {}
    sig = torch.tensor([0.002, 0.03, 0.5, 1.0, 3.7, 14.6, 80.0], dtype=torch.float64)
    fx["sigma"] = sig.float()
    for k in ("edm", "eps", "v", "v_edm_noise"):
        for nm, v in zip(("c_skip", "c_out", "c_in", "c_noise"), scalings(k, sig, 0.5 if k == "edm" else 0.5)):
            fx["%s.%s" % (k, nm)] = v.float()
    fx["edm_sd1.c_out"] = scalings("edm", sig, 1.0)[1].float()
    for k in ("unit", "edm", "v", "eps"):
        fx["w." + k] = weighting(k, sig).float()
    fx["disc.edm7"] = disc_sigmas("edm", 7)
    fx["disc.edm5_custom"] = disc_sigmas("edm", 5, sigma_min=0.01, sigma_max=20.0, rho=3.0)
    fx["disc.legacy5"] = disc_sigmas("legacy", 5)
    fx["disc.legacy1000_flip"] = disc_sigmas("legacy", 1000, append_zero=False, flip=True)
    fx["disc.legacy7_noflip_noappend"] = disc_sigmas("legacy", 7, append_zero=False)
    dd = Denoiser("eps", discrete=True)
    q = torch.tensor([0.03, 0.5, 1.0, 3.7, 14.6], dtype=torch.float64)
    fx["discrete.idx"] = dd.idx(q).float()
    fx["discrete.sigma_q"] = dd.sigmas[dd.idx(q)].float()

    # the network: the tiny adaLN-single video DiT behind OpenAIWrapper (concat 4 channels)
    m = make_vdit(dict(TINY, switch_adaln_layer=True))
    net = wrapper(m)
    g = torch.Generator().manual_seed(5)
    B, shape = 2, (2, 4, 4, 4, 6)
    x0 = torch.randn(*shape, generator=g).double()
    cc = torch.randn(*shape, generator=g).double()
    noise = torch.randn(*shape, generator=g).double()
    offset = torch.randn(B, 4, generator=g).double()
    fx.update({"x0": x0.float(), "concat": cc.float(), "noise": noise.float(), "offset": offset.float()})
    cond = {"concat": cc}
    with torch.no_grad():
        s2 = torch.tensor([0.7, 12.0], dtype=torch.float64)
        fx["den.sigma"] = s2.float()
        for k in ("edm", "eps", "v"):
            fx["den.%s" % k] = Denoiser(k)(net, x0, s2, cond).float()
        fx["den.discrete_eps"] = dd(net, x0, s2, cond).float()
        fx["den.discrete_v_noquant"] = Denoiser("v", discrete=True, quantize_c_noise=False)(net, x0, s2, cond).float()
        fx["loss.edm_l2"] = sgm_loss(net, Denoiser("edm"), x0, cond, s2, noise, offset, 0.0, "edm", "l2").float()
        fx["loss.edm_l2_offset"] = sgm_loss(net, Denoiser("edm"), x0, cond, s2, noise, offset, 0.1, "edm", "l2").float()
        fx["loss.v_l1"] = sgm_loss(net, Denoiser("v"), x0, cond, s2, noise, offset, 0.0, "v", "l1").float()
        fx["loss.discrete_eps_weighting"] = sgm_loss(net, dd, x0, cond, dd.sigmas[torch.tensor([17, 803])], noise, offset, 0.0,
                                                "eps", "l2").float()
        fx["loss.discrete_unit_weighting"] = sgm_loss(net, dd, x0, cond, dd.sigmas[torch.tensor([17, 803])], noise, offset, 0.0,
                                               "unit", "l2").float()
        # samplers: 3 steps, fixed noise
        S = 3
        xT = torch.randn(*shape, generator=g).double()
        step_noise = torch.randn(S, *shape, generator=g).double()
        uc = {"concat": torch.zeros_like(cc)}
        fx["xT"] = xT.float()
        fx["step_noise"] = step_noise.reshape(S, B * 4, 4, 4, 6).float()  # 5 dims at most in ldm.h
        edm = Denoiser("edm")
        sg = disc_sigmas("edm", S).double()
        fx["euler.plain"] = euler_edm(net, edm, xT, cond, uc, None, sg, step_noise).float()
        fx["euler.churn_cfg"] = euler_edm(net, edm, xT, cond, uc, 2.5, sg, step_noise, s_churn=1.0, s_tmin=0.05,
                                          s_tmax=50.0).float()
        one = {"concat": cc[:1].expand(B, -1, -1, -1, -1)}  # single prompt: one condition for the batch
        fx["euler.single_prompt"] = euler_edm(net, edm, xT, one, uc, 3.0, sg, step_noise).float()
        fx["euler.multi_prompt"] = euler_edm(net, edm, xT, cond, uc, torch.tensor([1.5, 4.0], dtype=torch.float64), sg,
                                             step_noise).float()
        sl = disc_sigmas("legacy", S).double()
        fx["ddim.sigmas"] = sl.float()
        fx["ddim.eta0"] = ddim_alpha_space(net, dd, xT, cond, uc, None, sl, step_noise, 0.0).float()
        fx["ddim.eta1_cfg"] = ddim_alpha_space(net, dd, xT, cond, uc, 2.0, sl, step_noise, 1.0).float()
    path = os.path.join(FIX, "vdit_sgm.safetensors")
    write_safetensors(path, fx)
    print("wrote %s (%d bytes)" % (os.path.relpath(path), os.path.getsize(path)))


if __name__ == "__main__":
    block_case("dit", False)
    block_case("single", True)
    model_case("dit", dict(TINY, learn_sigma=True))
    model_case("single", dict(TINY, switch_adaln_layer=True))
    model_case("lora", dict(TINY), lora=(4, 8.0))
    sgm_case()
