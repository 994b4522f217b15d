"""Reference values for tests/test_diffusion.c: the schedules, the diffusion process, one DDPM
and DDIM step, guided DDPM / DDIM runs with a toy denoiser, the training loss and its
gradients, and LitEma updates. The formulas follow CompVis latent-diffusion (ddpm.py,
ddim.py, diffusionmodules/util.py, ema.py), re-implemented here; v-prediction follows Stable
Diffusion 2. Writes tests/fixtures/diffusion_ref.safetensors. Run with /usr/bin/python3."""
import math, os, sys
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_uniform

OUT = {}
f32 = torch.float32


def h(name, *shape, scale=1.0):
    n = int(np.prod(shape))
    return torch.from_numpy(hash_uniform(name, n)).view(*shape) * scale


# ---- schedules (make_beta_schedule + register_schedule) ------------------------------------
def beta_schedule(kind, T, ls=1e-4, le=2e-2, cs=8e-3):
    if kind == "linear":
        return (torch.linspace(ls ** 0.5, le ** 0.5, T, dtype=torch.float64) ** 2).numpy()
    if kind == "sqrt_linear":
        return torch.linspace(ls, le, T, dtype=torch.float64).numpy()
    if kind == "sqrt":
        return (torch.linspace(ls, le, T, dtype=torch.float64) ** 0.5).numpy()
    if kind == "cosine":
        ts = torch.arange(T + 1, dtype=torch.float64) / T + cs
        f = torch.cos(ts / (1 + cs) * np.pi / 2).pow(2)
        f = f / f[0]
        return np.clip((1 - f[1:] / f[:-1]).numpy(), 0, 0.999)
    raise ValueError(kind)


class Sched:
    def __init__(self, kind="linear", T=1000, param="eps", v_post=0.0, **kw):
        b = beta_schedule(kind, T, **kw)
        a = 1.0 - b
        ac = np.cumprod(a)
        acp = np.append(1.0, ac[:-1])
        t32 = lambda x: torch.tensor(x, dtype=f32)
        self.T, self.param = T, param
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = t32(b), t32(ac), t32(acp)
        self.sqrt_alphas_cumprod = t32(np.sqrt(ac))
        self.sqrt_one_minus_alphas_cumprod = t32(np.sqrt(1.0 - ac))
        self.log_one_minus_alphas_cumprod = t32(np.log(1.0 - ac))
        self.sqrt_recip_alphas_cumprod = t32(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_alphas_cumprod = t32(np.sqrt(1.0 / ac - 1))
        pv = (1 - v_post) * b * (1.0 - acp) / (1.0 - ac) + v_post * b
        self.posterior_variance = t32(pv)
        self.posterior_log_variance_clipped = t32(np.log(np.maximum(pv, 1e-20)))
        self.posterior_mean_coef1 = t32(b * np.sqrt(acp) / (1.0 - ac))
        self.posterior_mean_coef2 = t32((1.0 - acp) * np.sqrt(a) / (1.0 - ac))
        if param == "eps":
            lw = self.betas ** 2 / (2 * self.posterior_variance * t32(a) * (1 - self.alphas_cumprod))
        elif param == "x0":
            acf = torch.tensor(ac, dtype=f32)
            lw = 0.5 * torch.sqrt(acf) / (2. * 1 - acf)
        else:
            lw = torch.ones(T, dtype=f32)
        lw[0] = lw[1]
        self.lvlb_weights = lw

    BUFS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
            "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights"]

    def ex(self, a, t, like):
        return a[t].reshape(t.shape[0], *([1] * (like.dim() - 1)))

    def q_sample(self, x0, t, n):
        return self.ex(self.sqrt_alphas_cumprod, t, x0) * x0 + self.ex(self.sqrt_one_minus_alphas_cumprod, t, x0) * n

    def start_from_noise(self, x, t, e):
        return self.ex(self.sqrt_recip_alphas_cumprod, t, x) * x - self.ex(self.sqrt_recipm1_alphas_cumprod, t, x) * e

    def start_from_v(self, x, t, v):
        return self.ex(self.sqrt_alphas_cumprod, t, x) * x - self.ex(self.sqrt_one_minus_alphas_cumprod, t, x) * v

    def eps_from_v(self, x, t, v):
        return self.ex(self.sqrt_alphas_cumprod, t, x) * v + self.ex(self.sqrt_one_minus_alphas_cumprod, t, x) * x

    def get_v(self, x0, t, n):
        return self.ex(self.sqrt_alphas_cumprod, t, x0) * n - self.ex(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def q_posterior(self, x0, x, t):
        m = self.ex(self.posterior_mean_coef1, t, x) * x0 + self.ex(self.posterior_mean_coef2, t, x) * x
        return m, self.ex(self.posterior_variance, t, x), self.ex(self.posterior_log_variance_clipped, t, x)

    def p_mean_variance(self, out, x, t, clip):
        x0 = {"eps": lambda: self.start_from_noise(x, t, out), "x0": lambda: out,
              "v": lambda: self.start_from_v(x, t, out)}[self.param]()
        if clip:
            x0 = x0.clamp(-1., 1.)
        m, v, lv = self.q_posterior(x0, x, t)
        return m, v, lv, x0

    def p_sample(self, out, x, t, clip, noise):
        m, _, lv, x0 = self.p_mean_variance(out, x, t, clip)
        mask = (1 - (t == 0).float()).reshape(x.shape[0], *([1] * (x.dim() - 1)))
        return m + mask * (0.5 * lv).exp() * noise, x0


for kind in ["linear", "sqrt_linear", "sqrt", "cosine"]:
    s = Sched(kind)
    for b in Sched.BUFS:
        OUT[f"sched.{kind}.{b}"] = getattr(s, b)
OUT["sched.linear.lvlb_x0"] = Sched("linear", param="x0").lvlb_weights
s = Sched("cosine", T=100, v_post=0.2, cs=0.02)
OUT["sched.cosine100.posterior_variance"] = s.posterior_variance
OUT["sched.cosine100.posterior_log_variance_clipped"] = s.posterior_log_variance_clipped
s = Sched("sqrt_linear", T=50, ls=1e-3, le=0.05)
OUT["sched.sqrt_linear50.alphas_cumprod"] = s.alphas_cumprod

# ---- the diffusion process on tensors --------------------------------------------------------
S100 = {p: Sched("linear", T=100, param=p) for p in ["eps", "x0", "v"]}
x0 = h("proc.x0", 3, 2, 4, 4)
xt = h("proc.xt", 3, 2, 4, 4, scale=2.0)
nz = h("proc.noise", 3, 2, 4, 4, scale=1.5)
mo = h("proc.model_out", 3, 2, 4, 4, scale=1.2)
t = torch.tensor([0, 37, 99])
s = S100["eps"]
OUT.update({"proc.x0": x0, "proc.xt": xt, "proc.noise": nz, "proc.model_out": mo,
            "proc.q_sample": s.q_sample(x0, t, nz), "proc.start_from_noise": s.start_from_noise(xt, t, nz),
            "proc.start_from_v": s.start_from_v(xt, t, nz), "proc.eps_from_v": s.eps_from_v(xt, t, nz),
            "proc.get_v": s.get_v(x0, t, nz)})
m, v, lv = s.q_posterior(x0, xt, t)
OUT.update({"proc.post_mean": m, "proc.post_var": v.flatten(), "proc.post_logvar": lv.flatten()})
for p in ["eps", "x0", "v"]:
    for clip in [0, 1]:
        m, v, lv, x0h = S100[p].p_mean_variance(mo, xt, t, clip)
        OUT[f"proc.pmv.{p}.{clip}.mean"] = m
        OUT[f"proc.pmv.{p}.{clip}.x0"] = x0h
        xs, _ = S100[p].p_sample(mo, xt, t, clip, nz)
        OUT[f"proc.p_sample.{p}.{clip}"] = xs


# ---- DDIM (make_ddim_timesteps, make_ddim_sampling_parameters, p_sample_ddim) ---------------
def ddim_timesteps(method, S, T):
    if method == "uniform":
        ts = np.asarray(list(range(0, T, T // S)))
    else:
        ts = ((np.linspace(0, np.sqrt(T * .8), S)) ** 2).astype(int)
    return ts + 1


class DDIM:
    def __init__(self, sched, S, eta, method="uniform"):
        self.s = sched
        self.ts = ddim_timesteps(method, S, sched.T)
        ac = sched.alphas_cumprod
        self.alphas = ac[self.ts]
        self.alphas_prev = np.asarray([ac[0]] + ac[self.ts[:-1]].tolist())
        self.sigmas = eta * np.sqrt((1 - self.alphas_prev) / (1 - self.alphas) * (1 - self.alphas / self.alphas_prev))
        self.sqrt_one_minus = np.sqrt(1. - self.alphas)

    def update(self, out, x, index, noise, clip=False):
        b = x.shape[0]
        full = lambda v: torch.full((b, 1, 1, 1), float(v), dtype=f32)
        a_t, a_prev = full(self.alphas[index]), full(self.alphas_prev[index])
        sig, s1m = full(self.sigmas[index]), full(self.sqrt_one_minus[index])
        s = self.s
        if s.param == "eps":
            e_t = out
            x0 = (x - s1m * e_t) / a_t.sqrt()
        elif s.param == "v":
            tt = torch.full((b,), int(self.ts[index]))
            e_t = s.eps_from_v(x, tt, out)
            x0 = s.start_from_v(x, tt, out)
        else:
            x0 = out
            e_t = (x - a_t.sqrt() * x0) / s1m
        if clip:
            x0 = x0.clamp(-1., 1.)
        dir_xt = (1. - a_prev - sig ** 2).sqrt() * e_t
        return a_prev.sqrt() * x0 + dir_xt + sig * noise, x0


S1000 = Sched("linear")
for eta in [0.0, 1.0]:
    d = DDIM(S1000, 50, eta)
    OUT[f"ddim50.{int(eta)}.sigmas"] = torch.as_tensor(d.sigmas).to(f32)
    x1, p0 = d.update(mo, xt, 30, nz)
    OUT[f"ddim50.{int(eta)}.step30"] = x1
    OUT[f"ddim50.{int(eta)}.step30_x0"] = p0
d = DDIM(S1000, 50, 0.0)
OUT["ddim50.timesteps"] = torch.tensor(d.ts, dtype=f32)
OUT["ddim50.alphas"] = d.alphas.clone()
OUT["ddim50.alphas_prev"] = torch.tensor(d.alphas_prev, dtype=f32)
OUT["ddim30.timesteps"] = torch.tensor(DDIM(S1000, 30, 0.0).ts, dtype=f32)
OUT["ddim7q.timesteps"] = torch.tensor(DDIM(S1000, 7, 0.0, "quad").ts, dtype=f32)

# ---- toy denoiser: out = tanh(x W^T + (t/T) b + E[y]) on x flattened ------------------------
D, K = 32, 3
TOY = {"W": h("toy.W", D, D, scale=1.0 / math.sqrt(D)), "b": h("toy.b", D), "E": h("toy.E", K + 1, D, scale=0.5)}
OUT.update({f"toy.{k}": v for k, v in TOY.items()})


def toy(w, x, t, y, T):
    B = x.shape[0]
    hdn = x.reshape(B, D) @ w["W"].t()
    hdn = hdn + (t.float() * (1.0 / T)).reshape(B, 1) * w["b"]
    hdn = hdn + w["E"][y]
    return torch.tanh(hdn).reshape(x.shape)


def guided(w, x, t, y, yu, T, scale):
    xin = torch.cat([x, x])
    tin = torch.cat([t, t])
    o = toy(w, xin, tin, torch.cat([yu, y]), T)
    ou, oc = o.chunk(2)
    return ou + scale * (oc - ou)


B = 2
y = torch.tensor([0, 2])
yu = torch.tensor([K, K])
xT = h("run.xT", B, 2, 4, 4)
OUT["run.xT"] = xT
# guided DDIM, 5 uniform steps, eta 1, scale 3 (eps and v)
noise5 = h("run.noise5", 5, B, 2, 4, 4)
OUT["run.noise5"] = noise5
for p in ["eps", "v"]:
    d = DDIM(Sched("linear", param=p), 5, 1.0)
    x = xT.clone()
    for i, step in enumerate(np.flip(d.ts)):
        index = len(d.ts) - i - 1
        tt = torch.full((B,), int(step))
        out = guided(TOY, x, tt, y, yu, 1000, 3.0)
        x, x0 = d.update(out, x, index, noise5[i])
    OUT[f"run.ddim.{p}"] = x
    OUT[f"run.ddim.{p}.last_x0"] = x0
# guided DDPM, T 20, clip_denoised
noise20 = h("run.noise20", 20, B, 2, 4, 4)
OUT["run.noise20"] = noise20
s20 = Sched("linear", T=20)
x = xT.clone()
for k, i in enumerate(reversed(range(20))):
    tt = torch.full((B,), i)
    x, _ = s20.p_sample(guided(TOY, x, tt, y, yu, 20, 2.0), x, tt, True, noise20[k])
OUT["run.ddpm"] = x

# ---- the training loss (LatentDiffusion.p_losses) and its gradients --------------------------
xl = h("loss.x0", 4, 2, 4, 4)
nl = h("loss.noise", 4, 2, 4, 4)
tl = torch.tensor([3, 250, 600, 999])
yl = torch.tensor([0, 1, 2, 3])
lv0 = h("loss.logvar", 1000, scale=0.3)
OUT.update({"loss.x0": xl, "loss.noise": nl, "loss.logvar": lv0})
for name, p, lt, learn, elbo in [("eps_l2", "eps", "l2", 1, 0.5), ("x0_l2", "x0", "l2", 0, 0.0),
                                 ("v_l2", "v", "l2", 1, 0.25), ("eps_l1", "eps", "l1", 0, 1.0)]:
    s = Sched("linear", param=p)
    w = {k: v.clone().requires_grad_(True) for k, v in TOY.items()}
    logvar = lv0.clone().requires_grad_(True) if learn else torch.zeros(1000)
    xn = s.q_sample(xl, tl, nl)
    out = toy(w, xn, tl, yl, 1000)
    target = {"eps": nl, "x0": xl, "v": s.get_v(xl, tl, nl)}[p]
    err = (target - out).abs() if lt == "l1" else (target - out) ** 2
    ls = err.mean([1, 2, 3])
    lvt = logvar[tl]
    l = ls / torch.exp(lvt) + lvt
    loss = 1.0 * l.mean()
    vlb = (s.lvlb_weights[tl] * ls).mean()
    loss = loss + elbo * vlb
    loss.backward()
    OUT[f"loss.{name}.values"] = torch.tensor([ls.mean().item(), l.mean().item(), logvar.mean().item(), vlb.item(), loss.item()])
    for k in ["W", "b", "E"]:
        OUT[f"loss.{name}.grad_{k}"] = w[k].grad
    if learn:
        OUT[f"loss.{name}.grad_logvar"] = logvar.grad


# ---- LitEma ---------------------------------------------------------------------------------
def lit_ema(params, trainable, decay, use_n, updates):
    dec = torch.tensor(decay, dtype=f32)
    n = torch.tensor(0 if use_n else -1, dtype=torch.int)
    shadow = {k: v.clone() for k, v in params.items() if trainable[k]}
    for u in range(updates):
        for k in params:  # the optimizer's step
            params[k] = params[k] + h(f"ema.step{u}.{k}", *params[k].shape, scale=0.1)
        d = dec
        if n >= 0:
            n += 1
            d = min(dec, (1 + n) / (10 + n))
        omd = 1.0 - d
        for k in shadow:
            shadow[k].sub_(omd * (shadow[k] - params[k]))
    return shadow


P0 = {"a": h("ema.a", 3, 4), "b": h("ema.b", 5), "c": h("ema.c", 2)}
tr = {"a": True, "b": True, "c": False}
OUT.update({f"ema.init.{k}": v for k, v in P0.items()})
for k, v in P0.items():
    for u in range(12):
        OUT[f"ema.step{u}.{k}"] = h(f"ema.step{u}.{k}", *v.shape, scale=0.1)
for k, v in lit_ema(dict(P0), tr, 0.9999, True, 12).items():
    OUT[f"ema.warm.{k}"] = v
for k, v in lit_ema(dict(P0), tr, 0.9, False, 3).items():
    OUT[f"ema.plain.{k}"] = v

OUT = {k: (v.detach().to(f32).contiguous() if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=f32)) for k, v in OUT.items()}
path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "diffusion_ref.safetensors")
write_safetensors(path, OUT)
print(path, len(OUT), "tensors", os.path.getsize(path), "bytes")
